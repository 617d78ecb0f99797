"""The only building blocks shared between model families."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

__all__ = ["make_divisible", "ConvNormAct", "FeatureInfo", "find_tap"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below 90 % of ``v`` (TF-slim / torchvision rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormAct(nn.Sequential):
    """Conv → BatchNorm → activation, indexed 0/1/2 so state-dict keys match torchvision's ``Conv2dNormActivation``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU6,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


@dataclass(frozen=True)
class FeatureInfo:
    """One feature tap a backbone offers: heads size themselves from these, never from dummy forwards.

    ``module`` is the index into ``backbone.features`` whose output (or, with ``expand=True``, whose expansion
    output) is the tap.
    """

    name: str
    channels: int
    stride: int
    module: int
    expand: bool = False


def find_tap(feature_info: Sequence[FeatureInfo], name: str) -> FeatureInfo:
    """The tap called ``name``; an unknown name is a ``KeyError`` listing the taps there are."""
    for f in feature_info:
        if f.name == name:
            return f
    raise KeyError(f"unknown tap {name!r}; this backbone offers {[f.name for f in feature_info]}")
