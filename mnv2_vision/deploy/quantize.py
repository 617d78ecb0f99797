"""Post-training static int8 quantisation with ONNX Runtime, calibrated on training images.

Weights are quantised per output channel (symmetric int8) and activations per tensor (uint8 / int8 from the ranges
seen on the calibration images). Per-tensor weight scales are what makes MobileNet int8 collapse (users.md §2.7.4,
intel/neural-compressor#84): a depthwise layer's channels differ in range by orders of magnitude, so one scale
rounds most of them to a handful of levels. Only the network's convolutions and matrix products, with the adds and
concatenations between them, are quantised, and only inside the network: post-processing (softmax, box decoding,
NMS) and the final upsampling of the segmentation logits stay in float.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from ..files import atomic_write

__all__ = ["QUANT_OP_TYPES", "detection_calibration", "segmentation_calibration", "ImageCalibrationReader",
           "quantize_int8"]

QUANT_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Add", "Concat", "GlobalAveragePool", "Clip", "Relu")


def detection_calibration(root: str | Path, split: str, image_size: int, mean: Sequence[float],
                          std: Sequence[float], num_images: int, fmt: str = "coco") -> list[np.ndarray]:
    """The first ``num_images`` images (sorted ids) of ``split`` of a detection dataset (COCO layout, or another
    ``fmt`` of ``data/formats``), preprocessed by the evaluation pipeline (resize to ``image_size``, normalise): a
    list of ``(1, 3, S, S)`` float32 arrays."""
    from ..data.coco import CocoDetection
    from ..data.detection.transforms import detection_transform
    from ..data.formats import dataset_kwargs

    dataset = CocoDetection(root, split, detection_transform("none", False, image_size, mean, std), subset=num_images,
                            **dataset_kwargs(fmt, root, split))
    return [dataset[i][0].unsqueeze(0).numpy() for i in range(min(num_images, len(dataset)))]


def segmentation_calibration(root: str | Path, split: str, mean: Sequence[float], std: Sequence[float],
                             num_images: int, num_classes: int) -> list[np.ndarray]:
    """The first ``num_images`` images of a VOC-layout ``split`` normalised at their own size (the evaluation
    pipeline): a list of ``(1, 3, H, W)`` float32 arrays."""
    from ..data.segmentation.transforms import SegEvalTransform
    from ..data.voc import VOCSegmentation

    dataset = VOCSegmentation(root, split, SegEvalTransform(mean, std), num_classes=num_classes, subset=num_images)
    return [dataset[i]["image"].unsqueeze(0).numpy() for i in range(min(num_images, len(dataset)))]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images, one per call, to ONNX Runtime's calibrator as ``{input_name: array}``."""

    def __init__(self, images: Iterable[np.ndarray], input_name: str = "images") -> None:
        self.images = [np.ascontiguousarray(i, dtype=np.float32) for i in images]
        if not self.images:
            raise ValueError("calibration needs at least one image")
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(self.images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._it, None)
        return None if image is None else {self.input_name: image}

    def rewind(self) -> None:
        self._it = iter(self.images)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, images: Sequence[np.ndarray], *,
                  per_channel: bool = True, quant_format: str = "qdq", calibrate_method: str = "minmax",
                  op_types: Sequence[str] = QUANT_OP_TYPES, network_scope: str | None = "/model/") -> Path:
    """Quantise the ONNX model at ``fp32_path`` to ``int8_path``, calibrated on ``images`` (preprocessed arrays).

    The model is first pre-processed (shape inference and graph optimisation, ORT's recommended step). The fp32
    file's ``metadata_props`` are carried over, with the quantisation settings added.

    Args:
        per_channel: per-output-channel weight scales (keep True for MobileNets).
        quant_format: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs, fused by ORT into int8 kernels) or
            ``"qoperator"`` (QLinearConv & co. written out).
        calibrate_method: ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        op_types: ONNX op types to quantise.
        network_scope: quantise only nodes whose names start with this (the exporters' wrappers hold the network
            as ``self.model``, so its nodes are ``/model/...``): box decoding, its adds and concatenations, and
            NMS stay float. ``None`` (or no such node) quantises the whole graph.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}.get(quant_format)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}.get(calibrate_method)
    if fmt is None:
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    if method is None:
        raise ValueError(f"calibrate_method must be minmax, percentile or entropy, got {calibrate_method!r}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    source = onnx.load(str(fp32_path))
    # The quantiser logs every skipped node at WARNING on the root logger: quiet it for this call only (a permanent
    # change would hide every other library's warnings, ours included, for the rest of the process).
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            try:
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
            except Exception:  # symbolic shape inference cannot follow every graph (e.g. NMS's data-dependent sizes)
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            names = [n.name for n in onnx.load(str(prepared)).graph.node]
            scoped = [n for n in names if network_scope and n.startswith(network_scope)]
            quantized = Path(tmp) / "int8.onnx"
            quantize_static(
                str(prepared), str(quantized), ImageCalibrationReader(images), nodes_to_quantize=scoped or None,
                quant_format=fmt, op_types_to_quantize=list(op_types), per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                # Symmetric weights let the int8 kernels skip the weight zero-point term; VNNI needs no 7-bit range.
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
            model = onnx.load(str(quantized))
    finally:
        root.setLevel(root_level)
    props = {p.key: p.value for p in source.metadata_props}
    props.update(quantization=f"int8 static ({quant_format}, weights per-{'channel' if per_channel else 'tensor'}, "
                              f"{calibrate_method} calibration on {len(images)} training images)")
    onnx.helper.set_model_props(model, props)
    with atomic_write(int8_path) as f:
        onnx.save(model, f)
    return int8_path

