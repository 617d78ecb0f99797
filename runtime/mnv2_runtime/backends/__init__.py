"""One backend per exported format, each a small class with the interface ``Backend`` describes; ``FORMATS`` maps a
file suffix to the module and class that open it.

A backend only opens the file and runs the network: reading images, the network input, decoding and NMS, masks and
the result dicts are ``Model``'s (``model.py``), the same for every format. So a backend's job, for a new format
``backends/<name>.py``:

1. import its inference package with ``require`` (a missing package is one ``MissingRuntime`` line naming the extra
   that installs it);
2. open the file; a file its runtime cannot load (random bytes, truncated, a broken graph) is one ``ModelError``
   line naming the file, ending "export it again with tools/export.py" (the first line of the runtime's own error
   in brackets);
3. read the metadata the exporter stored in the file (or its documented sidecar) as ``(key, text)`` pairs and check
   them with ``metadata.checked_metadata(pairs, GraphInfo(inputs, outputs), str(path))``, naming the graph's
   inputs and outputs as the ONNX export names them (input ``images``; outputs below) with their shapes (``None``
   for a dynamic dimension);
4. ``run`` a float32 NCHW batch and return the outputs by those names, as float32 (``labels`` and
   ``num_detections`` int64) arrays: a graph that takes NHWC, or a fixed batch of one, is the backend's to adapt.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import MissingRuntime, ModelError
from ..version import __version__

__all__ = ["Backend", "FORMATS", "backend_class", "require", "first_line"]

# suffix → (module in this package, class, format name): the format name is what MissingRuntime and the extras use
FORMATS: dict[str, tuple[str, str, str]] = {
    ".onnx": ("onnx", "OnnxBackend", "onnx"),
    ".tflite": ("litert", "LiteRTBackend", "litert"),
    ".xml": ("openvino", "OpenVINOBackend", "openvino"),
}


@runtime_checkable
class Backend(Protocol):
    """An exported model in its inference runtime: what every format's backend provides.

    ``__init__(path: Path, threads: int | None)`` opens the file: ``threads`` is the intra-op CPU thread count
    (``None``: the runtime's own choice). A file that cannot be used raises ``ModelError`` (one line naming the
    file, and the metadata key where one is at fault); the format's package not installed raises
    ``MissingRuntime`` (``require``). ``ONNX`` also takes ``device="cuda"`` (ONNX Runtime's CUDA provider).

    Attributes:
        name: the runtime's name, for messages and ``repr`` (``"onnxruntime"``, ``"litert"``, ``"openvino"``).
        metadata: the decoded metadata, checked by ``metadata.checked_metadata`` against the graph: the keys of
            the ONNX export's ``metadata_props`` (``task``, ``input_size``, ``mean``, ``std``, ``class_names``,
            ``category_ids``, ``postprocess``, ``detection_output``, ``box_coder_weights``, ``seg_class_names``, ...).
        fixed_input: the ``(H, W)`` the graph takes, or ``None`` when height and width are dynamic (ONNX
            segmentation). A detector's equals its ``input_size``; a segmentation model with a fixed input gets
            each image resized to it and its logits upsampled back to the image.
    """

    name: str
    metadata: Mapping[str, Any]
    fixed_input: tuple[int, int] | None

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The network's outputs for ``images``, float32 ``(N, 3, H, W)`` normalised RGB, any ``N ≥ 1``, by the
        ONNX export's output names: ``cls_logits`` ``(N, A, K)``, ``bbox_regression`` ``(N, A, 4)`` and
        ``anchors`` ``(N, A, 4)`` for raw heads; ``boxes`` ``(N, D, 4)``, ``scores`` ``(N, D)``,
        ``labels`` ``(N, D)``, ``num_detections`` ``(N,)`` with NMS in the graph; ``logits`` ``(N, K, h, w)`` for
        masks (the multi-task pair: the detection outputs and ``logits``)."""
        ...


def first_line(e: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), or its type's name: what a backend quotes of
    its runtime's error."""
    return ((str(e).strip().splitlines() or [""])[0][:200]) or type(e).__name__


def require(package: str, path: str | Path, format: str, extra: str | None) -> ModuleType:
    """``import package``, or ``MissingRuntime`` naming it and the ``mnv2_runtime`` extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingRuntime(str(path), format, package, extra) from None


def backend_class(path: str | Path) -> type:
    """The backend class for ``path``'s suffix (``FORMATS``), or one ``ModelError`` line: a suffix no backend
    reads, or a format whose backend module this installation lacks."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ModelError(f"{path} is not a model file this runtime reads ({', '.join(FORMATS)} files written by "
                         "tools/export.py)")
    module, cls, _ = FORMATS[suffix]
    try:
        found = importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.{module}":
            raise
        raise ModelError(f"{path}: this mnv2_runtime ({__version__}) has no backend for {suffix} files "
                         f"({__package__}.{module} is missing); export the model to ONNX, or install an "
                         "mnv2_runtime that has it") from None
    return getattr(found, cls)
