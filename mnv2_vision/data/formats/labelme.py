"""LabelMe (the ``labelme`` tool): one JSON per image beside it, in a folder per split (``<root>/<split>/``).

A JSON holds ``imagePath`` (relative to the JSON's folder), ``imageHeight``, ``imageWidth`` and ``shapes``: a
``rectangle`` is two opposite corners in any order (their min and max make the box), a ``polygon`` ≥ 3 points
(the segmentation; the hull is the box). Other shape types (circle, line, point, linestrip, mask) are reported and
left out. The class list is ``<root>/labels.txt`` or every label used in any split, sorted (``labels.py``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..verify import Problem
from .builder import IMAGE_SUFFIXES, CocoBuilder, FormatSplit, Place, by_image, polygon_box, read_image_size
from .labels import class_names, write_label_list

__all__ = ["read_labelme", "labelme_splits", "labelme_names", "write_labelme"]


def labelme_splits(root: Path) -> tuple[str, ...]:
    """Sub-folders of ``root`` holding ``*.json`` files."""
    return tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.json"))))


def _load(path: Path) -> dict:
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise ValueError("not a LabelMe file: no 'shapes' list")
    return data


def labelme_names(root: Path) -> list[str]:
    used: set[str] = set()
    if not (root / "labels.txt").is_file():
        for f in root.glob("*/*.json"):
            try:
                used.update(str(s.get("label", "")) for s in _load(f)["shapes"] if isinstance(s, dict))
            except (OSError, ValueError):
                continue  # reported by read_labelme
    return class_names(root, used - {""})


def read_labelme(root: str | os.PathLike, split: str) -> FormatSplit:
    """The ``<root>/<split>/*.json`` files as a COCO dict (module docstring for the conventions)."""
    from ...errors import DataError

    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{folder}: no such split folder; {root} has {list(labelme_splits(root))}")
    names = labelme_names(root)
    builder = CocoBuilder(names)
    problems: list[Problem] = []
    labelled: set[Path] = set()
    for js in sorted(folder.glob("*.json")):
        try:
            data = _load(js)
        except (OSError, ValueError) as e:
            problems.append(Problem(str(js), "unreadable_annotations", f"{type(e).__name__}: {e}"))
            continue
        # labelme on Windows writes backslashes
        image = folder / str(data.get("imagePath") or "").replace("\\", "/")
        if not data.get("imagePath") or not image.is_file():
            problems.append(Problem(str(js), "orphan_label", f"no image {image}; left out"))
            continue
        labelled.add(image.resolve())
        try:
            size = (int(data["imageHeight"]), int(data["imageWidth"]))
        except (KeyError, TypeError, ValueError):
            try:
                size = read_image_size(image)
            except OSError as e:
                problems.append(Problem(str(image), "unreadable_image", str(e)))
                continue
        img = builder.add_image(str(image.relative_to(folder)), *size)
        for n, shape in enumerate(data["shapes"], 1):
            where = f"{js}:shape {n}"
            kind = shape.get("shape_type") or "polygon"
            label = str(shape.get("label", ""))
            if kind not in ("rectangle", "polygon"):
                problems.append(Problem(where, "unsupported_shape", f"a {kind} is not a rectangle or polygon; "
                                        "left out"))
                continue
            if label not in builder.cat_ids:
                problems.append(Problem(where, "unknown_category", f"label {label!r} is not in {names[:10]}"))
                continue
            try:
                pts = np.asarray(shape.get("points"), np.float64)
                if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < (2 if kind == "rectangle" else 3):
                    raise ValueError(f"{len(pts)} points")
            except (TypeError, ValueError) as e:
                problems.append(Problem(where, "malformed_box", f"points are not [[x, y], ...]: {e}"))
                continue
            if kind == "rectangle":
                builder.add(img, builder.cat_ids[label], polygon_box(pts), source=where)
            else:
                builder.add(img, builder.cat_ids[label], polygon_box(pts), polygon=pts, source=where)
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES and f.resolve() not in labelled:
            problems.append(Problem(str(f), "unlabelled_image", "no LabelMe JSON names it; left out"))
    return FormatSplit(builder.dataset(), folder, folder, problems)


def write_labelme(splits: dict[str, tuple[dict, Path]], out: Path, place: Place) -> None:
    """Write ``splits`` as ``<out>/<split>/<image>`` + ``<stem>.json`` (a rectangle per box, a polygon per
    single-polygon segmentation; crowd annotations left out) and ``labels.txt``."""
    cats = sorted(next(iter(splits.values()))[0]["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in cats}
    for split, (data, image_dir) in splits.items():
        anns = by_image(data)
        for img in data["images"]:
            dst = out / split / img["file_name"]
            place(image_dir / img["file_name"], dst)
            shapes = []
            for a in anns.get(img["id"], []):
                if a.get("iscrowd"):
                    continue
                seg = a.get("segmentation")
                if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
                    pts, kind = np.asarray(seg[0], np.float64).reshape(-1, 2).tolist(), "polygon"
                else:
                    x, y, w, h = a["bbox"]
                    pts, kind = [[x, y], [x + w, y + h]], "rectangle"
                shapes.append({"label": names[a["category_id"]], "points": pts, "group_id": None,
                               "description": "", "shape_type": kind, "flags": {}})
            doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": dst.name, "imageData": None,
                   "imageHeight": int(img["height"]), "imageWidth": int(img["width"])}
            dst.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    write_label_list(out, [c["name"] for c in cats])
