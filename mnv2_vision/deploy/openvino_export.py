"""OpenVINO IR export (``model.xml`` + ``model.bin``), fp32 and int8 (NNCF post-training quantisation), with the
ONNX export's metadata in the IR's ``rt_info``.

The IR is converted from the ONNX export (``openvino.convert_model`` on the ``.onnx`` file), not from the PyTorch
module: both give PyTorch's outputs (within 1e-6 on SSDLite 320² and DeepLab 513²), but the ONNX graph keeps the
fixed input size of a detector (the PyTorch route leaves height and width dynamic), converted to the faster graph
in the same run (see docs/deploy.md, OpenVINO), and is the only route for the ``"nms"`` detection graph: ONNX
``NonMaxSuppression`` becomes OpenVINO's ``NonMaxSuppression`` and gives the same boxes. Weights stay fp32 in the
``.bin`` (``save_model`` would halve them to fp16 by default).

int8: ``nncf.quantize`` calibrated on training images, as the ONNX path (``deploy.quantize``): only the network
(nodes under ``/model/``) is quantised, so box decoding, NMS and the final upsampling stay float; weights per
output channel (MobileNet's depthwise filters differ in range channel by channel; the measured per-tensor
difference is in docs/deploy.md, OpenVINO); no SmoothQuant (``model_type`` left unset: it is for transformers).

Reading, compiling and running an IR is the runtime's (``mnv2_runtime.backends.openvino``): the export verifies its
file through the same code a user runs.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import openvino as ov
from mnv2_runtime.backends.openvino import compile_ir, ir_props, ir_run, read_ir, set_ir_props
from mnv2_runtime.metadata import decode_props

from ..files import atomic_write
from .onnx_export import read_onnx

__all__ = ["NETWORK_SCOPE", "HEAD_PATTERNS", "export_openvino", "save_ir", "read_metadata", "openvino_run",
           "quantize_openvino", "accuracy_control_layers"]

NETWORK_SCOPE = "/model/"  # the exporters' wrappers hold the network as ``self.model``
# The prediction layers: SSDLite's class and box heads, DeepLab's classifier (the pair's too).
HEAD_PATTERNS = (r"/model/head/(cls|box)_heads\..*", r"/model/(seg_)?classifier/.*")


def save_ir(model: Any, xml_path: str | Path) -> Path:
    """Write ``model`` to ``xml_path`` and its ``.bin`` beside it, weights as they are (no fp16 compression), each
    file complete or not there (``files.atomic_write``; the ``.bin`` first, so an ``.xml`` never lacks its weights).
    Returns ``xml_path``."""
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(model, str(staged), compress_to_fp16=False)
        for src, dst in ((staged.with_suffix(".bin"), xml_path.with_suffix(".bin")), (staged, xml_path)):
            with open(src, "rb") as f, atomic_write(dst) as out:
                shutil.copyfileobj(f, out, 1 << 20)
    return xml_path


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert the ONNX export ``onnx_path`` to the IR pair ``xml_path`` + ``.bin``, its ``metadata_props`` into the
    IR's ``rt_info``. Returns ``xml_path``."""
    model = ov.convert_model(str(onnx_path))
    set_ir_props(model, {p.key: p.value for p in read_onnx(onnx_path).metadata_props})
    return save_ir(model, xml_path)


def read_metadata(xml_path: str | Path) -> dict[str, Any]:
    """The metadata in an IR's ``rt_info``, decoded by ``metadata.decode_props`` (as ``onnx_export.read_metadata``);
    not checked against a task."""
    return decode_props(ir_props(read_ir(xml_path), str(xml_path)), str(xml_path))


def openvino_run(xml_path: str | Path, threads: int | None = 2,
                 precision: str = "f32") -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``run(images) -> {output name: array}`` of an IR (its metadata not checked: also for the evaluation-only
    exports that carry none), compiled for ``threads`` CPU threads in ``precision``."""
    return ir_run(compile_ir(read_ir(xml_path), threads, precision))


def _ignored_scope(network_scope: str | None, fp32_heads: bool, fp32_layers: Sequence[str] = ()):
    import nncf

    patterns = [f"(?!{re.escape(network_scope)}).*"] if network_scope else []
    if fp32_heads:
        patterns += list(HEAD_PATTERNS)
    if not patterns and not fp32_layers:
        return None
    return nncf.IgnoredScope(names=list(fp32_layers), patterns=patterns, validate=False)


def _quantized_layers(model: Any) -> set[str]:
    """The names of the operations of an NNCF-quantised ``model`` that read a quantised activation (an input from a
    ``FakeQuantize``): the layers that run in int8. ``ShapeOf`` reads only its input's shape (DeepLab's image
    pooling broadcasts to the feature map's shape), so it has no precision to keep."""
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() not in ("FakeQuantize", "ShapeOf")
            and any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())}


