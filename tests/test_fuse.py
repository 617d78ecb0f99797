"""Fused inference path (deploy/fuse.py): BN folding by hand-computed numbers, and fused == unfused on both models."""
import pytest
import torch
from torch import nn

from mnv2_vision.deploy.fuse import InferenceModel, fold_batchnorm, fuse_for_inference
from mnv2_vision.models import build_model


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def test_fold_by_hand():
    # 1×1 conv with weight 2, no bias, then BN(γ=3, β=1, μ=0.5, σ²=4-ε): y = 3·(2x − 0.5)/2 + 1 = 3x + 0.25.
    seq = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU6())
    with torch.no_grad():
        seq[0].weight.fill_(2.0)
        seq[1].weight.fill_(3.0)
        seq[1].bias.fill_(1.0)
        seq[1].running_mean.fill_(0.5)
        seq[1].running_var.fill_(4.0 - seq[1].eps)
    seq.eval()
    assert fold_batchnorm(seq) == (1, 0)
    assert isinstance(seq[1], nn.Identity)
    assert seq[0].weight.item() == pytest.approx(3.0)
    assert seq[0].bias.item() == pytest.approx(0.25)
    x = torch.tensor([[[[-1.0]], [[0.5]], [[2.0]]]]).view(3, 1, 1, 1)
    assert seq(x).flatten().tolist() == pytest.approx([0.0, 1.75, 6.0])  # ReLU6 of 3x + 0.25


def test_fold_refuses_training_mode_and_counts_unfoldable():
    seq = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU6(), nn.Conv2d(4, 4, 1))  # pre-activation: no conv before BN
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(seq.train())
    assert fold_batchnorm(seq.eval()) == (0, 1)


@pytest.mark.parametrize("name,size,kwargs", [
    ("ssdlite320_mobilenet_v2", 160, dict(num_classes=6, width_mult=0.5)),
    ("deeplabv3_mobilenet_v2", 129, dict(num_classes=5)),
])
def test_fused_equals_unfused(name, size, kwargs):
    torch.manual_seed(0)
    model = randomise_bn(build_model(name, **kwargs))
    bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    fused = fuse_for_inference(model)
    assert isinstance(fused, InferenceModel)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.ReLU6, nn.ReLU)) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_before  # original untouched
    assert fused.model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    out = fused(x)
    assert out.keys() == ref.keys()
    for k in ref:
        assert out[k].is_inference()
        scale = float(ref[k].abs().max())
        assert scale > 0.1  # the comparison means something only if the outputs are not all near zero
        assert float((out[k] - ref[k]).abs().max()) <= 1e-4, k


def test_wrapper_delegates_model_api():
    model = build_model("ssdlite320_mobilenet_v2", num_classes=4, width_mult=0.35).eval()
    fused = fuse_for_inference(model, channels_last=False)
    assert fused.num_classes == 4
    assert torch.equal(fused.anchors((96, 96)), model.anchors((96, 96)))
    with pytest.raises(AttributeError):
        fused.no_such_attribute


@pytest.mark.parametrize("logit_scale,settings", [
    (0.1, {}),  # near-uniform scores: every class's top-k passes the threshold (the random-weight worst case)
    (3.0, dict(score_thresh=0.05, detections_per_img=10)),
    (0.1, dict(topk_candidates=500, detections_per_img=300)),  # needs several prefix doublings
])
def test_fast_postprocess_equals_postprocess(logit_scale, settings):
    from dataclasses import replace

    from mnv2_vision.config import EvalCfg
    from mnv2_vision.ops.boxes import BoxCoder
    from mnv2_vision.ops.postprocess import PostprocessSettings, postprocess_detections

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 5 + torch.rand(500, 2, generator=g) * 40], 1)
    cls_logits = torch.randn(2, 500, 21, generator=g) * logit_scale
    bbox_regression = torch.randn(2, 500, 4, generator=g) * 0.5
    args = (cls_logits, bbox_regression, anchors, BoxCoder(), (128, 128), [(128, 128), (300, 200)])
    pp = replace(PostprocessSettings.from_eval(EvalCfg()), **settings)
    ref, fast = postprocess_detections(*args, pp), postprocess_detections(*args, pp, prefix_nms=True)
    assert len(ref[0]["scores"]) > 0
    for r, f in zip(ref, fast):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(r[key], f[key]), key


def test_conv_act_fallback_matches_onednn_path():
    from mnv2_vision.deploy.fuse import ConvAct

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8)
    x = torch.randn(1, 8, 13, 13) * 10
    for act in (nn.ReLU6(), nn.ReLU(), None):
        fused = ConvAct(conv, act)
        with torch.no_grad():  # no grad: the oneDNN post-op path (where available)
            ref = conv(x) if act is None else act(conv(x))
            assert float((fused(x) - ref).abs().max()) <= 1e-5
        assert torch.allclose(fused(x), ref, atol=1e-5)  # grad enabled: the F.conv2d fallback
    with torch.no_grad():
        assert float(ConvAct(conv, nn.ReLU6())(x).max()) == 6.0  # the clamp really happens


