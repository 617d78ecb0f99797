"""The OpenVINO backend: an IR pair (``model.xml`` + ``model.bin``) written by ``tools/export.py --format openvino``.

The pair is the model: the ``.xml`` holds the graph and, in its ``rt_info`` under ``mnv2_vision``, the same metadata
an ONNX export carries in ``metadata_props`` (string pairs: text for ``TEXT_KEYS``, JSON for the rest); the ``.bin``
beside it (same name) holds the weights. A missing ``.bin``, an ``.xml`` that is no IR (random, truncated or empty
bytes), a ``.bin`` that does not fit its ``.xml``, or a bad metadata value is one error line naming the file (and
the key).

Inference runs in fp32 (``INFERENCE_PRECISION_HINT`` ``f32``): OpenVINO's CPU plugin otherwise picks bf16 by
itself on a CPU with AVX-512 BF16 or AMX, which moves the outputs by ~1e-2 relative and breaks the equality with
PyTorch that every export is checked for. An int8 IR runs its quantised layers in int8 either way.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ModelError
from ..metadata import INPUT_NAME, GraphInfo, checked_metadata
from . import first_line, require

__all__ = ["RT_INFO_SECTION", "OpenVINOBackend", "read_ir", "ir_props", "set_ir_props", "graph_info",
           "compile_ir", "ir_run"]

RT_INFO_SECTION = "mnv2_vision"  # rt_info/<section>/<key value="..."/>: one element per metadata key
_HEAD_BYTES = 4096  # an IR's <net> element starts within its first lines
_REEXPORT = "export it again with tools/export.py --format openvino"


def _reason(e: BaseException) -> str:
    """The last line of an OpenVINO error (``first_line`` of it: the lines before say where in OpenVINO's C++
    sources it was raised)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return first_line(Exception(lines[-1])) if lines else type(e).__name__


def read_ir(path: str | Path):
    """The ``openvino.Model`` of the IR pair ``path`` (``.xml``) + its ``.bin``, or a ``ModelError`` naming the
    file that is missing or unreadable. The ``.xml`` is checked to be an IR before OpenVINO reads it: OpenVINO
    would otherwise try every frontend it has on foreign bytes (and TensorFlow's logs its failure to stderr)."""
    ov = require("openvino", path, "openvino", "openvino")
    xml = Path(path)
    weights = xml.with_suffix(".bin")
    if not xml.is_file():
        raise ModelError(f"{xml} not found: an OpenVINO model is a .xml file and its .bin")
    with open(xml, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if b"<net" not in head:
        raise ModelError(f"{xml} is not an OpenVINO IR (.xml without a <net> element: empty, random or foreign "
                              f"bytes); {_REEXPORT}")
    if not weights.is_file():
        raise ModelError(f"{weights} is missing: an OpenVINO model is the pair {xml.name} + {weights.name} "
                              "(same folder, same name); copy both")
    try:
        return ov.Core().read_model(str(xml), str(weights))
    except RuntimeError as e:
        raise ModelError(f"{xml} (with {weights.name}) is not a model OpenVINO can read ({_reason(e)}); "
                              f"{_REEXPORT}") from None


def ir_props(model: Any, source: str) -> list[tuple[str, str]]:
    """The metadata pairs in ``model``'s ``rt_info`` (empty when it has none); a malformed section is a
    ``ModelError`` naming ``source``."""
    if not model.has_rt_info([RT_INFO_SECTION]):
        return []
    try:
        section = model.get_rt_info([RT_INFO_SECTION]).astype(dict)
        return [(str(k), v.astype(str)) for k, v in section.items()]
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelError(f"{source}: rt_info {RT_INFO_SECTION!r} is not a list of key/value metadata "
                              f"({_reason(e)}); {_REEXPORT}") from None


def set_ir_props(model: Any, props: Mapping[str, str]) -> None:
    """Store metadata string pairs (``metadata.encode_props``) in ``model``'s ``rt_info``, replacing a stored key."""
    for key, value in props.items():
        if not key.isidentifier():  # an XML element name: what the exporter writes always is
            raise ValueError(f"metadata key {key!r} cannot be an rt_info element name")
        model.set_rt_info(str(value), [RT_INFO_SECTION, key])


def graph_info(model: Any) -> GraphInfo:
    """``model``'s input and output names with their shapes (``None``: dynamic)."""
    def shape(port: Any) -> tuple[int | None, ...]:
        ps = port.get_partial_shape()
        return () if ps.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in ps)

    def name(port: Any) -> str:
        names = port.get_names()
        return port.get_any_name() if names else ""

    return GraphInfo({name(p): shape(p) for p in model.inputs}, {name(p): shape(p) for p in model.outputs})


def compile_ir(model: Any, threads: int | None = None, precision: str = "f32") -> Any:
    """``model`` compiled for the CPU: ``threads`` inference threads (default: OpenVINO's choice), latency mode (one
    request uses every thread), ``precision`` the inference precision of its float layers (``"f32"``, or
    ``"bf16"`` where the CPU has it)."""
    ov = require("openvino", "an OpenVINO model", "openvino", "openvino")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(model, "CPU", config)


def ir_run(compiled: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``run(images) -> {output name: array}`` of a compiled model: ``images`` (N, 3, H, W) float32 in, arrays the
    caller owns out. Each thread gets its own infer request (one request is not for concurrent use)."""
    names = [port.get_any_name() for port in compiled.outputs]
    local = threading.local()

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(images, dtype=np.float32)}, share_inputs=True, share_outputs=True)
        return {name: np.array(request.get_output_tensor(i).data) for i, name in enumerate(names)}  # copies

    return run


class OpenVINOBackend:
    """An OpenVINO IR written by ``tools/export.py --format openvino``, on the CPU (the ``Backend`` interface).

    Args:
        path: the ``.xml`` (its ``.bin`` beside it).
        threads: inference threads (``None``: OpenVINO's choice, the physical cores).
        precision: inference precision of the float layers (see the module docstring): ``"f32"`` gives PyTorch's
            outputs; ``"bf16"`` is faster where the CPU has it.

    Attributes:
        metadata: the decoded metadata, checked against the graph (``metadata.checked_metadata``).
        fixed_input: ``(H, W)`` the graph requires, or ``None`` where height and width are dynamic.
        outputs: the output names, as the ONNX export names them.
    """

    name = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32") -> None:
        self.path = Path(path)
        source = str(self.path)
        model = read_ir(self.path)
        self.graph = graph_info(model)
        self.metadata = checked_metadata(ir_props(model, source), self.graph, source)
        height, width = self.graph.inputs[INPUT_NAME][2:]
        self.fixed_input = (height, width) if height is not None and width is not None else None
        self.outputs = list(self.graph.outputs)
        try:
            compiled = compile_ir(model, threads, precision)
        except RuntimeError as e:
            raise ModelError(f"{source} is not a model OpenVINO can compile ({_reason(e)}); {_REEXPORT}") from None
        self._run = ir_run(compiled)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The network's outputs for ``images`` (N, 3, H, W) float32, by output name (``outputs``)."""
        return self._run(images)
