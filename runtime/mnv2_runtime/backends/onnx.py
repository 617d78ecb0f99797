"""``.onnx`` files in ONNX Runtime (CPU; CUDA when asked and onnxruntime-gpu provides it).

The file is opened by ONNX Runtime itself (no ``onnx`` package needed): random, truncated or empty bytes and graphs
it cannot build (a node missing, an unknown operator) are one ``ModelError`` line naming the file. The metadata is
ONNX's ``metadata_props`` (the session's ``custom_metadata_map``), checked against the session's inputs and outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..metadata import INPUT_NAME, GraphInfo, checked_metadata
from . import first_line, require

__all__ = ["OnnxBackend"]


def _shape(arg: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in (arg.shape or ()))


class OnnxBackend:
    """An ``.onnx`` file written by ``tools/export.py`` in an ONNX Runtime session (the ``Backend`` interface).

    Args:
        path: the file.
        threads: intra-op threads (``None``: ONNX Runtime's choice, one per core).
        device: ``"cpu"``, or ``"cuda"`` for ONNX Runtime's CUDA provider where it is installed (CPU otherwise).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu") -> None:
        ort = require("onnxruntime", path, "onnx", None)
        state = require("onnxruntime.capi.onnxruntime_pybind11_state", path, "onnx", None)
        self.path = Path(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        # ONNX Runtime's own errors (a file it cannot parse, a graph it cannot build) derive from Exception only,
        # so they are named one by one
        ort_errors = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except ort_errors as e:
            raise ModelError(f"{path} is not a model ONNX Runtime can run ({first_line(e)}); export it again with "
                             "tools/export.py") from None
        self.graph = GraphInfo({i.name: _shape(i) for i in self.session.get_inputs()},
                               {o.name: _shape(o) for o in self.session.get_outputs()})
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = checked_metadata(props.items(), self.graph, str(path))
        self.outputs = list(self.graph.outputs)
        height, width = self.graph.inputs[INPUT_NAME][2:]
        self.fixed_input = (height, width) if height is not None and width is not None else None

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
        return dict(zip(self.outputs, out))
