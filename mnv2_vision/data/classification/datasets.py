"""Classification readers: ImageFolder (ImageNet's own layout), CIFAR-10 python batches, Flowers102.

The readers return ``(H, W, 3)`` uint8 RGB arrays and an int label (``datamodule.py`` applies the transforms).
CIFAR-10 and Flowers102 are read here rather than through torchvision's classes, which refuse any file whose md5
differs from the full official archive (so subsets and test fixtures cannot be read); torchvision still does the
downloading (``download=True``) and its checksums guard that.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from ...config import bounded_repr
from ...errors import DataError
from ..io.decode import decode_rgb  # load_rgb's pixels and errors, faster for JPEGs

__all__ = ["read_cifar_batch", "read_cifar_images", "read_cifar_label_names", "CLASSIFICATION_FORMATS",
           "ImageFolderClassification", "Cifar10", "Flowers102", "read_classification_split"]


CLASSIFICATION_FORMATS = ("imagefolder", "cifar10", "flowers102")


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
    """CIFAR-10 python batches: ``split="train"`` reads ``data_batch_1..5``, ``"test"`` (or ``"val"``)
    ``test_batch``."""

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


