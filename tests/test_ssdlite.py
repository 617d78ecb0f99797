"""SSDLite model contract: size and cost (paper Table 6 / design notes), shapes, gradients, taps, backbone weights."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnv2_vision.models import build_model, list_models
from mnv2_vision.models.ssdlite import SSDLite, SSDLiteHead, _ssdlite
from mnv2_vision.ops.boxes import BoxCoder
from mnv2_vision.ops.losses import ssd_multibox_loss


@pytest.fixture(scope="module")
def model() -> SSDLite:
    torch.manual_seed(0)
    return build_model("ssdlite320_mobilenet_v2", num_classes=91)


def test_registered():
    assert "ssdlite320_mobilenet_v2" in list_models()


def _forward_recording_head_inputs(model: SSDLite, x: torch.Tensor) -> tuple[dict, list]:
    seen: list[tuple[int, int]] = []
    hooks = [h.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
             for h in model.head.cls_heads]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def test_params_madds_shapes_at_320(model):
    # Paper Table 6: 4.3 M params, 0.8 B MAdds. Spec §2's faithful re-build: 4.50 M / 0.804 B (BN affine counted).
    params = sum(p.numel() for p in model.parameters())
    assert params == 4_500_543
    assert abs(params / 4.3e6 - 1) <= 0.05
    with FlopCounterMode(display=False) as counter:
        out, seen = _forward_recording_head_inputs(model.eval(), torch.zeros(1, 3, 320, 320))
    madds = counter.get_total_flops() / 2
    assert abs(madds / 0.8e9 - 1) <= 0.10, madds
    assert madds == pytest.approx(0.804e9, rel=0.002)
    assert out["cls_logits"].shape == (1, 2034, 91) and out["bbox_regression"].shape == (1, 2034, 4)
    assert seen == model.feature_sizes((320, 320)) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert model.anchors((320, 320)).shape == (2034, 4)
    assert model.anchors((320, 320)) is model.anchors((320, 320))  # cached


def test_taps_from_feature_info(model):
    # 576 = the expansion output of layer 15 (96·6), stride 16; 1280 = the last 1×1 conv, stride 32.
    assert model.taps == ("layer15_expand", "layer19")
    assert model.tap_strides == (16, 32)
    assert model.feature_channels == (576, 1280, 512, 256, 256, 128)
    assert model.num_anchors == [3, 6, 6, 6, 6, 6]


@pytest.mark.parametrize("size, expected", [
    ((300, 300), [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]),  # 1917 anchors
    ((256, 384), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]),
])
def test_feature_sizes_equal_real_shapes_and_anchor_count(model, size, expected):
    out, seen = _forward_recording_head_inputs(model.eval(), torch.zeros(1, 3, *size))
    assert model.feature_sizes(size) == seen == expected
    assert out["cls_logits"].shape[1] == model.anchors(size).shape[0]


def test_same_outputs_structure_in_train_and_eval(model):
    x = torch.randn(2, 3, 160, 160)  # levels 10, 5, 3, 2, 1, 1 → 300 + 150 + 54 + 24 + 6 + 6 = 540 anchors
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    assert set(train_out) == set(eval_out) == {"cls_logits", "bbox_regression"}
    assert train_out["cls_logits"].shape == eval_out["cls_logits"].shape == (2, 540, 91)
    assert train_out["bbox_regression"].shape == eval_out["bbox_regression"].shape == (2, 540, 4)
    assert not torch.allclose(train_out["cls_logits"], eval_out["cls_logits"])  # BN batch vs running statistics


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    targets = [{"boxes": torch.tensor([[5.0, 10.0, 35.0, 45.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[0.0, 0.0, 64.0, 64.0], [20.0, 20.0, 30.0, 30.0]]),
                "labels": torch.tensor([1, 4])}]
    loss = ssd_multibox_loss(out["cls_logits"], out["bbox_regression"], model.anchors((64, 64)), targets,
                             BoxCoder())["loss"]
    # The loss only sees a few anchors; add a small term on every output so each head level is reached.
    (loss + 1e-3 * sum(o.square().mean() for o in out.values())).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_head_flattening_matches_anchor_order():
    # Head channel a·K + k at cell (y, x) of level l must land in row offset_l + (y·w + x)·A + a, column k: the
    # order of ops.anchors. The prediction convs are replaced by identities so the codes pass through unchanged.
    A, K = 3, 4
    head = SSDLiteHead([A * K, A * K], [A, A], K)
    head.cls_heads = nn.ModuleList([nn.Identity(), nn.Identity()])
    head.box_heads = nn.ModuleList([nn.Identity(), nn.Identity()])
    levels = [(2, 5), (3, 2)]
    features = []
    for level, (h, w) in enumerate(levels):
        a, k, y, x = torch.meshgrid(torch.arange(A), torch.arange(K), torch.arange(h), torch.arange(w), indexing="ij")
        code = 10000 * level + 1000 * a + 100 * k + 10 * y + x
        features.append(code.reshape(1, A * K, h, w).float().repeat(2, 1, 1, 1))
    for channels_last in (False, True):
        feats = [f.contiguous(memory_format=torch.channels_last) if channels_last else f for f in features]
        cls, box = head(feats)
        assert cls.shape == box.shape == (2, (10 + 6) * A, K)
        cells = [(0, 0, 0, 0, 0), (0, 1, 3, 2, 1), (0, 0, 4, 1, 3), (1, 2, 1, 2, 3), (1, 1, 0, 0, 2)]
        for level, yy, xx, aa, kk in cells:
            h, w = levels[level]
            row = (10 * A if level else 0) + (yy * w + xx) * A + aa
            assert cls[1, row, kk].item() == 10000 * level + 1000 * aa + 100 * kk + 10 * yy + xx


def test_backbone_loads_torchvision_weights(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    reference = mobilenet_v2()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("ssdlite320_mobilenet_v2", num_classes=91, pretrained=str(path))
    ours = model.backbone.state_dict()
    theirs = {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_width_mult_and_custom_backbone_errors():
    small = build_model("ssdlite320_mobilenet_v2", num_classes=21, width_mult=0.5)
    assert small.feature_channels == (288, 1280, 256, 128, 128, 64)  # 48·6 expansion; 1280 kept for α < 1
    with torch.no_grad():
        assert small.eval()(torch.zeros(1, 3, 96, 96))["cls_logits"].shape[-1] == 21

    class NoTaps(nn.Module):
        feature_info = ()

    with pytest.raises(ValueError, match="DETECTION_TAPS"):
        _ssdlite(NoTaps(), 91)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("ssdlite320_mobilenet_v2", num_classes=1)