def accuracy_control_layers(fp32_xml: str | Path, images: Sequence[np.ndarray],
                            validate: Callable[[Callable[[np.ndarray], dict[str, np.ndarray]]], float],
                            max_drop: float, *, network_scope: str | None = NETWORK_SCOPE) -> list[str]:
    """The layers to keep in float so that int8 loses at most ``max_drop`` of the metric ``validate(run)`` (higher
    is better; ``run`` as ``openvino_run`` gives it): NNCF's ``quantize_with_accuracy_control`` quantises as
    ``quantize_openvino`` (defaults) and puts back to float, one group at a time, the layers whose int8 costs most
    of the metric. The names returned are the operations that read a quantised input after plain quantisation but
    not after the controlled one: the layers NNCF reverted and those that shared an input quantiser with them
    (SSDLite's class and box layers read the same feature maps). Pass them to
    ``quantize_openvino(fp32_layers=...)``: the same layers of another graph of the same network (the NMS export of
    a raw-mode detector) stay float there too. Slow: a validation pass per quantised layer to rank them, and one
    per step (NNCF compiles the models it validates with its own settings)."""
    import nncf

    model = read_ir(fp32_xml)
    data = nncf.Dataset([np.ascontiguousarray(i, dtype=np.float32) for i in images])
    nncf.set_log_level(logging.ERROR)
    kwargs = dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                  subset_size=len(images), ignored_scope=_ignored_scope(network_scope, False))
    plain = _quantized_layers(nncf.quantize(model, data, **kwargs))
    controlled = nncf.quantize_with_accuracy_control(
        # + 1: NNCF also computes the relative drop, dividing by the fp32 metric (0 for an untrained model); the
        # absolute drop it controls is the same
        model, data, nncf.Dataset([0]), lambda compiled, _items: (float(validate(ir_run(compiled))) + 1.0, None),
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, **kwargs)
    return sorted(plain - _quantized_layers(controlled))


def quantize_openvino(fp32_xml: str | Path, int8_xml: str | Path, images: Sequence[np.ndarray], *,
                      per_channel: bool = True, preset: str = "performance", fp32_heads: bool = False,
                      fp32_layers: Sequence[str] = (), fast_bias_correction: bool = True,
                      network_scope: str | None = NETWORK_SCOPE) -> Path:
    """Quantise the IR ``fp32_xml`` to ``int8_xml`` with NNCF, calibrated on ``images`` (preprocessed arrays, all of
    them: ``subset_size`` is their number). The metadata is carried over, with the settings under
    ``quantization``.

    Args:
        per_channel: per-output-channel weight scales; False: one scale per tensor.
        preset: ``"performance"`` (symmetric activations) or ``"mixed"`` (asymmetric activations, for inputs of
            either sign, as the ReLU6-free projection layers and the normalised image give).
        fp32_heads: leave the prediction layers (``HEAD_PATTERNS``) in float.
        fp32_layers: names of more operations to leave in float (``accuracy_control_layers``).
        fast_bias_correction: NNCF's fast bias correction (False: the slower full one).
        network_scope: quantise only nodes whose names start with this (post-processing stays float); ``None``:
            the whole graph.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    if not images:
        raise ValueError("calibration needs at least one image")
    model = read_ir(fp32_xml)
    props = dict(ir_props(model, str(fp32_xml)))
    nncf.set_log_level(logging.ERROR)  # its INFO lines name every statistics pass
    quantized = nncf.quantize(
        model, nncf.Dataset([np.ascontiguousarray(i, dtype=np.float32) for i in images]),
        preset=presets[preset], target_device=nncf.TargetDevice.CPU, subset_size=len(images),
        fast_bias_correction=fast_bias_correction,
        ignored_scope=_ignored_scope(network_scope, fp32_heads, fp32_layers),
        advanced_parameters=AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=per_channel)))
    props["quantization"] = (f"int8 NNCF post-training ({preset} preset, weights per-"
                             f"{'channel' if per_channel else 'tensor'}{', heads fp32' if fp32_heads else ''}"
                             f"{f', {len(fp32_layers)} layers fp32' if fp32_layers else ''}, "
                             f"calibrated on {len(images)} training images)")
    set_ir_props(quantized, props)
    return save_ir(quantized, int8_xml)
