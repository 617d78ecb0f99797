"""Memory-efficient inference for inverted residuals (MobileNetV2 paper §5.1); measured by ``perf/memory.py``.

An inverted residual ``x → expand (1×1) → depthwise (3×3) → project (1×1) → (+ x)`` is, per expansion channel,
independent until the projection, and the projection is a sum over expansion channels. Splitting the t·C expansion
channels into k groups and accumulating each group's partial projection therefore gives the same output while only
one group's expanded tensor (and its depthwise output) ever exists: the peak of a block drops from
``|x| + 2·|expanded|`` towards ``|x| + |out| + 2·|expanded| / k``. The price is k smaller convolutions per layer.

This module leaves ``mobilenetv2.py`` alone: ``memory_efficient(model, chunks)`` returns a copy whose eligible
``InvertedResidual`` blocks are re-classed to ``ChunkedInvertedResidual`` (same parameters, same state-dict keys).
A block whose expansion output is itself a feature tap (SSDLite reads layer 15's expansion, paper §6.2) must
materialise that tensor anyway and is left as it is, as are blocks without an expansion (t = 1) and the
ablation variants whose layout differs (pre-activation, shortcuts between expansions).
"""
from __future__ import annotations

import copy

from torch import Tensor, nn
from torch.nn import functional as F

from ..models.mobilenetv2 import InvertedResidual

__all__ = ["ChunkedInvertedResidual", "memory_efficient"]


def _conv_norm(x: Tensor, conv: nn.Conv2d, norm: nn.Module, channels: slice, depthwise: bool) -> Tensor:
    """``norm(conv(x))`` restricted to the output ``channels`` (a depthwise conv's input is already that slice)."""
    bias = conv.bias[channels] if conv.bias is not None else None
    groups = channels.stop - channels.start if depthwise else 1
    y = F.conv2d(x, conv.weight[channels], bias, conv.stride, conv.padding, conv.dilation, groups)
    if isinstance(norm, nn.BatchNorm2d):
        y = F.batch_norm(y, norm.running_mean[channels], norm.running_var[channels], norm.weight[channels],
                         norm.bias[channels], False, 0.0, norm.eps)
    elif not isinstance(norm, nn.Identity):  # Identity: BN already folded into the conv (deploy.fuse)
        raise TypeError(f"unexpected layer after a convolution: {type(norm).__name__}")
    return y


def _layout_ok(block: InvertedResidual) -> bool:
    """True for the paper's layout: [1×1 conv, BN, act], [dw conv, BN, act], 1×1 conv, BN (or their folded form)."""
    if not block.has_expand or block.join_expansion or len(block.conv) < 3:
        return False
    expand, dw, project = block.conv[0], block.conv[1], block.conv[2]
    return (isinstance(expand, nn.Sequential) and len(expand) == 3 and isinstance(expand[0], nn.Conv2d)
            and expand[0].groups == 1 and isinstance(dw, nn.Sequential) and len(dw) == 3
            and isinstance(dw[0], nn.Conv2d) and dw[0].groups == dw[0].in_channels == dw[0].out_channels
            and isinstance(project, nn.Conv2d) and project.groups == 1 and project.kernel_size == (1, 1))


class ChunkedInvertedResidual(InvertedResidual):
    """An ``InvertedResidual`` evaluated in ``chunks`` groups of expansion channels (inference only).

    Not constructed directly: ``memory_efficient`` re-classes existing blocks and sets ``chunks``.
    """

    chunks: int = 1

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError("ChunkedInvertedResidual is an inference mode; BatchNorm statistics are not updated")
        (expand_conv, expand_norm, expand_act), (dw_conv, dw_norm, dw_act) = self.conv[0], self.conv[1]
        project, tail = self.conv[2], list(self.conv)[3:]
        hidden = project.in_channels
        edges = [round(i * hidden / self.chunks) for i in range(self.chunks + 1)]
        out: Tensor | None = None
        for start, stop in zip(edges, edges[1:]):
            s = slice(start, stop)
            h = expand_act(_conv_norm(x, expand_conv, expand_norm, s, depthwise=False))
            h = dw_act(_conv_norm(h, dw_conv, dw_norm, s, depthwise=True))
            y = F.conv2d(h, project.weight[:, s], None, 1, 0, 1, 1)  # partial projection over this group
            del h
            out = y if out is None else out.add_(y)
        if project.bias is not None:
            out = out.add_(project.bias.view(1, -1, 1, 1))
        for layer in tail:  # projection BN (or Identity once folded), optional ReLU6 ablation
            out = layer(out)
        return x + out if self.use_res_connect else out

    def forward_pair(self, x: Tensor, previous_expansion: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        # The expansion never exists whole, so there is none to report: memory_efficient() leaves unchunked every
        # block whose expansion is a tap, and every body that threads expansions between blocks.
        return self.forward(x), None


def memory_efficient(model: nn.Module, chunks: int) -> nn.Module:
    """A copy of ``model`` (eval mode) whose inverted residuals compute their expansion in ``chunks`` groups.

    Works on any model containing MobileNetV2 bodies (``features`` + ``feature_info``), e.g. SSDLite, DeepLabV3,
    and on models already passed through ``deploy.fuse.fold_batchnorm``. ``chunks=1`` returns a plain copy.
    The outputs equal the original model's up to float summation order (≤ 1e-5).
    """
    if chunks < 1:
        raise ValueError(f"chunks must be ≥ 1, got {chunks}")
    model = copy.deepcopy(model).eval()
    if chunks == 1:
        return model
    converted = 0
    for module in model.modules():
        features, infos = getattr(module, "features", None), getattr(module, "feature_info", None)
        if not isinstance(features, nn.Sequential) or infos is None or getattr(module, "shortcut", "") == "expansion":
            continue
        tapped = {f.module for f in infos if f.expand}
        for idx, block in enumerate(features):
            if type(block) is InvertedResidual and idx not in tapped and _layout_ok(block):
                block.__class__ = ChunkedInvertedResidual
                block.chunks = min(chunks, block.hidden_channels)
                converted += 1
    if converted == 0:
        raise ValueError(f"{type(model).__name__} has no inverted residual that can be chunked")
    return model
