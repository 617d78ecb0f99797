"""LiteRT (TFLite) export through ``litert-torch``: fp32 and int8, the metadata inside the file.

* **Graph**: the export wrappers of ``onnx_export`` (``DetectionExport`` in ``"raw"`` mode, ``SegmentationExport``,
  ``MultiTaskExport``) with the ONNX export's output names (``cls_logits``, ``bbox_regression``, ``anchors``,
  ``logits``), converted at one fixed size and batch 1. TFLite holds no NMS of our semantics (its SSD
  post-processing op decodes and suppresses differently), so detection always exports the raw heads and the runtime
  decodes and runs per-class NMS with the stored box coder and ``eval.*`` settings. Channels-last input and image
  outputs (``CHANNELS_LAST``): the layout LiteRT computes in, so the graph has no transposes of its own (the backend
  transposes the input; its NCHW logits are a view).
* **int8**: post-training static quantisation by ``litert-torch``'s PT2E quantizer (``quantize_int8_pt2e``):
  symmetric int8 weights per output channel, int8 activations per tensor from histogram calibration on training
  images. The post-processing is outside the graph anyway, so everything inside is quantised, except modules of
  the types given as ``float_modules`` (``tools/export.py --int8-fp32-heads``: ``SSDLiteHead``).
* **Metadata**: the ONNX ``metadata_props`` pairs (``metadata.encode_props``) as one JSON object in a TFLite
  metadata entry (``Model.metadata``, the flatbuffer's named buffers; ``METADATA_NAME``), written with
  ``ai_edge_litert``'s flatbuffer schema (``write_metadata``). Weight buffers of 1 KiB and more are stored after the
  flatbuffer, 16-byte aligned (the TFLite schema's ``offset``/``size`` buffers, as ``ai-edge-quantizer`` writes
  them): re-packing the flatbuffer in Python would otherwise leave them unaligned.

Why no dynamic height and width for segmentation: ``litert-torch`` converts ``dynamic_shapes`` but folds the
image-pooling broadcast and the concatenation to the traced size, so the interpreter refuses any other size.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mnv2_runtime.backends.litert import METADATA_NAME  # the reader's entry name: one definition

from ..files import atomic_write
# encode_props through onnx_export: the metadata module's home moves (mnv2_runtime.metadata), onnx_export follows it
from .onnx_export import DetectionExport, _io_names, encode_props

__all__ = ["CHANNELS_LAST", "METADATA_NAME", "EXTERNAL_MIN_BYTES", "NamedOutputs", "convert", "quantize_int8_pt2e",
           "write_metadata", "export_litert", "litert_runner"]

CHANNELS_LAST = True
EXTERNAL_MIN_BYTES = 1024  # buffers this large go after the flatbuffer, 16-byte aligned
_TFLITE_ID = b"TFL3"
_PROGRESS_VAR = "LITERT_TORCH_SHOW_PROGRESS"  # litert_torch._config reads it at each progress line


class NamedOutputs(nn.Module):
    """An export wrapper's outputs as ``{name: tensor}`` (the names become the TFLite signature's output names), with
    a channels-last image input and channels-last 4-D outputs when ``channels_last``."""

    def __init__(self, wrapper: nn.Module, channels_last: bool = CHANNELS_LAST) -> None:
        super().__init__()
        if isinstance(wrapper, DetectionExport) and wrapper.mode != "raw":
            raise ValueError("LiteRT exports detection as raw outputs ('raw' mode): TFLite holds no per-class NMS of "
                             "postprocess_detections' semantics")
        self.wrapper, self.channels_last = wrapper, channels_last
        self.names = _io_names(wrapper)[0]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            images = images.permute(0, 3, 1, 2)
        out = self.wrapper(images)
        out = out if isinstance(out, tuple) else (out,)
        return {name: (o.permute(0, 2, 3, 1) if self.channels_last and o.dim() == 4 else o)
                for name, o in zip(self.names, out)}


def _sample(image_size: tuple[int, int], channels_last: bool) -> Tensor:
    h, w = int(image_size[0]), int(image_size[1])
    return torch.randn(1, h, w, 3) if channels_last else torch.randn(1, 3, h, w)


def _nhwc(images: np.ndarray | Tensor, channels_last: bool) -> Tensor:
    """(N, 3, H, W) images as the converted graph takes them."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return x.permute(0, 2, 3, 1).contiguous() if channels_last else x


