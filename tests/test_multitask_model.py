"""The multi-task pair (``models/multitask.py``): one backbone pass, SSDLite's and DeepLab's outputs, each
stride-sharing option checked against the single-task models it claims to reproduce, weight tying, complexity,
fine-tuning."""
from __future__ import annotations

import pytest
import torch

from mnv2_vision.deploy.fuse import fuse_for_inference
from mnv2_vision.models import build_model
from mnv2_vision.models.deeplabv3 import DeepLabV3
from mnv2_vision.models.mobilenetv2 import MobileNetV2
from mnv2_vision.models.multitask import SSDLiteDeepLabV3
from mnv2_vision.perf.complexity import count_madds, count_params

ALPHA = 0.35
SIZE = (96, 128)  # not square: anchors and feature sizes must follow H and W apart


def _model(sharing: str, backbone: str = "v2", **kw) -> SSDLiteDeepLabV3:
    torch.manual_seed(0)
    return build_model(f"ssdlite320_deeplabv3_mobilenet_{backbone}", num_classes=5, seg_num_classes=4,
                       width_mult=ALPHA, sharing=sharing, **kw)


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("backbone", ["v2", "v1"])
@pytest.mark.parametrize("sharing", ["os32", "os16", "twin"])
def test_outputs_anchors_and_every_parameter_trains(sharing, backbone):
    model = _model(sharing, backbone).train()
    x = torch.randn(2, 3, *SIZE)
    out = model(x)
    anchors = model.anchors(SIZE)
    assert set(out) == {"cls_logits", "bbox_regression", "out"}
    assert out["cls_logits"].shape == (2, anchors.shape[0], 5)
    assert out["bbox_regression"].shape == (2, anchors.shape[0], 4)
    assert out["out"].shape == (2, 4, *SIZE)
    # 96×128: 6 levels of ⌈n/2⌉ halvings from stride 16: (6, 8), (3, 4), (2, 2), (1, 1), (1, 1), (1, 1)
    assert model.feature_sizes(SIZE) == [(6, 8), (3, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    (out["cls_logits"].sum() + out["bbox_regression"].sum() + out["out"].sum()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert not dead, dead[:5]
    model.eval()
    assert {k: v.shape for k, v in model(x).items()} == {k: v.shape for k, v in out.items()}  # same in eval


def _ssdlite_from(model: SSDLiteDeepLabV3):
    det = build_model("ssdlite320_mobilenet_v2", num_classes=5, width_mult=ALPHA).eval()
    sd = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("backbone", "extras", "head")}
    det.load_state_dict(sd)
    return det


def _deeplab_from(model: SSDLiteDeepLabV3, backbone_sd: dict):
    seg = DeepLabV3(MobileNetV2(num_classes=0, width_mult=ALPHA, output_stride=16, bn_eps=1e-3, bn_momentum=0.03),
                    num_classes=4, aspp="lite").eval()
    sd = {**{f"backbone.{k}": v for k, v in backbone_sd.items() if f"backbone.{k}" in seg.state_dict()},
          **{k.replace("seg_head.", "head.", 1): v for k, v in model.state_dict().items() if k.startswith("seg_head.")},
          **{k.replace("seg_classifier.", "classifier.", 1): v for k, v in model.state_dict().items()
             if k.startswith("seg_classifier.")}}
    seg.load_state_dict(sd)
    return seg


@torch.no_grad()
def test_os32_detection_is_exactly_ssdlite():
    model = _model("os32").eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, *SIZE)
    ref, got = _ssdlite_from(model)(x), model(x)
    for k in ("cls_logits", "bbox_regression"):
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


@torch.no_grad()
def test_os16_segmentation_is_exactly_deeplab():
    model = _model("os16").eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, *SIZE)
    backbone_sd = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.testing.assert_close(model(x)["out"], _deeplab_from(model, backbone_sd)(x)["out"], rtol=0, atol=0)


@torch.no_grad()
def test_twin_is_exactly_ssdlite_and_deeplab_on_shared_weights():
    model = _model("twin").eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, *SIZE)
    got = model(x)
    backbone_sd = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    det_ref, seg_ref = _ssdlite_from(model)(x), _deeplab_from(model, backbone_sd)(x)
    for k in ("cls_logits", "bbox_regression"):
        torch.testing.assert_close(got[k], det_ref[k], rtol=0, atol=0)
    torch.testing.assert_close(got["out"], seg_ref["out"], rtol=0, atol=0)


