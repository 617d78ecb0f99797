"""DeepLabv3-MobileNetV2: paper Table 7 sizes, OS 8/16 geometry, any input size, batch of one, weights loading."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from mnv2_vision.models import build_model, list_models
from mnv2_vision.models.deeplabv3 import ASPP, DeepLabV3, _PoolingBatchNorm, deeplabv3_mobilenet_v2
from mnv2_vision.models.mobilenetv2 import MobileNetV2


def _size_on_meta(**kwargs) -> tuple[int, int]:
    """(params, MAdds) at 513×513 counted on the meta device: the same flop counter without the arithmetic."""
    with torch.device("meta"):
        model = deeplabv3_mobilenet_v2(num_classes=21, **kwargs).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 513, 513))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


@pytest.mark.parametrize("aspp, params_m, madds_b, tol", [
    ("lite", 2.11, 2.75, 0.10),  # paper Table 7: MNet V2*, OS 16, no ASPP
    ("full", 4.52, 5.8, 0.10),  # paper Table 7: MNet V2*, OS 16, ASPP
])
def test_paper_table7_sizes(aspp, params_m, madds_b, tol):
    params, madds = _size_on_meta(aspp=aspp, output_stride=16)
    assert abs(params / 1e6 - params_m) / params_m < 0.05, params
    assert abs(madds / 1e9 - madds_b) / madds_b < tol, madds


def test_exact_counts_hand_computed():
    # Body up to layer 18 = torchvision's 3,504,872 minus its classifier (1280·1000 + 1000) and its 1280 conv
    # (320·1280 + 2·1280). Lite head: 1×1 branch and pooling branch (320·256 + 2·256 each), projection
    # (512·256 + 2·256), classifier (256·21 + 21). Full head adds three 3×3 branches and widens the projection.
    body = 3_504_872 - (1280 * 1000 + 1000) - (320 * 1280 + 2 * 1280)
    lite = body + 2 * (320 * 256 + 512) + (512 * 256 + 512) + (256 * 21 + 21)
    full = lite + 3 * (320 * 256 * 9 + 512) + (1280 - 512) * 256
    assert _size_on_meta(aspp="lite")[0] == lite == 2_113_557
    assert _size_on_meta(aspp="full")[0] == full == 4_523_541


@pytest.mark.parametrize("output_stride, head_size, rates", [(16, 33, (6, 12, 18)), (8, 65, (12, 24, 36))])
def test_output_stride_geometry(output_stride, head_size, rates):
    model = deeplabv3_mobilenet_v2(aspp="full", output_stride=output_stride)
    assert model.head.atrous_rates == rates
    assert [b[0].dilation for b in model.head.branches[1:4]] == [(r, r) for r in rates]
    with torch.device("meta"):
        model = deeplabv3_mobilenet_v2(aspp="full", output_stride=output_stride).eval()
        seen = {}
        model.head.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].shape))
        out = model(torch.empty(1, 3, 513, 513))["out"]
    assert seen["x"] == (1, 320, head_size, head_size)  # the 320-channel second-to-last map ("MNet V2*")
    assert out.shape == (1, 21, 513, 513)


def test_backbone_cut_after_its_segmentation_tap():
    model = deeplabv3_mobilenet_v2()
    assert model.tap_name == MobileNetV2.SEGMENTATION_TAP
    tap = model.backbone.tap(model.tap_name)
    assert len(model.backbone.features) == tap.module + 1 == 18  # the 1280-wide 1×1 conv is gone
    assert all(f.module <= tap.module for f in model.backbone.feature_info)
    assert isinstance(model.head, ASPP) and model.head.branches[0][0].in_channels == tap.channels == 320


@pytest.mark.parametrize("output_stride", [8, 16])
def test_any_input_size(output_stride):
    model = deeplabv3_mobilenet_v2(num_classes=5, output_stride=output_stride).eval()
    for size in [(97, 131), (64, 64), (33, 50), (17, 9)]:  # none a multiple of the stride but 64
        with torch.no_grad():
            out = model(torch.randn(2, 3, *size))
        assert set(out) == {"out"} and out["out"].shape == (2, 5, *size)
        assert torch.isfinite(out["out"]).all()


@pytest.mark.parametrize("aspp", ["lite", "full"])
def test_trains_on_a_batch_of_one_and_every_parameter_learns(aspp):
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v2(num_classes=4, aspp=aspp).train()
    pool_bn = model.head.branches[-1][2]
    before = pool_bn.running_mean.clone()
    out = model(torch.randn(1, 3, 75, 61))  # PyTorch's plain BatchNorm raises here ("Expected more than 1 value")
    assert set(out) == {"out"} and out["out"].shape == (1, 4, 75, 61)
    F.cross_entropy(out["out"], torch.randint(0, 4, (1, 75, 61))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert torch.equal(pool_bn.running_mean, before)  # a lone sample does not move the pooling statistics


def test_pooling_batchnorm_matches_batchnorm2d_and_falls_back_on_one_sample():
    torch.manual_seed(0)
    ours, ref = _PoolingBatchNorm(8), torch.nn.BatchNorm2d(8)
    for bn in (ours, ref):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 8, 1, 1)
    assert torch.allclose(ours.train()(x), ref.train()(x), atol=1e-6)
    assert torch.allclose(ours.running_mean, ref.running_mean)
    one = torch.randn(1, 8, 1, 1)
    expected = (one - ours.running_mean.view(1, -1, 1, 1)) / torch.sqrt(ours.running_var.view(1, -1, 1, 1) + ours.eps)
    expected = expected * ours.weight.view(1, -1, 1, 1) + ours.bias.view(1, -1, 1, 1)
    assert torch.allclose(ours.train()(one), expected, atol=1e-6)


def test_same_output_contract_in_train_and_eval():
    model = deeplabv3_mobilenet_v2(num_classes=3)
    x = torch.randn(2, 3, 48, 40)
    train_out = model.train()(x)
    with torch.no_grad():
        eval_out = model.eval()(x)
    assert set(train_out) == set(eval_out) == {"out"} and train_out["out"].shape == eval_out["out"].shape


@pytest.mark.parametrize("kwargs, match", [
    ({"aspp": "big"}, "aspp must be one of"),
    ({"output_stride": 32}, "output_stride must be 8 or 16"),
    ({"output_stride": 4}, "output_stride must be 8 or 16"),
])
def test_rejects_unsupported_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deeplabv3_mobilenet_v2(**kwargs)


def test_registered_and_built_by_name():
    assert "deeplabv3_mobilenet_v2" in list_models()
    model = build_model("deeplabv3_mobilenet_v2", num_classes=7, width_mult=0.5)
    assert isinstance(model, DeepLabV3) and model.classifier.out_channels == 7
    assert model.head.branches[0][0].in_channels == 160  # 320 · 0.5, read from feature_info


def test_pretrained_backbone_from_a_classifier_file(tmp_path):
    torch.manual_seed(0)
    classifier = MobileNetV2(num_classes=1000)
    path = tmp_path / "mnv2.pth"
    torch.save(classifier.state_dict(), path)
    model = deeplabv3_mobilenet_v2(pretrained=str(path))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    with pytest.raises(FileNotFoundError):
        deeplabv3_mobilenet_v2(pretrained=str(tmp_path / "missing.pth"))


def test_seg_loss_ignores_255_and_never_returns_nan():
    from mnv2_vision.ops.losses import seg_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6))
    target[:, 0] = 255
    keep = target != 255
    # Hand reduction: mean over the kept pixels of -log softmax at the target class.
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[keep]
    expected = -logp.gather(1, target[keep][:, None]).mean()
    assert torch.allclose(seg_loss(logits, target), expected, atol=1e-6)
    all_ignored = seg_loss(logits, torch.full_like(target, 255))
    assert all_ignored.item() == 0.0
    all_ignored.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
    with pytest.raises(ValueError, match="0..3"):
        seg_loss(logits, torch.full_like(target, 9))


def test_logits_before_upsampling_are_the_heads_stride_and_upsample_to_the_output():
    """``upsample=False`` (the benchmark's raw network) returns the logits at the output stride; upsampled as the
    forward does, they are the forward's output bit for bit."""
    import torch.nn.functional as F

    from mnv2_vision.models import build_model

    torch.manual_seed(0)
    for name, size, stride in (("deeplabv3_mobilenet_v2", 65, 16), ("ssdlite320_deeplabv3_mobilenet_v2", 64, 8)):  # the pair: its decoder's stride
        model = build_model(name, width_mult=0.35).eval()
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            full, raw = model(x)["out"], model(x, upsample=False)["out"]
        assert raw.shape[-2:] == (-(-size // stride),) * 2 and full.shape[-2:] == (size, size)
        assert torch.equal(F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False), full)
