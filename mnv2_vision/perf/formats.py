"""The export formats ``tools/benchmark.py --runtimes`` times: a registry of ``RuntimeFormat`` entries, each an export
function (PyTorch export wrapper → file, fp32 or int8) and a loader (file → ``run(images) -> {output name: array}``).

The entries give every format's file the ONNX export's inputs and output names (``onnx_export._io_names``: raw
heads ``cls_logits`` / ``bbox_regression`` / ``anchors``, segmentation ``logits``), so each runtime is timed on the
same raw outputs and its post-processing separately. Each entry writes the files ``tools/export.py`` ships for its
format (``onnx_export.export_onnx`` + ``quantize.quantize_int8``; ``deploy.openvino_export``; ``deploy.litert_export``)
and runs them as the runtime does. A format whose package is missing is skipped with the extra that provides it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import nn

from ..deploy.onnx_export import export_onnx, ort_run, ort_session
from ..deploy.quantize import quantize_int8

__all__ = ["Run", "RuntimeFormat", "FORMATS", "available", "NETWORK_SCOPE"]

Run = Callable[[np.ndarray], dict[str, np.ndarray]]  # (N, 3, H, W) float32 images → {output name: array}
NETWORK_SCOPE = "/model/"  # the export wrappers hold the network as ``self.model``: quantise only its nodes


@dataclass(frozen=True)
class RuntimeFormat:
    """One export format: ``export(wrapper, stem, image_size, calibration)`` writes the file for ``wrapper`` (an
    ``onnx_export`` wrapper, detection in ``"raw"`` mode) at a fixed ``image_size`` next to ``stem`` (a path without
    suffix) and returns its path, int8 when ``calibration`` ((1, 3, H, W) float32 images at ``image_size``) is
    given; ``load(path, threads)`` returns its ``Run``. ``package``: the module it needs; ``extra``: the pip extra
    that installs it."""

    name: str
    package: str
    extra: str
    export: Callable[[nn.Module, Path, tuple[int, int], Sequence[np.ndarray] | None], Path]
    load: Callable[[Path, int], Run]


# ---------------------------------------------------------------------------------------------- ONNX Runtime
def _onnx_export(wrapper: nn.Module, stem: Path, size: tuple[int, int],
                 calibration: Sequence[np.ndarray] | None) -> Path:
    fp32 = export_onnx(wrapper, stem.with_name(stem.name + "_fp32.onnx"), size, {})
    if calibration is None:
        return fp32
    return quantize_int8(fp32, stem.with_suffix(".onnx"), list(calibration), network_scope=NETWORK_SCOPE)


def _onnx_load(path: Path, threads: int) -> Run:
    return ort_run(ort_session(path, threads))


# ---------------------------------------------------------------------------------------------- OpenVINO
def _openvino_export(wrapper: nn.Module, stem: Path, size: tuple[int, int],
                     calibration: Sequence[np.ndarray] | None) -> Path:
    """``--format openvino``'s files: the IR converted from the ONNX export (fixed input size, fp32 weights); int8
    by ``quantize_openvino``'s defaults (NNCF, the network's nodes only, weights per output channel)."""
    from ..deploy.openvino_export import export_openvino, quantize_openvino

    fp32 = export_openvino(export_onnx(wrapper, stem.with_name(stem.name + "_src.onnx"), size, {}),
                           stem.with_name(stem.name + "_fp32.xml"))
    return fp32 if calibration is None else quantize_openvino(fp32, stem.with_suffix(".xml"), list(calibration))


def _openvino_load(path: Path, threads: int) -> Run:
    """The runtime's compiled IR (``openvino_run``: one stream, latency hint, f32 inference precision, as
    ``OpenVINOBackend`` runs it; on a CPU with bf16 OpenVINO would otherwise run an fp32 model in bf16)."""
    from ..deploy.openvino_export import openvino_run

    return openvino_run(path, threads)


# ---------------------------------------------------------------------------------------------- LiteRT
def _litert_export(wrapper: nn.Module, stem: Path, size: tuple[int, int],
                   calibration: Sequence[np.ndarray] | None) -> Path:
    """``--format litert``'s file (``export_litert``: channels-last, batch 1 at ``size``); int8 by its PT2E
    quantizer (weights symmetric per output channel, activations per tensor, calibrated on ``calibration``)."""
    from ..deploy.litert_export import export_litert

    return export_litert(wrapper, stem.with_suffix(".tflite"), size, {},
                         calibration=None if calibration is None else list(calibration))


def _litert_load(path: Path, threads: int) -> Run:
    """The LiteRT interpreter (XNNPACK delegate, its default on CPU) on ``threads`` threads; the NCHW input is
    transposed to the graph's NHWC (a copy, timed with the network), 4-D outputs returned as NCHW views. The int8
    graph is quantised end to end (PT2E): its input is quantised and its outputs dequantised here, as the runtime's
    LiteRT backend does, and timed with it."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()
    inp = runner.get_input_details()["images"]
    outs = runner.get_output_details()

    def quantize(x: np.ndarray) -> np.ndarray:
        scale, zero = inp["quantization"]
        if inp["dtype"] == np.float32 or not scale:
            return x
        info = np.iinfo(inp["dtype"])
        return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(inp["dtype"])

    def dequantize(name: str, v: np.ndarray) -> np.ndarray:
        scale, zero = outs[name]["quantization"]
        return (v.astype(np.float32) - zero) * np.float32(scale) if v.dtype != np.float32 and scale else v

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        out = runner(images=quantize(np.ascontiguousarray(images.transpose(0, 2, 3, 1))))
        out = {k: dequantize(k, v) for k, v in out.items()}
        return {k: (v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in out.items()}
    return run


FORMATS: dict[str, RuntimeFormat] = {
    "onnxruntime": RuntimeFormat("onnxruntime", "onnxruntime", "deploy", _onnx_export, _onnx_load),
    "openvino": RuntimeFormat("openvino", "openvino", "openvino", _openvino_export, _openvino_load),
    "litert": RuntimeFormat("litert", "litert_torch", "litert", _litert_export, _litert_load),
}


def available(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The formats among ``names`` whose packages import here (LiteRT also needs ``ai_edge_litert``), and for each
    other one the line saying which extra to install. Unknown names raise ``ValueError``."""
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ValueError(f"unknown runtime formats {unknown}; choose from {sorted(FORMATS)}")
    ok, missing = [], {}
    for n in names:
        f = FORMATS[n]
        needs = [f.package, "ai_edge_litert"] if n == "litert" else [f.package]
        if all(importlib.util.find_spec(p) is not None for p in needs):
            ok.append(n)
        else:
            missing[n] = f"{n}: not installed (pip install 'mnv2_vision[{f.extra}]')"
    return ok, missing
