"""Classification data: ImageFolder (ImageNet's own layout), CIFAR-10 python batches, Flowers102; albumentations.

The readers return ``(H, W, 3)`` uint8 RGB arrays and an int label; ``ClassificationDataModule`` applies the
transform presets and builds the loaders. CIFAR-10 and Flowers102 are read here rather than through torchvision's
classes, which refuse any file whose md5 differs from the full official archive (so subsets and test fixtures
cannot be read); torchvision still does the downloading (``download=True``) and its checksums guard that.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import DataCfg
from .check import Skipped, load_or_skip
from .decode import decode_rgb  # load_rgb's pixels and errors, faster for JPEGs

__all__ = ["read_cifar_batch", "CLASSIFICATION_FORMATS", "CLASSIFICATION_PRESETS", "ImageFolderClassification", "Cifar10", "Flowers102",
           "classification_transform", "TransformedDataset", "ClassificationDataModule",
           "read_classification_split", "classification_eval_collate"]

CLASSIFICATION_FORMATS = ("imagefolder", "cifar10", "flowers102")
CLASSIFICATION_PRESETS = ("cls", "cls_invariant", "cifar", "none")
EVAL_CROP_RATIO = 0.875  # resize the shorter side to size / 0.875, centre-crop size (the ImageNet convention)


class ImageFolderClassification(Dataset):
    """``<root>/<split>/<class>/*.jpg``; class index = position of the folder name in sorted order (torchvision's)."""

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        from torchvision.datasets import ImageFolder

        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(f"no split folder {folder}; expected the ImageFolder layout "
                                    f"<root>/<split>/<class_name>/*.jpg (ImageNet's own layout)")
        self._folder = ImageFolder(str(folder), loader=decode_rgb)
        self.classes: list[str] = list(self._folder.classes)
        self.targets: list[int] = list(self._folder.targets)
        self.paths = [Path(p) for p, _ in self._folder.samples]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return decode_rgb(self.paths[i]), self.targets[i]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what they contain (numpy arrays), never arbitrary callables."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python batch (a pickled dict) read with ``_NumpyOnlyUnpickler``: a planted payload is refused,
    never run (``ValueError`` naming the file)."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}; expected <root>/cifar-10-batches-py/"
                                "{data_batch_1..5,test_batch,batches.meta} (python version of the dataset)")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class Cifar10(Dataset):
    """CIFAR-10 python batches: ``split="train"`` reads ``data_batch_1..5``, ``"test"`` (or ``"val"``) ``test_batch``."""

    def __init__(self, root: str | os.PathLike, split: str, download: bool = False) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"CIFAR-10 splits are 'train' and 'test' ('val' = 'test'), got {split!r}")
        if download:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=split == "train", download=True)
        base = Path(root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        images, labels = [], []
        for name in names:
            batch = read_cifar_batch(base / name)
            if "data" not in batch or "labels" not in batch:
                raise ValueError(f"{base / name}: expected keys 'data' and 'labels', got {sorted(batch)}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072 or len(batch["labels"]) != len(data):
                raise ValueError(f"{base / name}: expected data of shape (N, 3072) and N labels, got "
                                 f"{data.shape} and {len(batch['labels'])}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes of 32×32
            labels += [int(v) for v in batch["labels"]]
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.targets = labels
        names = read_cifar_batch(base / "batches.meta").get("label_names")
        if not isinstance(names, list):
            raise ValueError(f"{base / 'batches.meta'}: expected a list under 'label_names'")
        self.classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
        bad = [t for t in labels if not 0 <= t < len(self.classes)]
        if bad:
            raise ValueError(f"{base}: labels {sorted(set(bad))[:5]} outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], self.targets[i]


class Flowers102(Dataset):
    """torchvision's Flowers102 layout: ``<root>/flowers-102/{jpg/image_00001.jpg…, imagelabels.mat, setid.mat}``.

    ``setid.mat`` lists 1-based image ids per split (``trnid`` / ``valid`` / ``tstid``); ``imagelabels.mat`` holds
    1-based labels, shifted here to 0..101. The files carry no class names, so classes are ``"001"…"102"``.
    """

    SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}

    def __init__(self, root: str | os.PathLike, split: str, download: bool = False) -> None:
        from scipy.io import loadmat

        if split not in self.SPLITS:
            raise ValueError(f"Flowers102 splits are {list(self.SPLITS)}, got {split!r}")
        if download:
            from torchvision.datasets import Flowers102 as TVFlowers

            TVFlowers(str(root), split=split, download=True)
        base = Path(root) / "flowers-102"
        for name in ("setid.mat", "imagelabels.mat"):
            if not (base / name).is_file():
                raise FileNotFoundError(f"Flowers102 file not found: {base / name}; expected <root>/flowers-102/"
                                        "{jpg/, imagelabels.mat, setid.mat} (run with --download to fetch it)")
        ids = np.atleast_1d(loadmat(base / "setid.mat", squeeze_me=True)[self.SPLITS[split]]).astype(int)
        labels = np.atleast_1d(loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]).astype(int) - 1
        if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
            raise ValueError(f"{base / 'setid.mat'}: image ids outside 1..{len(labels)} (imagelabels.mat)")
        self.paths = [base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        self.targets = [int(labels[i - 1]) for i in ids]
        self.classes = [f"{k + 1:03d}" for k in range(int(labels.max()) + 1 if labels.size else 0)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return decode_rgb(self.paths[i]), self.targets[i]


def read_classification_split(fmt: str, root: str | os.PathLike, split: str, download: bool = False) -> Dataset:
    """The reader for ``fmt`` (``imagefolder`` | ``cifar10`` | ``flowers102``) on one split."""
    if fmt == "imagefolder":
        return ImageFolderClassification(root, split)
    if fmt == "cifar10":
        return Cifar10(root, split, download)
    if fmt == "flowers102":
        return Flowers102(root, split, download)
    raise ValueError(f"data.format={fmt!r} is not a classification format; use one of {CLASSIFICATION_FORMATS}")


def classification_transform(preset: str, train: bool, image_size: int, crop_scale: tuple[float, float] = (0.08, 1.0),
                             mean: Sequence[float] = (0.485, 0.456, 0.406),
                             std: Sequence[float] = (0.229, 0.224, 0.225)) -> A.Compose:
    """``"cls"``: Inception-style random-resized crop + flip (ImageNet recipes); ``"cls_invariant"``: the same plus
    vertical flips, 90° rotations, strong colour jitter, channel shuffle and grayscale, for data whose class depends
    on neither orientation nor colour (the built-in shapes; aerial or microscopy images): each of a small set's
    images then shows up in many colourings and orientations, which is what lets a from-scratch network learn the
    shapes rather than memorise the images; ``"cifar"``: pad 4 px, random crop, flip (the CIFAR convention);
    ``"none"``: the evaluation pipeline. Evaluation: resize the shorter side to size / 0.875 and centre-crop
    (``"cifar"``: a plain resize, the images are already the input size)."""
    if preset not in CLASSIFICATION_PRESETS:
        raise ValueError(f"unknown classification preset {preset!r}; use one of {CLASSIFICATION_PRESETS}")
    s = image_size
    tail = [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    if preset == "cifar":
        ops: list[Any] = [A.Resize(s, s)]
        if train:
            ops += [A.PadIfNeeded(s + 8, s + 8, border_mode=cv2.BORDER_CONSTANT, fill=0), A.RandomCrop(s, s),
                    A.HorizontalFlip(p=0.5)]
        return A.Compose(ops + tail)
    if train and preset in ("cls", "cls_invariant"):
        ops = [A.RandomResizedCrop(size=(s, s), scale=tuple(crop_scale)), A.HorizontalFlip(p=0.5)]
        if preset == "cls_invariant":
            ops += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0),
                    A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.5, p=1.0),
                    A.ChannelShuffle(p=0.5), A.ToGray(p=0.2)]
        return A.Compose(ops + tail)
    return A.Compose([A.SmallestMaxSize(max_size=int(round(s / EVAL_CROP_RATIO))), A.CenterCrop(s, s)] + tail)


class TransformedDataset(Dataset):
    """``base``'s items (at ``indices``) through ``transform``. ``on_bad``: what an unreadable image does,
    ``"raise"`` its error, or ``"drop"`` it as a ``check.Skipped`` record (evaluation: ``classification_eval_collate``
    leaves it out and lists it)."""

    def __init__(self, base: Dataset, transform: Callable[..., dict], indices: Sequence[int] | None,
                 on_bad: str = "raise") -> None:
        if on_bad not in ("raise", "drop"):
            raise ValueError(f"on_bad must be 'raise' or 'drop', got {on_bad!r}")
        self.base, self.transform, self.on_bad = base, transform, on_bad
        self.indices = list(range(len(base))) if indices is None else list(indices)  # type: ignore[arg-type]
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, i: int) -> tuple[Tensor, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image=np.asarray(image))["image"], label

    def _name(self, i: int) -> str:
        paths = getattr(self.base, "paths", None)  # file-based readers; CIFAR-10's arrays cannot be unreadable
        return str(paths[self.indices[i]]) if paths is not None else f"item {self.indices[i]}"

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Skipped:
        if self.on_bad == "raise":
            return self._load(i)
        return load_or_skip(self._load, i, len(self), self._name, self._warned, self.on_bad)


def classification_eval_collate(batch: Sequence[tuple[Tensor, int] | Skipped]) -> tuple[Tensor, Tensor, list[str]]:
    """``(images, labels, skipped)`` of an evaluation batch: unusable images (``Skipped``) are left out and listed as
    "file (reason)" strings; a batch of only such images has empty tensors."""
    skipped = [str(b) for b in batch if isinstance(b, Skipped)]
    usable = [b for b in batch if not isinstance(b, Skipped)]
    if not usable:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64), skipped
    images, labels = zip(*usable)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), skipped


def _spread(n: int, k: int | None) -> list[int] | None:
    """``k`` indices spread evenly over ``n`` (every class of a class-sorted dataset keeps a share); None = all."""
    if k is None or k >= n:
        return None
    return np.linspace(0, n - 1, k).round().astype(int).tolist()


class ClassificationDataModule(pl.LightningDataModule):
    """Train / validation loaders for one classification dataset.

    Args:
        root: dataset folder (see ``read_classification_split`` for the layouts).
        fmt: ``imagefolder`` | ``cifar10`` | ``flowers102``.
        train_split, val_split: split names (folders for ImageFolder; ``train``/``test`` for CIFAR-10;
            ``train``/``val``/``test`` for Flowers102).
        image_size: network input side.
        augment: training preset (``cls`` | ``cls_invariant`` | ``cifar`` | ``none``); validation never augments.
        crop_scale: area range of the ``cls`` random-resized crop.
        batch_size, val_batch_size, num_workers: loader settings.
        subset: at most this many images per split, spread evenly over the (class-sorted) split.
        mean, std: normalisation.
        download: let torchvision fetch CIFAR-10 / Flowers102 into ``root`` first.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fmt: str = "imagefolder",
        train_split: str = "train",
        val_split: str = "val",
        image_size: int = 224,
        augment: str = "cls",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        batch_size: int = 96,
        val_batch_size: int = 100,
        num_workers: int = 4,
        subset: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        download: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        train = read_classification_split(fmt, root, train_split, download)
        val = read_classification_split(fmt, root, val_split, download)
        self.classes: list[str] = list(train.classes)  # type: ignore[attr-defined]
        if list(val.classes) != self.classes:  # type: ignore[attr-defined]
            raise ValueError(f"{root}: splits {train_split!r} and {val_split!r} have different classes: "
                             f"{self.classes[:5]}… vs {list(val.classes)[:5]}…")  # type: ignore[attr-defined]
        tf = dict(image_size=image_size, crop_scale=crop_scale, mean=mean, std=std)
        self.train_dataset = TransformedDataset(train, classification_transform(augment, True, **tf),
                                          _spread(len(train), subset))  # type: ignore[arg-type]
        self.val_dataset = TransformedDataset(val, classification_transform(augment, False, **tf),
                                        _spread(len(val), subset))  # type: ignore[arg-type]
        for name, ds in (("train", self.train_dataset), ("val", self.val_dataset)):
            if len(ds) == 0:
                raise ValueError(f"{root}: the {name} split holds no images")

    @classmethod
    def from_config(cls, data: DataCfg, root: str | os.PathLike, download: bool = False) -> "ClassificationDataModule":
        return cls(root, data.format, data.train_split, data.val_split, data.image_size, data.augment,
                   data.crop_scale, data.batch_size, data.val_batch_size, data.num_workers, data.subset, data.mean,
                   data.std, download)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        from .datamodules import worker_init

        return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=self.num_workers,
                          # a lone last sample would give BatchNorm one value per channel at the 1×1 stage
                          drop_last=train and len(dataset) > batch_size,  # type: ignore[arg-type]
                          worker_init_fn=worker_init, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.val_batch_size, False)
