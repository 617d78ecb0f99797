"""PASCAL VOC 2012 semantic segmentation, read from the official folder layout (plus SBD's ``trainaug``).

Label maps are palette PNGs whose *indices* are the class labels (0 = background, 1..20, 255 = object boundary,
ignored). They are read with ``np.array(Image.open(path))``, which returns the indices of a mode-"P" image; any
colour conversion (cv2, ``.convert("RGB")``/``"L"``) would turn them into colours or luminances. A label file that is
not a single-channel index map is an error naming the file, and so is a value outside 0..K-1 and 255.

Splits are the id lists in ``ImageSets/Segmentation/<split>.txt``. ``trainaug`` (VOC train + SBD, 10,582 ids) reads
its labels from ``SegmentationClassAug/``, where the common release stores raw indices as mode "L" (grayscale) PNGs,
so "L" is accepted there; ``auto`` means ``trainaug`` when it is set up and ``train`` otherwise.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .io.skip import Skipped, load_or_skip
from .io.decode import EncodedImage, decode_rgb
from .io.labels import read_label
from .resumable import seed_sample

__all__ = [
    "VOC_CLASSES", "find_voc_root", "resolve_split", "VOCSegmentation",
]

log = logging.getLogger("mnv2_vision")

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_LABEL_DIRS = {"SegmentationClass": ("P",), "SegmentationClassAug": ("P", "L")}

# A transform takes (image (H, W, 3) uint8, mask (H, W) uint8) and returns (image (3, h, w) float, mask (h, w) int64).
SegTransform = Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor]]


def _layout_error(root: Path, what: str) -> FileNotFoundError:
    from . import LAYOUTS

    return FileNotFoundError(f"VOC data incomplete under {root}: {what}. Expected the {LAYOUTS['voc']}")


def find_voc_root(root: str | os.PathLike) -> Path:
    """``root`` itself if it holds ``JPEGImages/``, else ``root/VOC2012`` (a VOCdevkit folder was given)."""
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise _layout_error(root, "no JPEGImages/ folder in it or in its VOC2012/ subfolder")


def resolve_split(root: Path, split: str) -> tuple[str, str]:
    """Return (split, label folder). ``trainaug`` needs SBD's labels; ``auto`` picks it when present."""
    lists = root / "ImageSets" / "Segmentation"
    has_aug = (lists / "trainaug.txt").is_file() and (root / "SegmentationClassAug").is_dir()
    if split == "auto":
        split = "trainaug" if has_aug else "train"
        log.info("data split 'auto' → %r under %s", split, root)
    if split == "trainaug":
        if not has_aug:
            raise _layout_error(root, "split 'trainaug' needs ImageSets/Segmentation/trainaug.txt and "
                                      "SegmentationClassAug/ (SBD); use data.train_split=train without them")
        return split, "SegmentationClassAug"
    return split, "SegmentationClass"


class VOCSegmentation(Dataset):
    """Items ``{"image": (3, H, W) float, "mask": (H, W) int64, "id": str}`` from a VOC-layout folder.

    Args:
        root: ``VOCdevkit/VOC2012`` or its ``VOCdevkit`` parent.
        split: an ``ImageSets/Segmentation`` list name (``train``, ``val``, ``trainaug``) or ``auto``.
        transform: ``(image uint8, mask uint8) → (image tensor, mask tensor)``; see
            ``data/segmentation/transforms.py``.
        num_classes: labels are checked against 0..num_classes-1 (and 255).
        subset: keep only the first ``subset`` ids (quick runs, overfitting checks).
        on_bad: ``"raise"`` on a missing or unusable item; otherwise ids whose image or label file is missing are left
            out (one warning listing them), and an unusable item (unreadable file, wrong label mode, mask size or
            values) is, with one warning naming it, ``"replace"``d by the next usable item (training) or ``"drop"``ped
            as a ``Skipped`` record (evaluation) (the bad-data policy, ``data/io/skip.py``).
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: SegTransform, num_classes: int = 21,
                 subset: int | None = None, on_bad: str = "raise") -> None:
        self.root = find_voc_root(root)
        self.split, label_dir = resolve_split(self.root, split)
        self.label_dir = self.root / label_dir
        self.label_modes = _LABEL_DIRS[label_dir]
        list_file = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if not list_file.is_file():
            raise _layout_error(self.root, f"missing split list {list_file}")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"split list {list_file} is empty")
        self.ids = ids[:subset] if subset is not None else ids
        missing = [i for i in self.ids if not (self.root / "JPEGImages" / f"{i}.jpg").is_file()
                   or not (self.label_dir / f"{i}.png").is_file()]
        self.missing = missing
        if missing and on_bad != "raise" and len(missing) < len(self.ids):
            log.warning("leaving out %d of %d ids in %s that lack JPEGImages/<id>.jpg or %s/<id>.png: %s",
                        len(missing), len(self.ids), list_file, label_dir, missing)
            self.ids = [i for i in self.ids if i not in set(missing)]
        elif missing:
            raise FileNotFoundError(f"{len(missing)} of {len(self.ids)} ids in {list_file} lack "
                                    f"JPEGImages/<id>.jpg or {label_dir}/<id>.png, e.g. {missing[:3]}")
        self.transform, self.num_classes = transform, num_classes
        self.on_bad, self._warned = on_bad, set()

    def __repr__(self) -> str:
        return (f"VOCSegmentation({self.root}, split={self.split!r}, images={len(self)}, labels={self.label_dir.name}, "
                f"classes={self.num_classes})")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (image (H, W, 3) uint8, label (H, W) uint8) pair of item ``index``."""
        image = decode_rgb(self.image_path(index))  # load_rgb's pixels and errors, faster (data/io/decode.py)
        return image, self._label(index, image.shape[:2])

    def _label(self, index: int, size: tuple[int, ...], pillow: bool = False) -> np.ndarray:
        label_path = self.label_dir / f"{self.ids[index]}.png"
        label = read_label(label_path, self.num_classes, self.label_modes, pillow=pillow)
        if label.shape != tuple(size):
            raise ValueError(f"label map {label_path} is {label.shape[1]}×{label.shape[0]} but its image "
                             f"{self.image_path(index)} is {size[1]}×{size[0]}")
        return label

    def __getitem__(self, index: int | tuple[int, int]) -> dict | Skipped:
        """Item ``index``; an ``(index, seed)`` pair (``data/resumable.py``) first reseeds the transform."""
        index = seed_sample(self.transform, index)
        if self.on_bad == "raise":
            return self._item(index)
        return load_or_skip(self._item, index, len(self), lambda i: self.ids[i], self._warned, self.on_bad)

    def _item(self, index: int) -> dict:
        if hasattr(self.transform, "from_file"):  # decodes the image itself (seg_transforms.FastSegTrainTransform)
            encoded = EncodedImage(self.image_path(index))
            image_t, mask_t = self.transform.from_file(encoded, self._label(index, encoded.size))
            return {"image": image_t, "mask": mask_t, "id": self.ids[index]}
        image, label = self.load(index)
        image_t, mask_t = self.transform(image, label)
        return {"image": image_t, "mask": mask_t, "id": self.ids[index]}
