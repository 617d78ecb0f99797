"""MobileNetV2 ablation variants (paper §6.4): hand-computed block parameter counts, wiring, and that the defaults are
still exactly the paper's / torchvision's network."""
import pytest
import torch
import torchvision

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import ConfigError, load_config
from mnv2_vision.models import build_model
from mnv2_vision.models.mobilenetv2 import ClassicResidual, InvertedResidual, MobileNetV2
from mnv2_vision.perf.complexity import count_params


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# features[3]: the second block of row (t=6, c=24): 24 → 24, stride 1, hidden 24·6 = 144.
#   expand 24·144 + BN 2·144 = 3744; depthwise 9·144 + 2·144 = 1584; project 144·24 + 2·24 = 3504
PAPER_BLOCK3 = 3744 + 1584 + 3504  # 8832
# features[2]: 16 → 24, stride 2, hidden 96: 16·96 + 192 = 1728; 9·96 + 192 = 1056; 96·24 + 48 = 2352
PAPER_BLOCK2 = 1728 + 1056 + 2352  # 5136
HAND_COUNTS = {
    # variant kwargs → (block index, hand-computed parameters of that block)
    "paper": ({}, 3, PAPER_BLOCK3),
    "projection relu6": ({"projection_activation": "relu6"}, 3, PAPER_BLOCK3),  # ReLU6 has no parameters
    "shortcut between expansions": ({"shortcut": "expansion"}, 3, PAPER_BLOCK3),
    "no shortcut": ({"shortcut": "none"}, 3, PAPER_BLOCK3),
    # pre-activation: BN sits on the conv inputs (16, 96, 96) instead of outputs (96, 96, 24)
    "pre-activation": ({"preactivation": True}, 2, 2 * 16 + 16 * 96 + 2 * 96 + 9 * 96 + 2 * 96 + 96 * 24),  # 5120
    # t = 4: hidden 24·4 = 96: 24·96 + 192 + 9·96 + 192 + 96·24 + 48
    "t=4": ({"expand_ratio": 4}, 3, 2304 + 192 + 864 + 192 + 2304 + 48),  # 5904
    "t=10": ({"expand_ratio": 10}, 3, 24 * 240 + 480 + 9 * 240 + 480 + 240 * 24 + 48),  # 14688
    # classic: wide 144 in/out, squeeze to 24, depthwise on 24: 144·24 + 48 + 9·24 + 48 + 24·144 + 288
    "classic": ({"block": "classic"}, 3, 3456 + 48 + 216 + 48 + 3456 + 288),  # 7512
}


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_block_parameter_count_by_hand(name):
    kwargs, idx, expected = HAND_COUNTS[name]
    assert n_params(MobileNetV2(**kwargs).features[idx]) == expected


def test_defaults_are_unchanged():
    m = build_model("mobilenet_v2", block="inverted", shortcut="bottleneck", projection_activation="none",
                    preactivation=False, expand_ratio=None, small_input=False)
    assert count_params(m) == 3_504_872
    assert list(m.state_dict()) == list(torchvision.models.mobilenet_v2().state_dict())
    # variants that only rewire keep every parameter (and torchvision's keys)
    for kw in ({"shortcut": "expansion"}, {"shortcut": "none"}, {"projection_activation": "relu6"}):
        v = MobileNetV2(**kw)
        assert count_params(v) == 3_504_872 and list(v.state_dict()) == list(m.state_dict())


def test_projection_activation():
    m = MobileNetV2(projection_activation="relu6").eval()
    assert isinstance(m.features[2].conv[-1], torch.nn.ReLU6)
    with torch.no_grad():  # a block without a shortcut now outputs ReLU6's range
        y = m.features[2](torch.randn(2, 16, 16, 16) * 10)
    assert y.min() >= 0 and y.max() <= 6


def test_no_shortcut():
    m = MobileNetV2(shortcut="none").eval()
    assert not any(getattr(b, "use_res_connect", False) for b in m.features)
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        assert torch.equal(m.features[3](x), m.features[3].conv(x))