def test_twin_tail_shares_every_parameter_and_statistic():
    model = _model("twin")
    tail, body = model.seg_tail, model.backbone.features[len(model.backbone.features) - 1 - len(model.seg_tail):-1]
    tail_params = {id(p) for p in tail.parameters()}
    assert tail_params <= {id(p) for p in body.parameters()}  # no parameter of its own
    assert count_params(model) == count_params(_model("os32")) - count_params(_model("os32").seg_decoder) \
        + (model.seg_classifier.weight.numel() - _model("os32").seg_classifier.weight.numel())
    # A strided BatchNorm and its dilated twin are one module: one set of statistics, updated by both passes.
    bns = [m for m in tail.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(any(m is b for b in body.modules()) for m in bns)
    # Layout conversion and an optimiser step keep them tied.
    model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.randn(2, 3, *SIZE))
    (out["out"].square().mean() + out["cls_logits"].square().mean()).backward()
    opt.step()
    strided = [m for m in body.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    dilated = [m for m in tail.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(strided) == len(dilated) and all(a.weight is b.weight for a, b in zip(strided, dilated))
    assert any(a.dilation != b.dilation or a.stride != b.stride for a, b in zip(strided, dilated))


@pytest.mark.parametrize("sharing", ["os32", "twin"])
@torch.no_grad()
def test_fused_inference_matches(sharing):
    model = _model(sharing).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, *SIZE)
    ref, got = model(x), fuse_for_inference(model)(x)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)


def test_complexity_at_320_against_the_single_task_models():
    """The default pair adds under 1.3× SSDLite's MAdds (issue #16) and has far fewer parameters than both models."""
    pair = build_model("ssdlite320_deeplabv3_mobilenet_v2")
    det, seg = build_model("ssdlite320_mobilenet_v2"), build_model("deeplabv3_mobilenet_v2")
    assert pair.sharing == "os32"
    madds = count_madds(pair, (320, 320))
    assert madds <= 1.3 * count_madds(det, (320, 320))
    assert count_params(pair) < count_params(det) + count_params(seg) - 0.8 * count_params(seg.backbone)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="sharing must be one of"):
        _model("os8")
    body = MobileNetV2(num_classes=0, width_mult=ALPHA)
    with pytest.raises(ValueError, match="output stride 16"):
        SSDLiteDeepLabV3(body, 5, 4, sharing="os16")
    with pytest.raises(ValueError, match="dilated_backbone is required"):
        SSDLiteDeepLabV3(MobileNetV2(num_classes=0, width_mult=ALPHA), 5, 4, sharing="twin")


def test_fine_tunes_from_an_ssdlite_checkpoint_and_from_itself(tmp_path, capsys):
    det = build_model("ssdlite320_mobilenet_v2", num_classes=5, width_mult=ALPHA)
    _randomise_bn(det)
    path = tmp_path / "det.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in det.state_dict().items()}}, path)
    pair = build_model("ssdlite320_deeplabv3_mobilenet_v2", num_classes=5, seg_num_classes=4, width_mult=ALPHA,
                       pretrained=str(path))
    own = pair.state_dict()
    assert all(torch.equal(own[k], v) for k, v in det.state_dict().items())
    report = capsys.readouterr().out
    seg_keys = [k for k in own if k.startswith("seg_")]
    assert f"loaded {len(det.state_dict())} tensors" in report and f"skipped {len(seg_keys)}: seg_" in report
    # A trained pair to other classes: every tensor but the class convs is carried over.
    mt = tmp_path / "pair.pt"
    torch.save(pair.state_dict(), mt)
    again = build_model("ssdlite320_deeplabv3_mobilenet_v2", num_classes=3, seg_num_classes=6, width_mult=ALPHA,
                        pretrained=str(mt))
    fresh = {k for k, v in again.state_dict().items() if v.shape != own[k].shape}
    assert fresh and all(k.startswith(("head.cls_heads.", "seg_classifier.")) for k in fresh)
    assert all(torch.equal(v, own[k]) for k, v in again.state_dict().items() if k not in fresh)
