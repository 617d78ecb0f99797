"""COCO-format detection dataset read with pycocotools.

Label map: the annotation file's category ids, sorted, become contiguous labels ``1..C`` (0 = background), so
COCO's ids 1..90 with gaps give labels 1..80 and ``num_classes = C + 1``. The map is inverted at the evaluation edge
(``label_to_category_id``). Crowd regions (``iscrowd = 1``) are never training targets: COCOeval treats them as
"ignore" regions on its own. An ``iscrowd`` other than 0 or 1 (the string ``"0"``, 2, null) is read as 0, with one
warning naming the annotations (``check_data`` lists them). Images without objects are kept, with boxes of shape
``(0, 4)``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from ..errors import DataError
from .io.skip import Skipped, load_or_skip
from .io.decode import EncodedImage
from .io.images import load_rgb
from .masks import mask_label_map, paint_semantic
from .resumable import seed_sample

__all__ = ["coco_structure_problems", "crowd_flag", "CocoDetection", "check_coco_layout", "area_of", "annotation_file"]

log = logging.getLogger("mnv2_vision")

# A transform takes (image HxWx3 uint8, boxes (G, 4) float32 xyxy, labels (G,) int64) and returns
# (image tensor, boxes, labels) in the network-input frame; see ``data/detection/transforms.py``.
DetTransform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Tensor, Tensor, Tensor]]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_key(v: object) -> bool:
    """A value pycocotools can index by (a dict key) that reads back as itself: a JSON scalar, NaN excluded."""
    return v is None or isinstance(v, (int, str)) or (isinstance(v, float) and not math.isnan(v))


def coco_structure_problems(data: object) -> list[str]:
    """What makes a parsed COCO annotation file unusable as a whole, one line per defect (empty: none). The index
    (pycocotools) and the datasets need: an object with an ``images`` list and, when present, ``annotations`` and
    ``categories`` lists, all of objects; integer image and category ids, a string ``file_name`` per image and a
    string ``name`` per category; an ``id``, ``image_id`` and ``category_id`` per annotation that are JSON scalars
    (an unknown one is a per-image problem: ``orphan_annotation``, ``unknown_category``)."""
    if not isinstance(data, dict):
        return [f"the top level is {type(data).__name__}, not an object with 'images' and 'annotations'"]
    if "images" not in data:
        return ["it has no 'images' list"]
    problems = [f"'{key}' is {type(data[key]).__name__}, not a list" for key in ("images", "annotations", "categories")
                if key in data and not isinstance(data[key], list)]
    if problems:
        return problems
    for key, fields in (("images", ("id", "file_name")), ("categories", ("id", "name")),
                        ("annotations", ("id", "image_id", "category_id"))):
        for i, entry in enumerate(data.get(key, [])):
            if not isinstance(entry, dict):
                problems.append(f"{key}[{i}] is {entry!r}, not an object")
                continue
            for field in fields:
                value = entry.get(field)
                if field not in entry:
                    problems.append(f"{key}[{i}] has no {field!r}")
                elif field == "id" and key != "annotations" and not _is_int(value):
                    problems.append(f"{key}[{i}]: id {value!r} is not an integer")
                elif field in ("file_name", "name") and not (isinstance(value, str) and value):
                    problems.append(f"{key}[{i}]: {field} {value!r} is not a non-empty string")
                elif not _is_key(value):
                    problems.append(f"{key}[{i}]: {field} {value!r} is not a number or a string")
    return problems


def crowd_flag(value: object) -> bool | None:
    """An annotation's ``iscrowd`` as a bool: 1 or true is a crowd, 0 or false is not; None for anything else (a
    string, 2, null), which JSON allows and Python's truth would read as a crowd."""
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    return None


def _normalise_crowd_flags(data: dict, path: Path) -> None:
    """Set each ``iscrowd`` that is neither 0 nor 1 to 0 (not a crowd), so that training, the masks and COCOeval
    (which read it by truth value) agree; one warning names the annotations."""
    bad = [a for a in data.get("annotations", []) if crowd_flag(a.get("iscrowd", 0)) is None]
    if bad:
        log.warning("%s: annotation(s) %s have iscrowd %s, neither 0 nor 1; read as 0 (not a crowd). "
                    "tools/check_data.py lists every one", path, [a.get("id") for a in bad[:10]]
                    + (["..."] if len(bad) > 10 else []), sorted({repr(a["iscrowd"]) for a in bad})[:5])
        for a in bad:
            a["iscrowd"] = 0


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def check_coco_layout(root: str | os.PathLike, splits: Sequence[str]) -> None:
    """Raise ``FileNotFoundError`` listing what is missing and the layout that is expected."""
    from . import LAYOUTS

    root = Path(root)
    missing = [str(p) for s in splits for p in (root / s, annotation_file(root, s)) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"COCO data incomplete under {root}: missing {', '.join(missing)}. Expected the "
                                f"{LAYOUTS['coco']}")