def _manual_expansion_forward(m: MobileNetV2, x: torch.Tensor) -> torch.Tensor:
    """Reference: e_k = expand_k(x_k) + e_{k-1} when block k-1 keeps resolution and width; no bottleneck adds."""
    prev_e, prev_keeps = None, False
    for layer in m.features:
        if isinstance(layer, InvertedResidual):
            if layer.has_expand:
                e = layer.conv[0](x)
                if prev_keeps and prev_e is not None and prev_e.shape == e.shape:
                    e = e + prev_e
                rest = list(layer.conv)[1:]
            else:
                e, rest = x, list(layer.conv)
            out = e
            for op in rest:
                out = op(out)
            x, prev_e = out, e
            prev_keeps = layer.stride == 1 and layer.in_channels == layer.out_channels
        else:
            x, prev_e, prev_keeps = layer(x), None, False
    return x


def test_shortcut_between_expansions():
    torch.manual_seed(0)
    m = MobileNetV2(num_classes=0, shortcut="expansion").train()  # batch statistics keep activations O(1)
    joins = [i for i, b in enumerate(m.features) if getattr(b, "join_expansion", False)]
    paper_residuals = [i for i, b in enumerate(MobileNetV2().features) if getattr(b, "use_res_connect", False)]
    assert paper_residuals == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    assert joins == [i + 1 for i in paper_residuals]  # each join spans the block that carried the paper's shortcut
    assert not any(getattr(b, "use_res_connect", False) for b in m.features)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = _manual_expansion_forward(m, x)
        assert ref.abs().mean() > 0.1
        assert torch.allclose(m.forward_features(x, ["layer19"])["layer19"], ref, rtol=1e-4, atol=1e-5)
        assert torch.allclose(m(x), ref.mean((2, 3)), rtol=1e-4, atol=1e-5)
        unjoined = MobileNetV2(num_classes=0, shortcut="none").train()
        unjoined.load_state_dict(m.state_dict())
        assert (unjoined.features(x) - ref).abs().mean() > 0.01  # the joins do change the result


def test_preactivation_block():
    m = MobileNetV2(preactivation=True).eval()
    b = m.features[3]
    assert isinstance(b.conv[0][0], torch.nn.BatchNorm2d) and b.conv[0][0].num_features == 24
    assert isinstance(b.conv[-1][-1], torch.nn.Conv2d)  # ends in a bare projection
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        assert torch.allclose(b(x), x + b.conv(x))
    with pytest.raises(ValueError, match="pre-activation"):
        MobileNetV2(preactivation=True, projection_activation="relu6")


def test_classic_block():
    m = MobileNetV2(block="classic", num_classes=10).eval()
    b = m.features[3]
    assert isinstance(b, ClassicResidual) and (b.in_channels, b.hidden_channels, b.out_channels) == (144, 24, 144)
    assert b.conv[1][0].groups == 24 and b.use_res_connect  # depthwise on the thin tensor, shortcut on the wide
    assert m.features[-1][0].in_channels == 320 * 6
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="expansion"):
        MobileNetV2(block="classic", shortcut="expansion")


def test_expand_ratio_keeps_first_row():
    m = MobileNetV2(expand_ratio=2)
    assert not m.features[1].has_expand and m.features[2].hidden_channels == 32
    assert m.tap("layer15_expand").channels == 96 * 2


def test_small_input_cifar_adaptation():
    m = MobileNetV2(num_classes=10, small_input=True).eval()
    assert m.features[0][0].stride == (1, 1) and m.features[2].conv[1][0].stride == (1, 1)
    with torch.no_grad():
        f = m.forward_features(torch.zeros(1, 3, 32, 32), ["layer19", "layer4"])
    assert f["layer19"].shape[-2:] == (4, 4) and m.tap("layer19").stride == 8 and m.tap("layer4").stride == 1


def test_bad_variant_names():
    with pytest.raises(ValueError, match="shortcut"):
        MobileNetV2(shortcut="expansions")
    with pytest.raises(ValueError, match="block"):
        MobileNetV2(block="resnet")


def test_variants_through_config():
    cfg = load_config(None, ["task=classification", "model.block=classic", "model.expand_ratio=4",
                             "model.width_mult=0.35", "model.num_classes=3"])
    m = build_from_config(cfg)
    assert isinstance(m.features[3], ClassicResidual) and m.features[3].out_channels == 8 * 4
    with pytest.raises(ConfigError, match="model.shortcut"):
        load_config(None, ["model.shortcut=sideways"])
    with pytest.raises(ConfigError, match="does not apply"):  # V1 has no such switch
        build_from_config(load_config(None, ["model.name=mobilenet_v1", "model.preactivation=true"]))