def convert(wrapper: nn.Module, image_size: tuple[int, int], *, quant_config: Any = None,
            channels_last: bool = CHANNELS_LAST) -> bytes:
    """The TFLite flatbuffer of ``wrapper`` (an ``onnx_export`` wrapper, or a PT2E-quantised ``NamedOutputs``
    graph with its ``quant_config``) at ``image_size``, batch 1."""
    import litert_torch

    module = wrapper if isinstance(wrapper, torch.fx.GraphModule) else NamedOutputs(wrapper, channels_last).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter of torch.export and its dependencies
        quiet = _quiet_converter()
        try:
            model = litert_torch.convert(module, (), {"images": _sample(image_size, channels_last)},
                                         quant_config=quant_config)
            return bytes(model.model_content())  # a progress line of its own too
        finally:
            quiet()


def _quiet_converter() -> Callable[[], None]:
    """Silence litert-torch's progress lines (printed to stdout unless ``LITERT_TORCH_SHOW_PROGRESS`` is off) and
    INFO logs (its logger and absl's) for one conversion; returns the undo."""
    loggers = [logging.getLogger(n) for n in ("litert_torch", "absl", "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    progress = os.environ.get(_PROGRESS_VAR)
    os.environ[_PROGRESS_VAR] = "n"
    for lg in loggers:
        lg.setLevel(logging.WARNING)

    def undo() -> None:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if progress is None:
            os.environ.pop(_PROGRESS_VAR, None)
        else:
            os.environ[_PROGRESS_VAR] = progress
    return undo


def _quantizer(config: Any, float_modules: Sequence[type]) -> Any:
    """``litert-torch``'s PT2E quantizer with ``config`` for everything but ``float_modules`` (left float)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    quantizer = PT2EQuantizer().set_global(config)
    for t in float_modules:  # a None config leaves the type's operators unannotated: float
        # torch.export records each node's module types as qualified names, which the quantizer compares
        quantizer.set_module_type(f"{t.__module__}.{t.__qualname__}", None)
    return quantizer


def quantize_int8_pt2e(wrapper: nn.Module, image_size: tuple[int, int], calibration: Iterable[np.ndarray], *,
                       per_channel: bool = True, float_modules: Sequence[type] = (),
                       channels_last: bool = CHANNELS_LAST) -> bytes:
    """The int8 TFLite flatbuffer of ``wrapper``: PT2E post-training static quantisation with ``litert-torch``'s
    quantizer (weights symmetric int8, per output channel unless ``per_channel`` is False; activations int8 per
    tensor, histogram observers), calibrated on ``calibration`` ((1, 3, H, W) float32 arrays at ``image_size``,
    preprocessed as the model's input). Modules of the types ``float_modules`` (e.g. ``SSDLiteHead``) stay float."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    images = [np.asarray(a, dtype=np.float32) for a in calibration]
    if not images:
        raise ValueError("int8 calibration needs at least one image")
    quantizer = _quantizer(get_symmetric_quantization_config(is_per_channel=per_channel), float_modules)
    module = NamedOutputs(wrapper, channels_last).eval()
    sample = {"images": _sample(image_size, channels_last)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        graph = torch.export.export(module, (), sample).module()
        graph = prepare_pt2e(graph, quantizer)
        for image in images:
            graph(images=_nhwc(image, channels_last))
        graph = convert_pt2e(graph, fold_quantize=False)
    # an exported graph has no train/eval behaviour left (its batch norms are folded in inference form); the flag
    # only stops litert-torch's "converted in training mode" warning (GraphModule.eval() is refused on it)
    graph.training = False
    return convert(graph, image_size, quant_config=QuantConfig(pt2e_quantizer=quantizer), channels_last=channels_last)


def _round16(n: int) -> int:
    return (n + 15) & ~15


def write_metadata(model: bytes, props: Mapping[str, str]) -> bytes:
    """``model`` (TFLite flatbuffer bytes) with ``props`` as the JSON object of the ``METADATA_NAME`` metadata entry
    (an existing entry of that name is replaced). Buffers of ``EXTERNAL_MIN_BYTES`` or more are written after the
    flatbuffer at 16-byte aligned offsets; the graph and weights are otherwise unchanged."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))  # resolves buffers already stored outside
    payload = np.frombuffer(json.dumps(dict(props), ensure_ascii=False).encode("utf-8"), np.uint8)
    kept = [m for m in (obj.metadata or []) if _text(m.name) != METADATA_NAME]
    obj.buffers.append(schema.BufferT(data=payload))
    obj.metadata = [*kept, schema.MetadataT(name=METADATA_NAME, buffer=len(obj.buffers) - 1)]
    external = {i: np.ascontiguousarray(b.data).view(np.uint8).tobytes() for i, b in enumerate(obj.buffers)
                if b.data is not None and len(b.data) >= EXTERNAL_MIN_BYTES}
    for i in external:  # placeholders, so the packed tables keep room for the real offset and size
        obj.buffers[i].data, obj.buffers[i].offset, obj.buffers[i].size = None, 1, 1
    head = bytearray(flatbuffer_utils.convert_object_to_bytearray(obj))
    offsets, end = {}, _round16(len(head))
    for i, blob in external.items():
        offsets[i] = end
        end = _round16(end + len(blob))
    out = bytearray(end)
    out[: len(head)] = head
    packed = schema.Model.GetRootAs(out, 0)
    for i, blob in external.items():
        flatbuffer_utils.update_packed_buffer(packed.Buffers(i), offset=offsets[i], size=len(blob))
        out[offsets[i]: offsets[i] + len(blob)] = blob
    if bytes(out[4:8]) != _TFLITE_ID:
        raise RuntimeError("the re-packed TFLite model lost its file identifier")
    return bytes(out)


def _text(name: Any) -> str:
    """A flatbuffer string as the object API gives it (bytes, or str) as text."""
    return name.decode("utf-8", "replace") if isinstance(name, (bytes, bytearray)) else str(name or "")


def export_litert(wrapper: nn.Module, path: str | Path, image_size: tuple[int, int], metadata: Mapping[str, Any], *,
                  calibration: Sequence[np.ndarray] | None = None, per_channel: bool = True,
                  float_modules: Sequence[type] = ()) -> Path:
    """Convert ``wrapper`` (``DetectionExport`` in raw mode, ``SegmentationExport``, ``MultiTaskExport``) at
    ``image_size`` to the ``.tflite`` file ``path`` with ``metadata`` (values JSON-encoded unless strings, as the
    ONNX export stores them) inside; int8 (``quantize_int8_pt2e``, with ``per_channel`` and ``float_modules``) when
    ``calibration`` images are given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        model = convert(wrapper, image_size)
    else:
        model = quantize_int8_pt2e(wrapper, image_size, calibration, per_channel=per_channel,
                                   float_modules=float_modules)
    data = write_metadata(model, encode_props(metadata))
    with atomic_write(path) as f:
        f.write(data)
    return path


def litert_runner(path: str | Path, threads: int = 2) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``run(images) -> {output name: array}`` of the ``.tflite`` file in the runtime's LiteRT backend (the
    interpreter with XNNPACK, ``threads`` threads), for the parity and accuracy checks."""
    from mnv2_runtime.backends.litert import LiteRTBackend

    return LiteRTBackend(path, threads).run
