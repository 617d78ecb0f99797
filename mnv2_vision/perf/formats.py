"""The export formats ``tools/benchmark.py --runtimes`` times: a registry of ``RuntimeFormat`` entries, each an export
function (PyTorch export wrapper → file, fp32 or int8) and a loader (file → ``run(images) -> {output name: array}``).

The entries give every format's file the ONNX export's inputs and output names (``onnx_export._io_names``: raw
heads ``cls_logits`` / ``bbox_regression`` / ``anchors``, segmentation ``logits``), so each runtime is timed on the
same raw outputs and its post-processing separately. ONNX Runtime's entry is the shipped export
(``onnx_export.export_onnx``, ``quantize.quantize_int8``). The OpenVINO and LiteRT entries call the converters
directly (``openvino.convert_model`` on the ONNX file + NNCF; ``litert_torch.convert`` + its PT2E quantizer), with
the settings of the ``--format openvino`` / ``--format litert`` exports; when those exports are in the package,
their functions replace these bodies (``deploy.openvino_export``, ``deploy.litert_export``, and the runtime's
backends as loaders). A format whose package is missing is skipped with the extra that provides it.
"""
from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..deploy.onnx_export import _io_names, export_onnx, ort_session
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
    session = ort_session(path, threads)
    names = [o.name for o in session.get_outputs()]
    return lambda images: dict(zip(names, session.run(None, {"images": images})))


# ---------------------------------------------------------------------------------------------- OpenVINO
def _openvino_export(wrapper: nn.Module, stem: Path, size: tuple[int, int],
                     calibration: Sequence[np.ndarray] | None) -> Path:
    """The IR converted from the ONNX export (fixed input size), weights kept fp32 in the ``.bin``; int8 by NNCF
    post-training quantisation of the network's nodes only, weights per output channel, symmetric activations."""
    import openvino as ov

    model = ov.convert_model(str(export_onnx(wrapper, stem.with_name(stem.name + "_src.onnx"), size, {})))
    if calibration is not None:
        import nncf

        nncf.set_log_level(logging.ERROR)
        model = nncf.quantize(model, nncf.Dataset([np.ascontiguousarray(c, dtype=np.float32) for c in calibration]),
                              preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                              subset_size=len(calibration),
                              ignored_scope=nncf.IgnoredScope(patterns=[f"(?!{re.escape(NETWORK_SCOPE)}).*"],
                                                              validate=False))
    path = stem.with_suffix(".xml")
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def _openvino_load(path: Path, threads: int) -> Run:
    """Compiled for the CPU with ``threads`` threads, one stream, latency hint, and f32 inference precision: on a CPU
    with bf16 support OpenVINO may otherwise run an fp32 model in bf16."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    outputs = [(o.get_any_name(), o) for o in compiled.outputs]

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        request.infer({0: images})
        return {name: request.get_tensor(o).data for name, o in outputs}
    return run


# ---------------------------------------------------------------------------------------------- LiteRT
class _NamedNHWC(nn.Module):
    """An export wrapper with a channels-last (N, H, W, 3) input and named outputs, 4-D ones channels-last: the
    layout LiteRT computes in, so the converted graph holds no transposes of its own."""

    def __init__(self, wrapper: nn.Module) -> None:
        super().__init__()
        self.wrapper, self.names = wrapper, _io_names(wrapper)[0]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        out = self.wrapper(images.permute(0, 3, 1, 2))
        out = out if isinstance(out, tuple) else (out,)
        return {n: (o.permute(0, 2, 3, 1) if o.dim() == 4 else o) for n, o in zip(self.names, out)}


def _litert_export(wrapper: nn.Module, stem: Path, size: tuple[int, int],
                   calibration: Sequence[np.ndarray] | None) -> Path:
    """``litert_torch.convert`` at ``size``, batch 1; int8 through its PT2E quantizer (weights symmetric per output
    channel, activations per tensor, calibrated on ``calibration``)."""
    import litert_torch

    module = _NamedNHWC(wrapper.eval())
    sample = {"images": torch.randn(1, int(size[0]), int(size[1]), 3)}
    quant_config = None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export's deprecation chatter
        if calibration is not None:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            graph = prepare_pt2e(torch.export.export(module, (), sample).module(), quantizer)
            for image in calibration:
                graph(images=torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(0, 2, 3, 1).contiguous())
            module, quant_config = convert_pt2e(graph, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)
        for name in ("litert_torch", "absl"):  # their INFO lines name every conversion pass
            logging.getLogger(name).setLevel(logging.WARNING)
        converted = litert_torch.convert(module, (), sample, quant_config=quant_config)
    path = stem.with_suffix(".tflite")
    path.write_bytes(bytes(converted.model_content()))
    return path


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