needs_onednn = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")),
    reason="oneDNN post-op convolutions are not available in this PyTorch build")


@needs_onednn
def test_packed_conv_act_equals_conv_and_activation():
    from mnv2_vision.deploy.fuse import ConvAct, PackedConvAct

    torch.manual_seed(0)
    # the 1×1-on-a-small-map case ATen would send to _slow_conv2d_forward, a depthwise and a strided dilated conv
    cases = ((nn.Conv2d(160, 96, 1), (1, 160, 5, 5)), (nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 9, 9)),
             (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), (1, 4, 11, 11)))
    for conv, shape in cases:
        x = (torch.randn(shape) * 10).contiguous(memory_format=torch.channels_last)
        for act in (nn.ReLU6(), nn.ReLU(), None):
            packed = PackedConvAct(ConvAct(conv, act), list(shape))
            assert packed.weight.is_mkldnn  # prepacked into oneDNN's blocked layout
            with torch.no_grad():
                ref = conv(x) if act is None else act(conv(x))
                assert float((packed(x) - ref).abs().max()) <= 1e-4
        with torch.no_grad():
            assert float(PackedConvAct(ConvAct(conv, nn.ReLU6()), list(shape))(x).max()) == 6.0


@needs_onednn
@pytest.mark.parametrize("batch", [1, 2])
def test_freeze_for_cpu_graph_equals_eager_and_holds_fused_packed_convolutions(batch):
    from mnv2_vision.deploy.fuse import freeze_folded, freeze_for_cpu

    torch.manual_seed(0)
    model = randomise_bn(build_model("ssdlite320_mobilenet_v2", num_classes=6, width_mult=0.5))
    x = torch.randn(batch, 3, 160, 160)
    with torch.no_grad():
        ref = model(x)
    graph = freeze_for_cpu(model, x)
    nodes = [n.kind() for n in graph.graph.nodes()]
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    # every convolution is one oneDNN post-op call, the activations and BatchNorms are gone from the graph
    assert nodes.count("mkldnn::_convolution_pointwise") == convs
    assert not {"aten::_convolution", "aten::conv2d", "aten::hardtanh", "aten::clamp", "aten::batch_norm"} & set(nodes)
    folded = freeze_folded(model, x)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        outs = [graph(x_cl), folded(x_cl)]
    for out in outs:
        assert out.keys() == ref.keys()
        for k in ref:
            assert float(ref[k].abs().max()) > 0.1
            assert float((out[k] - ref[k]).abs().max()) <= 1e-4, k


@needs_onednn
def test_freeze_for_cpu_deeplab_lite_equals_eager():
    """DeepLab-lite on the frozen CPU graph (the predictor's segmentation path once a shape recurs): every
    convolution, the image-pooling branch's on its 1×1 map included, is a fused oneDNN call; logits equal eager."""
    from mnv2_vision.deploy.fuse import freeze_for_cpu

    torch.manual_seed(0)
    model = randomise_bn(build_model("deeplabv3_mobilenet_v2", num_classes=5, width_mult=0.5))
    for m in model.modules():  # logits of order 1, not the fresh head's ~1e-8, so the tolerance means something
        if isinstance(m, nn.Conv2d) and m.out_channels == 5:
            nn.init.normal_(m.weight, std=1.0)
    x = torch.randn(1, 3, 97, 130)  # odd sizes: the stride-16 rounding and the upsampling to the input size
    with torch.no_grad():
        ref = model(x)["out"]
    graph = freeze_for_cpu(model, x)
    nodes = [n.kind() for n in graph.graph.nodes()]
    assert nodes.count("mkldnn::_convolution_pointwise") == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert not {"aten::_convolution", "aten::conv2d", "aten::batch_norm"} & set(nodes)
    with torch.no_grad():
        out = graph(x.contiguous(memory_format=torch.channels_last))["out"]
    assert out.shape == ref.shape == (1, 5, 97, 130) and float(ref.abs().max()) > 0.5
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_freeze_for_cpu_falls_back_to_the_folded_graph_without_onednn(monkeypatch):
    import mnv2_vision.deploy.fuse as fuse

    monkeypatch.setattr(fuse, "_HAS_POINTWISE", False)
    torch.manual_seed(0)
    model = randomise_bn(build_model("ssdlite320_mobilenet_v2", num_classes=6, width_mult=0.35))
    x = torch.randn(1, 3, 128, 128)
    graph = fuse.freeze_for_cpu(model, x)
    nodes = {n.kind() for n in graph.graph.nodes()}
    assert "mkldnn::_convolution_pointwise" not in nodes and "aten::_convolution" in nodes
    with torch.no_grad():
        ref, out = model(x), graph(x.contiguous(memory_format=torch.channels_last))
    for k in ref:
        assert float((out[k] - ref[k]).abs().max()) <= 1e-4, k