def _quiet_coco(path: Path) -> COCO:
    """The pycocotools index of ``path``, without its progress prints. A file that is not JSON or not shaped as COCO
    annotations (``coco_structure_problems``) raises ``DataError`` naming the file and the first defect."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:  # not JSON, or not UTF-8
        raise DataError(f"cannot read COCO annotations {path}: {type(e).__name__}: {e}") from e
    problems = coco_structure_problems(data)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"cannot read COCO annotations {path}: {problems[0]}{more}; tools/check_data.py lists "
                        "every one")
    return _index(data, path)


def _index(data: dict, path: Path) -> COCO:
    """The pycocotools index of a parsed dataset dict (``iscrowd`` normalised), without its progress prints."""
    _normalise_crowd_flags(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _xywh(bbox: Any) -> list[float]:
    """An annotation's ``bbox`` as four floats; NaNs when it is not four numbers, so that it is dropped with the
    non-finite ones (check_data reports it as ``malformed_box``)."""
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        try:
            return [float(v) for v in bbox]
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
            pass
    return [float("nan")] * 4


def area_of(ann: dict) -> float:
    """An annotation's ``area``; 0 when it is not a finite non-negative number (it only ranks images)."""
    area = ann.get("area", 0.0)
    ok = isinstance(area, (int, float)) and not isinstance(area, bool) and 0 <= area < float("inf")
    return float(area) if ok else 0.0


