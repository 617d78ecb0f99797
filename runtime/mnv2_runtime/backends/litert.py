"""The LiteRT (TFLite) backend: a ``.tflite`` file written by ``tools/export.py --format litert``, run by the LiteRT
interpreter (``ai_edge_litert``; XNNPACK on the CPU), behind the interface every backend offers: ``metadata``,
``fixed_input`` and ``run(images NCHW float32) -> {output name: array}`` with the ONNX export's output names.

What the file carries about itself is the ONNX ``metadata_props`` (the same keys, values and checks), stored as one
TFLite metadata entry named ``METADATA_NAME`` (the flatbuffer's ``Model.metadata`` list, whose entries name a buffer)
holding a JSON object of those string pairs. The graph takes one image at a fixed size (LiteRT cannot resize
these graphs: see docs/deploy.md), channels-last or channels-first as converted; ``run`` takes the NCHW batch every
backend takes, transposes it when the graph is channels-last, runs the images one by one, and returns channels-last
outputs as NCHW views (no copy).

Nothing here imports torch: the interpreter and its flatbuffer schema (``ai_edge_litert``, the ``litert`` extra) and
numpy suffice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ModelError
from ..metadata import INPUT_NAME, GraphInfo, checked_metadata, parse_json
from . import first_line, require

__all__ = ["METADATA_NAME", "SIGNATURE", "read_metadata_props", "LiteRTBackend"]

METADATA_NAME = "mnv2_vision"  # the TFLite metadata entry holding the exported model's metadata pairs
SIGNATURE = "serving_default"  # litert-torch's name for a model's one signature
_REEXPORT = "export it again with tools/export.py --format litert"


def read_metadata_props(data: bytes, source: str) -> list[tuple[str, str]]:
    """The metadata pairs stored in the ``METADATA_NAME`` entry of the TFLite flatbuffer ``data`` (the file
    ``source``); a ``ModelError`` naming the file when the entry is missing or not a JSON object of strings.

    ``data`` must already be a valid TFLite model (the interpreter verifies it): the flatbuffer is read lazily,
    without unpacking the weights. A buffer stored after the flatbuffer (``offset``/``size``, as
    ``deploy/litert_export.py`` writes large buffers) is read from there."""
    schema = require("ai_edge_litert.schema_py_generated", source, "litert", "litert")
    model = schema.Model.GetRootAs(data, 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    entry = next((e for e in entries if (e.Name() or b"").decode("utf-8", "replace") == METADATA_NAME), None)
    if entry is None:
        raise ModelError(f"{source} has no mnv2_vision metadata (TFLite metadata entry {METADATA_NAME!r}); "
                         "export it with tools/export.py --format litert")
    where = f"{source}: TFLite metadata entry {METADATA_NAME!r}"
    if entry.Buffer() >= model.BuffersLength():
        raise ModelError(f"{where} names buffer {entry.Buffer()} of {model.BuffersLength()}; {_REEXPORT}")
    buffer = model.Buffers(entry.Buffer())
    if buffer.Offset():
        raw = bytes(data[buffer.Offset(): buffer.Offset() + buffer.Size()])
    else:
        raw = b"" if buffer.DataIsNone() else buffer.DataAsNumpy().tobytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{where} is not UTF-8 text; {_REEXPORT}") from None
    pairs = parse_json(text, where, _REEXPORT)
    if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
        raise ModelError(f"{where} must hold a JSON object of strings (the metadata pairs); {_REEXPORT}")
    return list(pairs.items())


def _interpreter(data: bytes, source: str, threads: int):
    """The LiteRT interpreter of the model bytes ``data``, tensors allocated; a ``ModelError`` naming the file
    when the bytes are no TFLite model (random, truncated, empty) or the interpreter cannot prepare it."""
    interpreter_module = require("ai_edge_litert.interpreter", source, "litert", "litert")
    if not data:
        raise ModelError(f"{source} is empty, not a LiteRT model; {_REEXPORT}")
    try:
        interpreter = interpreter_module.Interpreter(model_content=data, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"{source} is not a usable LiteRT model ({first_line(e)}); {_REEXPORT}") from None
    return interpreter


def _quantize(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """``x`` as the graph input ``detail`` takes it: float32, or an integer-quantised input's
    round(x / scale) + zero_point (a fully quantised graph)."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """An output as float32: an integer-quantised output's (q − zero_point) · scale."""
    if x.dtype == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    return ((x.astype(np.float32) - zero_point) * scale).astype(np.float32) if scale else x.astype(np.float32)


