"""MobileNetV1: the paper's layer table, exact parameter counts and MAdds (design notes), taps and output stride."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnv2_vision.models import build_model, list_models
from mnv2_vision.models.mobilenetv1 import DEPTHWISE_SEPARABLE_SETTING, MobileNetV1
from mnv2_vision.perf.complexity import count_madds, count_params

# docs/design.md#ablations: 1000 classes, BN affine parameters counted, FC with bias
SPEC_PARAMS = {1.0: 4_231_976, 0.75: 2_585_560, 0.5: 1_331_592, 0.25: 470_072}
SPEC_MADDS_M_224 = {1.0: 568.7, 0.75: 325.4, 0.5: 149.5, 0.25: 41.0}
SPEC_MADDS_M_RES = {224: 568.7, 192: 418.1, 160: 290.7, 128: 186.4}


def test_registered_and_table_is_the_papers():
    assert "mobilenet_v1" in list_models()
    assert [c for c, _ in DEPTHWISE_SEPARABLE_SETTING] == [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512,
                                                           1024, 1024]
    assert [s for _, s in DEPTHWISE_SEPARABLE_SETTING] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


def test_param_count_by_hand_alpha_1():
    # stem 3·3·3·32 + BN; per layer: depthwise 9·c_in + BN(c_in), pointwise c_in·c_out + BN(c_out); FC 1024·1000 + 1000
    total, c_in = 27 * 32 + 2 * 32, 32
    for c, _ in DEPTHWISE_SEPARABLE_SETTING:
        total += 9 * c_in + 2 * c_in + c_in * c + 2 * c
        c_in = c
    total += 1024 * 1000 + 1000
    assert total == SPEC_PARAMS[1.0] == count_params(MobileNetV1())


@pytest.mark.parametrize("alpha", sorted(SPEC_PARAMS))
def test_param_counts_exact_and_madds_at_224(alpha):
    model = build_model("mobilenet_v1", width_mult=alpha)
    assert count_params(model) == SPEC_PARAMS[alpha]
    madds = count_madds(model, (224, 224)) / 1e6
    assert abs(madds - SPEC_MADDS_M_224[alpha]) / SPEC_MADDS_M_224[alpha] < 0.01


@pytest.mark.parametrize("size", [192, 160, 128])
def test_madds_at_resolutions(size):
    madds = count_madds(MobileNetV1(), (size, size)) / 1e6
    assert abs(madds - SPEC_MADDS_M_RES[size]) / SPEC_MADDS_M_RES[size] < 0.01


def test_block_structure():
    m = MobileNetV1()
    stem = m.features[0]
    assert stem[0].stride == (2, 2) and stem[0].out_channels == 32 and isinstance(stem[2], torch.nn.ReLU)
    b = m.features[2]  # Conv2d_2: depthwise 64 stride 2, pointwise 64→128
    assert b.depthwise[0].groups == 64 and b.depthwise[0].stride == (2, 2) and b.depthwise[0].kernel_size == (3, 3)
    assert b.pointwise[0].kernel_size == (1, 1) and b.pointwise[0].out_channels == 128
    assert isinstance(b.depthwise[2], torch.nn.ReLU) and isinstance(b.pointwise[2], torch.nn.ReLU)


def _real(model, h, w):
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 3, h, w), [f.name for f in model.feature_info])
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(224, 224), (300, 197)])
def test_declared_taps_match_real_shapes(output_stride, size):
    m = MobileNetV1(num_classes=0, output_stride=output_stride, width_mult=0.25).eval()
    real = _real(m, *size)
    for f in m.feature_info:
        assert real[f.name] == (f.channels, math.ceil(size[0] / f.stride), math.ceil(size[1] / f.stride)), f.name
    assert {f.stride for f in m.feature_info} == {s for s in (2, 4, 8, 16, 32) if s <= output_stride}


def test_ssdlite_and_deeplab_taps():
    m = MobileNetV1(num_classes=0).eval()
    assert m.DETECTION_TAPS == ("Conv2d_11_pointwise", "Conv2d_13_pointwise")
    r = _real(m, 320, 320)
    assert r["Conv2d_11_pointwise"] == (512, 20, 20) and r["Conv2d_13_pointwise"] == (1024, 10, 10)
    assert (m.tap("Conv2d_11_pointwise").stride, m.tap("Conv2d_13_pointwise").stride) == (16, 32)
    assert m.tap(m.SEGMENTATION_TAP).channels == 1024
    r16 = _real(MobileNetV1(num_classes=0, output_stride=16).eval(), 513, 513)
    assert r16[m.SEGMENTATION_TAP] == (1024, 33, 33)


def test_dilation_follows_tf_rule():
    m = MobileNetV1(num_classes=0, output_stride=8)
    dw = [blk.depthwise[0] for blk in list(m.features)[1:]]
    # Conv2d_6 (stride 2 → 1) keeps rate 1; Conv2d_7..11 rate 2; Conv2d_12 (stride removed) rate 2; Conv2d_13 rate 4
    assert [c.stride[0] for c in dw[5:]] == [1] * 8
    assert [c.dilation[0] for c in dw[5:]] == [1, 2, 2, 2, 2, 2, 2, 4]


def test_body_only_and_classifier():
    body = build_model("mobilenet_v1", num_classes=0, width_mult=0.5).eval()
    assert not hasattr(body, "classifier")
    with torch.no_grad():
        assert body(torch.randn(2, 3, 97, 131)).shape == (2, 512)
        assert build_model("mobilenet_v1", num_classes=7, width_mult=0.25).eval()(torch.randn(1, 3, 64, 64)).shape \
            == (1, 7)
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV1(output_stride=4)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("mobilenet_v1", pretrained="imagenet")


def test_weights_round_trip(tmp_path, capsys):
    torch.manual_seed(0)
    src = MobileNetV1(num_classes=10, width_mult=0.25)
    path = tmp_path / "v1.pth"
    torch.save(src.state_dict(), path)
    dst = build_model("mobilenet_v1", num_classes=5, width_mult=0.25, pretrained=str(path))  # new classifier
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    assert all(torch.equal(sd_src[k], sd_dst[k]) for k in sd_dst if not k.startswith("classifier."))
    assert sd_dst["classifier.1.weight"].shape == (5, 256)
    out = capsys.readouterr().out
    assert "skipped 2" in out and "classifier.1.weight: shape (10, 256) in file vs (5, 256) in model" in out


# ---------------------------------------------------------------------------------------------- V1 detector / segmenter
def _size_on_meta(name: str, size: int, **kwargs) -> tuple[int, float]:
    """(params, MAdds) counted on the meta device: the same flop counter without the arithmetic."""
    with torch.device("meta"):
        model = build_model(name, **kwargs).eval()
        with FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, size, size))
    return count_params(model), fc.get_total_flops() / 2


def test_ssdlite_v1_size_and_taps():
    params, madds = _size_on_meta("ssdlite320_mobilenet_v1", 320, num_classes=91)
    assert abs(params / 5.1e6 - 1) < 0.05 and abs(madds / 1.3e9 - 1) < 0.10  # paper Table 6
    assert abs(params - 5.25e6) / 5.25e6 < 0.005 and abs(madds - 1.32e9) / 1.32e9 < 0.005  # check figures
    model = build_model("ssdlite320_mobilenet_v1", num_classes=5, width_mult=0.25).eval()
    assert model.taps == ("Conv2d_11_pointwise", "Conv2d_13_pointwise") and model.tap_strides == (16, 32)
    assert model.feature_channels[:2] == (128, 256)  # 512·0.25, 1024·0.25, read from feature_info
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 320, 320))
    assert out["cls_logits"].shape == (1, 2034, 5) and out["bbox_regression"].shape == (1, 2034, 4)


def test_deeplabv3_v1_size():
    params, madds = _size_on_meta("deeplabv3_mobilenet_v1", 513, num_classes=21, aspp="full", output_stride=16)
    assert abs(params / 11.15e6 - 1) < 0.02 and abs(madds / 12.8e9 - 1) < 0.05
    model = build_model("deeplabv3_mobilenet_v1", num_classes=3, width_mult=0.25, aspp="lite").eval()
    assert model.head.branches[0][0].in_channels == 256 and model.output_stride == 16
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 65, 97))["out"].shape == (1, 3, 65, 97)


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v1", "deeplabv3_mobilenet_v1"])
def test_v1_classifier_checkpoint_loads_into_detector_and_segmenter(tmp_path, capsys, name):
    torch.manual_seed(0)
    classifier = MobileNetV1(num_classes=10, width_mult=0.25)
    path = tmp_path / "cls.ckpt"  # the layout tools/train_cls.py writes: Lightning's state_dict with "model." keys
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()},
                "hyper_parameters": {"config": {}}}, path)
    model = build_model(name, num_classes=3, width_mult=0.25, pretrained=str(path))
    out = capsys.readouterr().out
    own = model.backbone.state_dict()
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in own.items())
    assert f"loaded {len(own)} tensors" in out and "classifier.1.weight: not in model" in out
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model(name, num_classes=3, pretrained="imagenet")
