"""Fused inference path: BatchNorm folded into the convolution before it, channels-last memory, inference mode.

In evaluation BatchNorm is a per-channel affine map ``y = γ (x − μ) / √(σ² + ε) + β``; following a convolution it
can be folded into that convolution's weights and bias, removing one full read and write of every feature map.
Channels-last (NHWC) is the layout oneDNN's depthwise and 1×1 kernels prefer on CPU, so no reorders run between
layers; SSDLite's head flattening ``(N, A·K, h, w) → (N, h·w·A, K)`` also becomes a view in that layout.
``torch.inference_mode`` skips autograd bookkeeping (version counters, views tracking).

``fuse_for_inference`` works on a copy and keeps the model's own class and methods (``anchors``, ``num_classes``…)
reachable through the returned wrapper, so the tools can swap it in with one line.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm", "InferenceModel", "fuse_for_inference"]


def fold_batchnorm(model: nn.Module) -> tuple[int, int]:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``.

    The BatchNorm is replaced by ``nn.Identity`` (so module indices, and code that addresses ``seq[i]``, stay
    valid) and the convolution gains a bias. The model must be in eval mode: folding uses the running statistics.
    Returns ``(folded, left)``: the number of BatchNorms folded and of those that could not be (e.g. the
    pre-activation ablation's BN → ReLU6 → conv, which has no convolution before it).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it folds the running statistics)")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for prev_name, name in zip(names, names[1:]):
            conv, bn = module._modules[prev_name], module._modules[name]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.running_mean is not None and conv.out_channels == bn.num_features):
                module._modules[prev_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[name] = nn.Identity()
                folded += 1
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return folded, left


class InferenceModel(nn.Module):
    """Runs ``model`` under ``torch.inference_mode`` on channels-last input; other attributes are the model's.

    Outputs are inference tensors: they can be read, sliced and fed to further computation, but not modified in
    place outside inference mode or used in autograd.
    """

    def __init__(self, model: nn.Module, channels_last: bool = True) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, images: Tensor):
        with torch.inference_mode():
            if self.channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            return self.model(images)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Delegation keeps model-specific API (SSDLite.anchors, num_classes, ...) usable on the wrapper.
            return getattr(self._modules["model"], name)


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> InferenceModel:
    """A fused inference copy of ``model`` (the original is left untouched): BN folded, channels-last weights,
    inference mode. Its outputs equal the eval-mode model's to float rounding (≲1e-5)."""
    fused = copy.deepcopy(model).eval()
    fold_batchnorm(fused)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    for p in fused.parameters():
        p.requires_grad_(False)
    return InferenceModel(fused, channels_last).eval()
