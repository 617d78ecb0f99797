"""The one in-memory form every labelling-tool format is read into: a COCO dataset dict (``images``,
``annotations`` with xywh ``bbox``, polygon ``segmentation`` and ``iscrowd``, ``categories``), so ``CocoDetection``,
the painted masks, pycocotools' evaluation and ``check_data`` serve every format unchanged.

Coordinates are continuous pixels with the image's top-left corner at (0, 0) (COCO's convention); each reader
converts its own (YOLO's normalised centres, VOC's 1-based pixel indices, Label Studio's percents) on the way in.
An annotation may carry ``source`` (``"file:line"`` or ``"file"``), which ``check_data`` names instead of the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from mnv2_runtime.images import IMAGE_SUFFIXES  # the suffixes predict and the runtime read as images

from ..verify import Problem

__all__ = ["CocoBuilder", "Place", "by_image", "FormatSplit", "rotated_corners", "polygon_box", "read_image_size",
           "IMAGE_SUFFIXES"]

# what ultralytics and the labelling tools accept as images
# how a writer puts an image into its output: a symbolic link or a copy (commands/convert_data.py)
Place = Callable[[Path, Path], None]


@dataclass
class FormatSplit:
    """One split read from a labelling-tool layout.

    Attributes:
        data: the COCO dataset dict; ``file_name`` relative to ``image_dir``.
        image_dir: the folder the image names are relative to.
        source: the file or folder that holds the labels (named in messages).
        problems: what the reader could not use, one per file or annotation (``check_data`` lists them; training
            refuses ``fatal`` ones).
    """

    data: dict
    image_dir: Path
    source: Path
    problems: list[Problem] = field(default_factory=list)

    # an unparsable file or an unknown class loses labels; an unlabelled image or a label without its image does not
    # change what is trained on (the image is left out, with a warning)
    FATAL = ("unreadable_annotations", "unknown_category", "malformed_box")

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.kind in self.FATAL]


def read_image_size(path: Path) -> tuple[int, int]:
    """The upright ``(H, W)`` of an image from its header (EXIF orientation applied, as training decodes it)."""
    from ..verify import image_problem

    problem, size = image_problem(path, decode=False)
    if problem is not None or size is None:
        raise OSError(problem.detail if problem else f"{path}: cannot read the image size")
    return size


def rotated_corners(x0: float, y0: float, x1: float, y1: float, degrees: float,
                    about: tuple[float, float] | None = None) -> np.ndarray:
    """The four corners ``(4, 2)`` of the box ``x0, y0, x1, y1`` turned ``degrees`` clockwise on screen (y points
    down) about ``about`` (default: the box centre)."""
    cx, cy = about if about is not None else ((x0 + x1) / 2, (y0 + y1) / 2)
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64) - (cx, cy)
    # clockwise on screen: x' = x cos − y sin, y' = x sin + y cos ((1, 0) turned 90° goes to (0, 1), downwards)
    return np.stack([pts[:, 0] * c - pts[:, 1] * s, pts[:, 0] * s + pts[:, 1] * c], 1) + (cx, cy)


def polygon_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """The axis-aligned hull ``x0, y0, x1, y1`` of ``(P, 2)`` points."""
    return (float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()),
            float(points[:, 1].max()))


class CocoBuilder:
    """Collects images, categories and annotations into a COCO dataset dict (ids from 1, in insertion order)."""

    def __init__(self, category_names: Sequence[str]) -> None:
        self.categories = [{"id": i + 1, "name": str(n), "supercategory": ""} for i, n in enumerate(category_names)]
        self.cat_ids = {c["name"]: c["id"] for c in self.categories}
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, file_name: str, height: int, width: int) -> int:
        self.images.append({"id": len(self.images) + 1, "file_name": file_name, "height": int(height),
                            "width": int(width)})
        return len(self.images)

    def add(self, image_id: int, category_id: int, box: Sequence[float], polygon: np.ndarray | None = None,
            crowd: bool = False, source: str | None = None) -> None:
        """An annotation: ``box`` xyxy in pixels; ``polygon`` ``(P, 2)`` becomes its segmentation; ``crowd``
        (VOC's ``difficult``) sets ``iscrowd``, which training skips and COCOeval ignores."""
        x0, y0, x1, y1 = (float(v) for v in box)
        ann = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": int(category_id),
               "bbox": [x0, y0, x1 - x0, y1 - y0], "area": max(x1 - x0, 0.0) * max(y1 - y0, 0.0),
               "iscrowd": int(bool(crowd))}
        if polygon is not None:
            ann["segmentation"] = [[round(float(v), 3) for v in polygon.reshape(-1)]]
            ann["area"] = _polygon_area(polygon)
        if source is not None:
            ann["source"] = source
        self.annotations.append(ann)

    def dataset(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": self.categories}


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def by_image(data: dict) -> dict[int, list[dict]]:
    """A COCO dict's annotations by image id."""
    out: dict[int, list[dict]] = {}
    for a in data.get("annotations", []):
        out.setdefault(a["image_id"], []).append(a)
    return out
