"""MobileNetV2: exact parameter counts (design notes), MAdds, torchvision weight compatibility, taps and strides."""
import math

import pytest
import torch
import torchvision

from mnv2_vision.models import build_model, list_models
from mnv2_vision.models.mobilenetv2 import INVERTED_RESIDUAL_SETTING, MobileNetV2
from mnv2_vision.perf.complexity import count_madds, count_params

SPEC_PARAMS = {0.35: 1_677_128, 0.5: 1_968_680, 0.75: 2_636_424, 1.0: 3_504_872, 1.4: 6_108_776}
SPEC_MADDS_M = {0.35: 59, 0.5: 97, 0.75: 209, 1.0: 301, 1.4: 582}


def test_registry():
    assert "mobilenet_v2" in list_models()
    with pytest.raises(KeyError, match="mobilenet_v2"):
        build_model("mobilenet_v3")


def test_table_is_the_papers():
    assert INVERTED_RESIDUAL_SETTING == (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@pytest.mark.parametrize("alpha", sorted(SPEC_PARAMS))
def test_param_counts_exact(alpha):
    assert count_params(build_model("mobilenet_v2", width_mult=alpha)) == SPEC_PARAMS[alpha]


@pytest.mark.parametrize("alpha", [0.35, 1.0, 1.4])
def test_madds(alpha):
    madds = count_madds(build_model("mobilenet_v2", width_mult=alpha), (224, 224))
    assert abs(madds / 1e6 - SPEC_MADDS_M[alpha]) / SPEC_MADDS_M[alpha] < 0.01
    if alpha == 1.0:
        assert abs(madds - 300e6) / 300e6 < 0.01  # the paper's 300 M


def test_block_structure():
    m = MobileNetV2()
    b = m.features[2]  # first t=6 block: expand 16→96, dw stride 2, project 96→24, linear
    conv = list(b.conv)
    assert conv[0][0].kernel_size == (1, 1) and conv[0][0].out_channels == 96
    assert isinstance(conv[0][2], torch.nn.ReLU6)
    assert conv[1][0].groups == 96 and conv[1][0].stride == (2, 2)
    assert conv[2].out_channels == 24 and isinstance(conv[3], torch.nn.BatchNorm2d)
    assert len(conv) == 4  # no activation after the projection: the linear bottleneck
    assert not b.use_res_connect and m.features[3].use_res_connect
    assert not m.features[1].has_expand  # t = 1: no expansion conv


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_torchvision_weights_give_identical_logits(tmp_path, alpha):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(width_mult=alpha).eval()
    # make BN statistics non-trivial so a mis-mapped key would show
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = build_model("mobilenet_v2", width_mult=alpha, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), tv(x), atol=1e-5, rtol=0)


def test_imagenet_goes_through_torchvision_weights_api(monkeypatch):
    torch.manual_seed(1)
    sd = torchvision.models.mobilenet_v2().state_dict()
    seen = {}

    def fake_load(url, *args, **kwargs):
        seen["url"] = url
        return sd

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_load)
    m = build_model("mobilenet_v2", pretrained="imagenet")
    assert seen["url"] == torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    assert torch.equal(m.features[5].conv[0][0].weight, sd["features.5.conv.0.0.weight"])
    with pytest.raises(ValueError, match="width_mult=1.0"):
        build_model("mobilenet_v2", width_mult=0.5, pretrained="imagenet")


def test_bad_weights_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("mobilenet_v2", pretrained=str(tmp_path / "nope.pth"))
    path = tmp_path / "half.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), path)
    with pytest.raises(RuntimeError, match=r"features\.0\.0\.weight: shape"):
        build_model("mobilenet_v2", pretrained=str(path))


def test_fine_tune_classifier_is_reported_not_loaded(tmp_path, capsys):
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    m = build_model("mobilenet_v2", num_classes=10, pretrained=str(path))
    out = capsys.readouterr().out
    assert "skipped 2" in out and "classifier.1.weight" in out
    assert torch.equal(m.features[18][0].weight, tv.features[18][0].weight)


def test_backbone_drops_classifier(tmp_path):
    from mnv2_vision.models.weights import load_pretrained

    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    body = MobileNetV2(num_classes=0)
    report = load_pretrained(body, path, optional=("classifier.",))
    assert len(report.loaded) == len(body.state_dict())
    assert sorted(s.split(":")[0] for s in report.skipped) == ["classifier.1.bias", "classifier.1.weight"]


def _real_sizes(model, h, w):
    x = torch.zeros(1, 3, h, w)
    with torch.no_grad():
        feats = model.forward_features(x, [f.name for f in model.feature_info])
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(224, 224), (320, 320), (513, 513), (300, 197)])
def test_declared_taps_match_real_shapes(output_stride, size):
    m = MobileNetV2(num_classes=0, output_stride=output_stride).eval()
    real = _real_sizes(m, *size)
    strides = set()
    for f in m.feature_info:
        c, h, w = real[f.name]
        assert c == f.channels, f.name
        assert (h, w) == (math.ceil(size[0] / f.stride), math.ceil(size[1] / f.stride)), f.name
        assert f.stride <= output_stride
        strides.add(f.stride)
    assert strides == {s for s in (2, 4, 8, 16, 32) if s <= output_stride}  # at least one tap per stride


def test_named_taps_at_paper_sizes():
    m = MobileNetV2(num_classes=0).eval()
    r = _real_sizes(m, 320, 320)
    assert r["layer15_expand"] == (576, 20, 20) and r["layer19"] == (1280, 10, 10)
    assert m.DETECTION_TAPS == ("layer15_expand", "layer19") and m.tap(m.SEGMENTATION_TAP).channels == 320
    for os_, side in ((16, 33), (8, 65)):
        r = _real_sizes(MobileNetV2(num_classes=0, output_stride=os_).eval(), 513, 513)
        assert r["layer18"] == (320, side, side)


def test_dilation_follows_tf_deeplab_rule():
    m = MobileNetV2(num_classes=0, output_stride=16)
    dw = [blk.conv[1 if blk.has_expand else 0][0] for blk in list(m.features)[1:18]]
    # blocks 14 (index 13 here) loses its stride and keeps rate 1; the following depthwise convs use rate 2
    assert [c.stride[0] for c in dw[13:]] == [1, 1, 1, 1] and [c.dilation[0] for c in dw[13:]] == [1, 2, 2, 2]


def test_forward_features_returns_only_requested_and_matches_full_forward():
    m = MobileNetV2(num_classes=0).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        f = m.forward_features(x, ["layer19", "layer7"])
        assert list(f) == ["layer19", "layer7"]
        assert torch.allclose(f["layer19"], m.features(x))


def test_any_resolution_and_errors():
    m = build_model("mobilenet_v2", num_classes=5).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 97, 131)).shape == (1, 5)
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV2(output_stride=4)