class LiteRTBackend:
    """A ``.tflite`` export in the LiteRT interpreter (XNNPACK, ``threads`` threads; default: every core): the
    ``Backend`` interface.

    Attributes:
        name: ``"litert"``.
        metadata: the decoded, checked metadata (the ONNX export's keys: task, input_size, mean, std, class_names,
            category_ids, postprocess, detection_output, ...).
        fixed_input: the (H, W) the graph takes; LiteRT graphs are fixed-size, so never ``None`` here.
        output_names: the graph's outputs, by the ONNX export's names.
        channels_last: whether the graph takes (and gives its image-shaped outputs as) NHWC.
    """

    name = "litert"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        source = str(path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise ModelError(f"{source} cannot be read ({e.strerror or e}); check the path") from None
        self._interpreter = _interpreter(data, source, int(threads or os.cpu_count() or 1))
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE not in signatures or signatures[SIGNATURE]["inputs"] != [INPUT_NAME]:
            raise ModelError(f"{source} has signatures {signatures!r}, not {SIGNATURE!r} taking "
                                  f"{INPUT_NAME!r}; {_REEXPORT}")
        self._runner = self._interpreter.get_signature_runner(SIGNATURE)
        shape = tuple(int(d) for d in self._runner.get_input_details()[INPUT_NAME]["shape"])
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ModelError(f"{source}: its input {INPUT_NAME!r} has shape {shape}, not an RGB image batch; "
                                  f"{_REEXPORT}")
        self.channels_last = shape[3] == 3 and shape[1] != 3
        self.fixed_input: tuple[int, int] = shape[1:3] if self.channels_last else shape[2:]
        self._input = self._runner.get_input_details()[INPUT_NAME]
        self._outputs = self._runner.get_output_details()
        outputs = {name: tuple(int(d) for d in detail["shape"]) for name, detail in self._outputs.items()}
        self.output_names = sorted(outputs)
        graph = GraphInfo(inputs={INPUT_NAME: (None, 3, *self.fixed_input)},
                          outputs={name: (None, *self._nchw(s)[1:]) for name, s in outputs.items()})
        self.metadata: Mapping[str, Any] = checked_metadata(read_metadata_props(data, source), graph, source)

    def _nchw(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """An output's shape as the NCHW interface gives it (4-D outputs of a channels-last graph move C to 1)."""
        return (shape[0], shape[3], shape[1], shape[2]) if self.channels_last and len(shape) == 4 else shape

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for ``images`` (N, 3, H, W) float32 at ``fixed_input``, preprocessed as the metadata
        says: ``{name: (N, ...)}``, image-shaped outputs as (N, C, H, W) (a view of NHWC data for a channels-last
        graph)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.fixed_input:
            raise ValueError(f"{self.path} takes (N, 3, {self.fixed_input[0]}, {self.fixed_input[1]}) float32 "
                             f"images, got shape {images.shape}")
        if self.channels_last:
            images = images.transpose(0, 2, 3, 1)
        # One image at a time: the graph has batch 1 (a CPU gains nothing from larger batches: docs/deploy.md).
        runs = [self._runner(**{INPUT_NAME: _quantize(image[None], self._input)}) for image in images]
        out = {name: _dequantize(np.concatenate([r[name] for r in runs]), self._outputs[name])
               for name in self.output_names}
        return {name: (v.transpose(0, 3, 1, 2) if self.channels_last and v.ndim == 4 else v)
                for name, v in out.items()}
