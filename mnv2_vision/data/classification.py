"""Classification data: ImageFolder (ImageNet's own layout), CIFAR-10 python batches, Flowers102; albumentations.

The readers return ``(H, W, 3)`` uint8 RGB arrays and an int label; ``ClassificationDataModule`` applies the
transform presets and builds the loaders. CIFAR-10 and Flowers102 are read here rather than through torchvision's
classes, which refuse any file whose md5 differs from the full official archive (so subsets and test fixtures
cannot be read); torchvision still does the downloading (``download=True``) and its checksums guard that.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import warnings
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

from ..config import DataCfg, bounded_repr
from ..errors import DataError
from .check import Skipped, load_or_skip
from .decode import decode_rgb  # load_rgb's pixels and errors, faster for JPEGs

__all__ = ["read_cifar_batch", "read_cifar_images", "read_cifar_label_names", "CLASSIFICATION_FORMATS",
           "CLASSIFICATION_PRESETS", "ImageFolderClassification", "Cifar10", "Flowers102", "classification_transform",
           "TransformedDataset", "ClassificationDataModule", "read_classification_split", "classification_eval_collate"]

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


# A pickled numpy array is a call of numpy's _reconstruct, then its __setstate__ with (version, shape, dtype,
# Fortran order, raw bytes); a dtype is numpy.dtype(type string, align, copy) and its own __setstate__. Run on a file's
# arguments, numpy's own functions build an object array from raw bytes (dtype 'O8': pointers read from the file, a
# segfault) or fail with any error. The unpickler hands out the stand-ins below instead, which only record their
# arguments; an array is built (np.frombuffer) once its dtype is a plain number type and its bytes fit its shape.
_NUMBER_TYPES = {f"{kind}{size}" for kind, sizes in (("b", "1"), ("i", "1248"), ("u", "1248"), ("f", "248"))
                 for size in sizes}


class _PickledDtype:
    """``numpy.dtype(type_string, align, copy)`` as a pickle calls it: a plain number type only, in any byte order."""

    def __init__(self, type_string: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(type_string, str) or type_string not in _NUMBER_TYPES:
            raise pickle.UnpicklingError(f"numpy dtype {bounded_repr(type_string)} is not a number type; a CIFAR-10 "
                                         "file holds uint8 pixels")
        self.type_string, self.order = type_string, "|"

    def __setstate__(self, state: Any) -> None:
        # (3 or 4, byte order, subarray, names, fields, item size, alignment, flags[, metadata]) of a plain type
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("|", "<", ">", "=")
                and state[2:5] == (None, None, None)):
            raise pickle.UnpicklingError(f"numpy dtype {self.type_string!r} with a state that is not a plain number "
                                         f"type's: {bounded_repr(state)}")
        self.order = state[1]

    def dtype(self) -> np.dtype:
        return np.dtype(self.type_string).newbyteorder(self.order if self.order in "<>" else "=")

    def __repr__(self) -> str:
        return f"dtype({self.type_string!r})"


class _PickledArray:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")`` and the array's ``__setstate__``, recorded."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def array(self) -> np.ndarray:
        ok = isinstance(self.state, tuple) and len(self.state) == 5
        version, shape, dtype, fortran, data = self.state if ok else (None,) * 5
        if not (ok and isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(dtype, _PickledDtype) and isinstance(data, (bytes, str))):
            raise pickle.UnpicklingError(f"a numpy array whose state is not (version, shape, number dtype, order, "
                                         f"bytes): {bounded_repr(self.state)}")
        if isinstance(data, str):  # a Python 2 file read with encoding="latin1"
            data = data.encode("latin-1")
        dt = dtype.dtype()
        if math.prod(shape) * dt.itemsize != len(data):
            raise pickle.UnpicklingError(f"a numpy array of shape {bounded_repr(shape)} and dtype {dt} with "
                                         f"{len(data):,} bytes")
        return np.frombuffer(data, dt).reshape(shape, order="F" if fortran else "C").copy()  # writable, as numpy's

    def __repr__(self) -> str:
        return "array(...)"


class _NdarrayName:
    """What ``numpy.ndarray`` stands for in a pickle: the class argument of ``_reconstruct``, nothing callable."""


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _PickledArray:
    if cls is not _NdarrayName:
        raise pickle.UnpicklingError(f"_reconstruct of {bounded_repr(cls)}, not of numpy.ndarray")
    return _PickledArray()


def _scalar(dtype: Any, data: Any) -> Any:
    """``numpy.core.multiarray.scalar(dtype, bytes)``: a numpy number (a label pickled as ``np.int64``)."""
    if not isinstance(dtype, _PickledDtype) or not isinstance(data, (bytes, str)):
        raise pickle.UnpicklingError(f"a numpy scalar of {bounded_repr(dtype)} from {bounded_repr(data)}")
    raw = data.encode("latin-1") if isinstance(data, str) else data
    if len(raw) != dtype.dtype().itemsize:
        raise pickle.UnpicklingError(f"a numpy scalar of {dtype} from {len(raw)} bytes")
    return np.frombuffer(raw, dtype.dtype())[0]


def _latin1(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 pickles bytes with protocols 0 to 2; no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode(..., {bounded_repr(encoding)}): a pickle of bytes uses latin1")
    return text.encode("latin-1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what they contain (numpy arrays of numbers, bytes), as the inert
    stand-ins above, never arbitrary callables, never numpy's own reconstruction on the file's arguments."""

    _ALLOWED = {("numpy", "ndarray"): _NdarrayName, ("numpy", "dtype"): _PickledDtype,
                ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy.core.multiarray", "scalar"): _scalar, ("numpy._core.multiarray", "scalar"): _scalar,
                ("_codecs", "encode"): _latin1}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")  # read_cifar_batch clips the text
        return self._ALLOWED[module, name]


