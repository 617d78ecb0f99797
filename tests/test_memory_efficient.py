"""Memory-efficient inverted residual (paper §5.1, deploy/memory.py): identical outputs, lower measured peak."""
import pytest
import torch
from torch import nn

from mnv2_vision.deploy.fuse import fold_batchnorm
from mnv2_vision.deploy.memory import ChunkedInvertedResidual, memory_efficient
from mnv2_vision.perf.memory import peak_memory_bytes
from mnv2_vision.models import build_model
from mnv2_vision.models.mobilenetv2 import InvertedResidual, MobileNetV2

from test_fuse import randomise_bn


class _Body(nn.Module):
    """The body contract memory_efficient looks for: ``features`` and ``feature_info``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.features, self.feature_info = nn.Sequential(block), ()


def test_peak_memory_by_hand():
    def f():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB live
        del a
        c = torch.empty(500_000)  # 2 MB: 10 MB live
        return b, c

    assert peak_memory_bytes(f) == 12_000_000


@pytest.mark.parametrize("stride,in_ch,out_ch", [(1, 16, 16), (2, 16, 24)])
@pytest.mark.parametrize("fold", [False, True])
def test_chunked_block_equals_block(stride, in_ch, out_ch, fold):
    torch.manual_seed(0)
    block = randomise_bn(InvertedResidual(in_ch, out_ch, stride, expand_ratio=6))
    if fold:
        fold_batchnorm(block)
    body = _Body(block)
    x = torch.randn(2, in_ch, 17, 17)
    with torch.no_grad():
        ref = block(x)
        for k in (1, 2, 5):  # 5 does not divide the 96 expansion channels
            chunked = memory_efficient(body, k).features[0]
            assert isinstance(chunked, ChunkedInvertedResidual) == (k > 1)
            out = chunked(x)
            assert float((out - ref).abs().max()) <= 1e-5, k


def test_chunked_block_refuses_training():
    body = MobileNetV2(num_classes=0, width_mult=0.35)
    block = memory_efficient(body, 2).features[2]
    assert isinstance(block, ChunkedInvertedResidual)
    with pytest.raises(RuntimeError, match="inference"):
        block.train()(torch.randn(1, block.in_channels, 8, 8))


def test_ssdlite_keeps_its_expansion_tap_whole():
    torch.manual_seed(0)
    model = randomise_bn(build_model("ssdlite320_mobilenet_v2", num_classes=5, width_mult=0.5))
    chunked = memory_efficient(model, 6)
    tap = chunked.backbone.tap("layer15_expand").module
    assert type(chunked.backbone.features[tap]) is InvertedResidual
    assert sum(isinstance(m, ChunkedInvertedResidual) for m in chunked.modules()) == 15  # 17 blocks − t=1 − tap
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref, out = model(x), chunked(x)
    for k in ref:
        assert float((out[k] - ref[k]).abs().max()) <= 1e-5


def test_deeplab_identical_output_and_lower_peak():
    torch.manual_seed(0)
    model = randomise_bn(build_model("deeplabv3_mobilenet_v2", num_classes=21))
    x = torch.randn(1, 3, 129, 129)
    peaks, outs = {}, {}
    with torch.inference_mode():
        for k in (1, 2, 6):
            m = memory_efficient(model, k)
            outs[k] = m(x)["out"]
            peaks[k] = peak_memory_bytes(lambda: m(x))
    assert float(outs[1].abs().max()) > 0.1
    for k in (2, 6):
        assert float((outs[k] - outs[1]).abs().max()) <= 1e-5
    # Paper §5.1: the expansion never exists whole. Without chunks the second block (96 × 65² expanded, twice with
    # its depthwise output) sets the peak; with chunks the upsampled 21-class output is the largest tensor left.
    assert peaks[2] < peaks[1] and peaks[6] <= peaks[2]
    assert peaks[6] <= 0.7 * peaks[1]
