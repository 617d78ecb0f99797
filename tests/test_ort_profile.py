"""ONNX Runtime kernel-time breakdown: convolution kinds and their multiply-adds, checked by hand."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mnv2_vision.perf.ort_profile import CONV_KINDS, conv_kind, kernel_breakdown


def test_conv_kind_from_weight_shape():
    assert conv_kind([24, 96, 1, 1]) == "conv 1×1"
    assert conv_kind([546, 1, 3, 3]) == "conv depthwise"
    assert conv_kind([32, 3, 3, 3]) == "conv other"
    assert conv_kind([1, 1, 1, 1]) == "conv 1×1"


def test_kernel_breakdown_counts_each_conv_kind(tmp_path):
    # Channel counts are multiples of 16 so ONNX Runtime's NCHWc blocking pads nothing: the counts are exact.
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6(),       # 16·16 · 16 · 3·3·3 = 110,592
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),     # 16·16 · 16 · 3·3   =  36,864
        nn.Conv2d(16, 32, 1),                                       # 16·16 · 32 · 16    = 131,072
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)).eval()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["out"])
    rows = {r["part"]: r for r in kernel_breakdown(path, {"images": np.random.rand(1, 3, 32, 32).astype(np.float32)},
                                                   runs=3, warmup=1)}
    assert [p for p in rows if p in CONV_KINDS] == list(CONV_KINDS)
    assert rows["conv other"]["madds"] == 110_592
    assert rows["conv depthwise"]["madds"] == 36_864
    assert rows["conv 1×1"]["madds"] == 131_072
    assert all(rows[k]["nodes"] == 1 for k in CONV_KINDS)
    # The bilinear resize (an NCHWc "Upsample" kernel once optimised) is listed by itself, without MAdds.
    others = [p for p in rows if p not in CONV_KINDS]
    assert {"Resize", "Upsample"} & set(others)
    assert all(rows[p]["madds"] is None and rows[p]["gmadds_per_s"] is None for p in others)
    for k in CONV_KINDS:
        assert rows[k]["ms"] > 0 and rows[k]["gmadds_per_s"] == pytest.approx(rows[k]["madds"] / rows[k]["ms"] / 1e6)
    with pytest.raises(ValueError, match="runs"):
        kernel_breakdown(path, {"images": np.zeros((1, 3, 32, 32), np.float32)}, runs=0)