def _check_memo_indices(raw: bytes) -> None:
    """Walk the opcodes without running them: a memo index (PUT) past the opcodes before it is refused, as the C
    unpickler grows its memo to twice the index and zeroes it first (a 5-byte ``LONG_BINPUT 2**30`` asks for 16 GiB).
    A pickler numbers its memo entries from 0 as it writes objects, so a real batch never does this."""
    for count, (opcode, arg, pos) in enumerate(pickletools.genops(raw)):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            raise pickle.UnpicklingError(f"memo index {arg:,} at byte {pos:,}, past the {count:,} opcodes before it")


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python pickle (a batch or ``batches.meta``: a dict) read with ``_NumpyOnlyUnpickler``: a planted
    payload is refused, never run; whatever is wrong with the file is a ``DataError`` naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}; expected <root>/cifar-10-batches-py/"
                                "{data_batch_1..5,test_batch,batches.meta} (python version of the dataset)")
    raw = path.read_bytes()
    try:
        with warnings.catch_warnings():  # a STRING opcode with a bad escape warns before it fails
            warnings.simplefilter("ignore", DeprecationWarning)
            _check_memo_indices(raw)
            obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
        if isinstance(obj, dict):
            obj = {k: v.array() if isinstance(v, _PickledArray) else v for k, v in obj.items()}
    except Exception as e:  # opcodes in any order on any arguments (a list append to an int...): any error can come
        detail = " ".join((str(e) if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}").split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."  # numpy quotes its argument: the file's bytes
        raise DataError(f"{path}: not a readable CIFAR-10 file ({detail})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict (a CIFAR-10 batch), got {type(obj).__name__}")
    batch = {}
    for k, v in obj.items():
        try:  # Python 3 pickles keep the keys of Python 2's files as bytes
            batch[k.decode() if isinstance(k, bytes) else k] = v
        except UnicodeDecodeError:
            raise DataError(f"{path}: a key that is not UTF-8: {bounded_repr(k)}") from None
    return batch


def _first_non_int(values: Sequence[Any]) -> str | None:
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            return f"{type(v).__name__} {bounded_repr(v)} at index {i}"
    return None


def read_cifar_images(path: Path) -> tuple[np.ndarray, list[int]]:
    """A CIFAR-10 batch's images (``(N, 3072)`` uint8, rows of 1024 red, green, blue values) and its N labels; a
    batch of any other shape or type is a ``DataError`` naming the file. The label range is the caller's to check
    (it knows the classes)."""
    batch = read_cifar_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: expected the keys 'data' and 'labels' of a CIFAR-10 batch, got "
                        f"{bounded_repr(list(batch))}")
    data, labels = batch["data"], batch["labels"]
    wrong = None
    if not isinstance(data, np.ndarray):
        wrong = type(data).__name__
    elif data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3072:
        wrong = f"{data.dtype} array {data.shape}"
    elif data.size and (data.min() < 0 or data.max() > 255):
        wrong = f"values {data.min()}..{data.max()}"
    if wrong is not None:
        raise DataError(f"{path}: 'data' must be an integer array of shape (N, 3072) with values 0..255, got {wrong}")
    if isinstance(labels, np.ndarray):
        wrong = None if labels.ndim == 1 and labels.dtype.kind in "ui" else f"{labels.dtype} array {labels.shape}"
        labels = labels.tolist() if wrong is None else labels
    elif not isinstance(labels, (list, tuple)):
        wrong = type(labels).__name__
    if wrong is None and len(labels) != len(data):  # before looking at the items: a list can share one a billion times
        wrong = f"{type(labels).__name__} of {len(labels):,}"
    wrong = wrong or _first_non_int(labels)
    if wrong is not None:
        raise DataError(f"{path}: 'labels' must be a list of {len(data):,} integers (one per row of 'data'), got "
                        f"{wrong}")
    return data.astype(np.uint8, copy=False), [int(v) for v in labels]


def read_cifar_label_names(path: Path) -> list[str]:
    """The class names in ``batches.meta`` (``label_names``); anything else there is a ``DataError`` naming it."""
    meta = read_cifar_batch(path)
    if "label_names" not in meta:
        raise DataError(f"{path}: expected the key 'label_names' of batches.meta, got {bounded_repr(list(meta))}")
    names = meta["label_names"]
    if not isinstance(names, list):
        raise DataError(f"{path}: 'label_names' must be a list of class names, got {type(names).__name__}")
    classes = []
    for i, name in enumerate(names):
        if not isinstance(name, (str, bytes)):
            raise DataError(f"{path}: 'label_names' must be a list of class names, got {type(name).__name__} "
                            f"{bounded_repr(name)} at index {i}")
        try:  # bytes in a Python 3 pickle
            classes.append(name.decode() if isinstance(name, bytes) else name)
        except UnicodeDecodeError:
            raise DataError(f"{path}: class name {i} is not UTF-8: {bounded_repr(name)}") from None
    return classes


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
            data, batch_labels = read_cifar_images(base / name)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes of 32×32
            labels.append(batch_labels)
        self.classes = read_cifar_label_names(base / "batches.meta")
        for name, batch_labels in zip(names, labels):
            bad = [t for t in batch_labels if not 0 <= t < len(self.classes)]
            if bad:
                raise DataError(f"{base / name}: labels {sorted(set(bad))[:5]} outside 0..{len(self.classes) - 1} "
                                "(the classes of batches.meta)")
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.targets = [t for batch_labels in labels for t in batch_labels]

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