class CocoDetection(Dataset):
    """``(image, target)`` pairs from ``<root>/<split>/`` and ``<root>/annotations/instances_<split>.json``.

    ``target`` holds ``boxes`` ``(G, 4)`` float32 xyxy in the frame of the returned image, ``labels`` ``(G,)``
    int64 in ``1..C``, ``image_id`` (the COCO id) and ``orig_size`` ``(H, W)`` of the image on disk (after EXIF
    orientation). Boxes are clipped to the image; boxes with no area left or non-finite values are dropped with one
    warning per file. With ``masks``, ``target`` also holds ``mask``: the ``(H, W)`` int64 semantic label map painted
    from the instance annotations (``data/masks.py``: 255 on crowd regions, overlaps and instances whose mask is
    empty), in the transform's frame when it moves masks (training), else at the image's own size.

    Args:
        root: folder with ``<split>/`` and ``annotations/``.
        split: image folder name, e.g. ``"val2017"``.
        transform: a detection transform (``data/detection/transforms.py``); ``None`` returns the uint8
            ``(3, H, W)`` image and boxes in original pixels. A transform with ``from_file``
            (``data/detection/pipeline.py``) gets the undecoded image (``EncodedImage``) and decodes only what its
            output needs.
        subset: keep only the first ``subset`` image ids (sorted).
        category_ids: the label map to use (label i ↔ ``category_ids[i-1]``); default: this file's sorted ids.
            An annotation whose category is not in the map is an error naming the file.
        on_bad: what to do with an unusable image (missing, unreadable or truncated file, size differing from the
            annotation file, unknown category id): ``"raise"``; ``"replace"`` it by the next usable item (training);
            ``"drop"`` it, returning a ``Skipped`` record (evaluation). Both warn once naming the file
            (the bad-data policy, ``data/io/skip.py``).
        masks: ``None`` (boxes only), ``"voc20"`` (the 20 VOC classes, labels 1..20, other categories background)
            or ``"all"`` (every category, labels 1..C as for the boxes).
        data: a COCO dataset dict read from another format (``data/formats``: YOLO, VOC XML, CVAT, LabelMe,
            Label Studio) used instead of ``<root>/annotations/instances_<split>.json``; its ``file_name`` values
            are relative to ``image_dir``, and ``source`` (the label file or folder) is named in messages.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: DetTransform | None = None,
        subset: int | None = None,
        category_ids: Sequence[int] | None = None,
        on_bad: str = "raise",
        masks: str | None = None,
        *,
        data: dict | None = None,
        image_dir: str | os.PathLike | None = None,
        source: str | os.PathLike | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if data is None:
            check_coco_layout(self.root, [split])
            self.image_dir = self.root / split
            self.ann_file = annotation_file(self.root, split)
            self.coco = _quiet_coco(self.ann_file)
        else:  # a labelling-tool format already read into a COCO dict (data/formats)
            self.image_dir = Path(image_dir) if image_dir is not None else self.root / split
            self.ann_file = Path(source) if source is not None else self.root
            self.coco = _index(data, self.ann_file)
        self.transform = transform
        ids = sorted(self.coco.getImgIds())
        self.ids: list[int] = ids[:subset] if subset else ids
        file_cats = sorted(self.coco.cats)  # getCatIds() fails on a file without "categories"
        self.category_ids: list[int] = list(category_ids) if category_ids is not None else file_cats
        if not self.category_ids:
            raise DataError(f"{self.ann_file} defines no categories")
        cats = self.coco.loadCats(self.category_ids) if set(self.category_ids) <= set(file_cats) else []
        names = {c["id"]: c["name"] for c in cats}
        self.category_names: list[str] = [names.get(c, str(c)) for c in self.category_ids]
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self._warned: set[str] = set()
        self.on_bad = on_bad
        self.masks = masks
        self.mask_labels: dict[int, int] = mask_label_map(masks, self.category_ids) if masks is not None else {}
        if masks is not None and self.coco.anns and not any("segmentation" in a for a in self.coco.anns.values()):
            raise ValueError(f"{self.ann_file}: masks={masks!r} needs instance masks, but no annotation has a "
                             "'segmentation' (a detection-only file: use it without masks)")

    @property
    def mask_class_names(self) -> list[str]:
        """Names of the semantic labels ``0..K-1`` (``"background"`` first) when ``masks`` is set."""
        if self.masks == "voc20":
            from .voc import VOC_CLASSES

            return list(VOC_CLASSES)
        return ["background", *self.category_names]  # "all": the detection label map

    @property
    def num_classes(self) -> int:
        """Foreground classes + background."""
        return len(self.category_ids) + 1

    def label_to_category_id(self, labels: Sequence[int]) -> list[int]:
        return [self.category_ids[int(label) - 1] for label in labels]

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_image(self, index: int) -> np.ndarray:
        """The upright RGB image; its size must agree with the annotation file's width/height."""
        image = load_rgb(self.image_path(index))
        self._check_size(index, image.shape[:2])
        return image

    def open_image(self, index: int) -> EncodedImage:
        """The image file with its header read and size checked, pixels not yet decoded (``data/io/decode.py``)."""
        encoded = EncodedImage(self.image_path(index))
        self._check_size(index, encoded.size)
        return encoded

    def _check_size(self, index: int, size: tuple[int, ...]) -> None:
        info = self.coco.imgs[self.ids[index]]
        expected = (info.get("height"), info.get("width"))
        if None not in expected and tuple(size) != expected:
            raise ValueError(f"{self.image_path(index)}: image is {size[0]}x{size[1]} (HxW, after EXIF orientation) "
                             f"but {self.ann_file.name} says {expected[0]}x{expected[1]}; the boxes would not line up")

    def load_annotations(self, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Non-crowd boxes ``(G, 4)`` float32 xyxy clipped to ``size`` ``(H, W)`` and labels ``(G,)`` int64."""
        img_id = self.ids[index]
        anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
        file_name = self.coco.imgs[img_id]["file_name"]
        for a in anns:
            if a["category_id"] not in self.cat_to_label:
                raise ValueError(f"{self.ann_file}: annotation {a.get('id')} of {file_name} has category_id "
                                 f"{a['category_id']}, which is not among the known ids {self.category_ids}")
        if not anns:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        # numpy after the one conversion: a dozen small torch ops cost ~0.5 ms per image, a tenth of the pipeline
        xywh = np.array([_xywh(a.get("bbox")) for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = box_convert(torch.from_numpy(xywh), "xywh", "xyxy").numpy()
        h, w = size
        finite = np.isfinite(boxes).all(axis=1)
        boxes = np.nan_to_num(boxes)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not keep.all() and file_name not in self._warned:
            self._warned.add(file_name)
            bad = [anns[i].get("id") for i in np.flatnonzero(~keep).tolist()]
            log.warning("%s: dropped %d degenerate box(es) (not 4 numbers, non-finite, or no area inside the %dx%d "
                        "image), annotation ids %s", self.image_dir / file_name, len(bad), w, h, bad)
        labels = np.array([self.cat_to_label[a["category_id"]] for a in anns], np.int64)
        return boxes[keep].astype(np.float32), labels[keep]

    def load_mask(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """The ``(H, W)`` uint8 semantic label map of item ``index`` (``masks`` must be set). An RLE whose size
        differs from the image raises ``ValueError`` naming the file; empty and malformed instance masks (skipped,
        their box regions 255) warn once per file."""
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        h, w = int(info.get("height") or size[0]), int(info.get("width") or size[1])
        path = self.image_dir / info["file_name"]
        malformed: list[str] = []
        try:
            label, empty = paint_semantic(self.coco.imgToAnns.get(img_id, []), h, w, self.mask_labels, malformed)
        except ValueError as e:
            raise ValueError(f"{path}: {e} ({self.ann_file.name})") from e
        if malformed and f"{path} malformed" not in self._warned:
            self._warned.add(f"{path} malformed")
            which = "; ".join("{} ({})".format(*m.split(": ", 1)) for m in malformed)
            its = "its box region is" if len(malformed) == 1 else "their box regions are"
            log.warning("%s: skipped the malformed mask of %s; %s ignored (255) in the label map (%s; "
                        "tools/check_data.py lists every one)", path, which, its, self.ann_file.name)
        if empty and str(path) not in self._warned:
            self._warned.add(str(path))
            log.warning("%s: annotation(s) %s have an empty mask; their box regions are ignored (255) in the label "
                        "map", path, empty)
        return label

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict] | Skipped:
        """Item ``index``; an ``(index, seed)`` pair (``data/resumable.py``) first reseeds the transform."""
        index = seed_sample(self.transform, index)
        if self.on_bad == "raise":
            return self._item(index)
        return load_or_skip(self._item, index, len(self), lambda i: str(self.image_path(i)), self._warned,
                            self.on_bad)

    def num_annotations(self) -> int:
        """Non-crowd annotations of the images in this dataset (``subset`` applied)."""
        return sum(1 for i in self.ids for a in self.coco.imgToAnns.get(i, []) if not a.get("iscrowd", 0))

    def _item(self, index: int) -> tuple[Tensor, dict]:
        if self.masks is None and hasattr(self.transform, "from_file"):
            # decodes only what its output needs (data/detection/pipeline.py); boxes only, no label map
            encoded = self.open_image(index)
            boxes, labels = self.load_annotations(index, encoded.size)
            tensor, box_t, label_t = self.transform.from_file(encoded, boxes, labels)
            return tensor, self._target(index, box_t, label_t, encoded.size)
        image = self.load_image(index)
        size = (int(image.shape[0]), int(image.shape[1]))
        boxes, labels = self.load_annotations(index, size)
        mask = self.load_mask(index, size) if self.masks is not None else None
        mask_t: Tensor | None = None
        if self.transform is None:
            tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
            box_t, label_t = torch.from_numpy(boxes), torch.from_numpy(labels)
            mask_t = torch.from_numpy(mask).to(torch.int64) if mask is not None else None
        elif mask is None:
            tensor, box_t, label_t = self.transform(image, boxes, labels)
        else:
            tensor, box_t, label_t, mask_t = self.transform.with_mask(image, boxes, labels, mask)
        target = self._target(index, box_t, label_t, size)
        if mask_t is not None:
            target["mask"] = mask_t
        return tensor, target

    def _target(self, index: int, boxes: Tensor, labels: Tensor, size: tuple[int, int]) -> dict:
        return {"boxes": boxes.reshape(-1, 4).to(torch.float32), "labels": labels.reshape(-1).to(torch.int64),
                "image_id": int(self.ids[index]), "orig_size": (int(size[0]), int(size[1]))}

    def __repr__(self) -> str:
        masks = f", masks={self.masks!r}" if self.masks is not None else ""
        return (f"CocoDetection({self.root}, split={self.split!r}, images={len(self)}, "
                f"classes={len(self.category_ids)}{masks})")
