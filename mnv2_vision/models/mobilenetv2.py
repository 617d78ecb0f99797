"""MobileNetV2 (Sandler et al., "Inverted Residuals and Linear Bottlenecks", CVPR 2018).

Read top to bottom: the t, c, n, s table (paper Table 2) → ``InvertedResidual`` (paper Table 1) → ``MobileNetV2``
with feature taps and output-stride dilation → the ``mobilenet_v2`` builder. State-dict keys are identical to
torchvision's ``mobilenet_v2`` so its ImageNet weights load without conversion.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .layers import ConvNormAct, FeatureInfo, make_divisible

__all__ = ["INVERTED_RESIDUAL_SETTING", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# Paper Table 2: expansion t, output channels c, repeats n, stride of the first repeat s.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class InvertedResidual(nn.Module):
    """1×1 expansion → BN → ReLU6 → 3×3 depthwise → BN → ReLU6 → 1×1 linear projection → BN (paper Table 1).

    No activation after the projection: the linear bottleneck (paper §3.2). The residual joins the thin bottleneck
    tensors, only when stride is 1 and input and output widths agree (paper §3.3). With ``expand_ratio == 1`` the
    expansion conv is omitted, as in the paper's first bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden
        self.stride, self.dilation = stride, dilation
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.has_expand = expand_ratio != 1
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        layers: list[nn.Module] = []
        if self.has_expand:
            layers.append(ConvNormAct(in_channels, hidden, kernel_size=1, **norm))
        layers += [
            ConvNormAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden, dilation=dilation, **norm),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (block output, expansion output); the latter is the SSDLite stride-16 tap (paper §6.2)."""
        if not self.has_expand:
            return self.forward(x), x
        expanded = self.conv[0](x)
        out = expanded
        for layer in list(self.conv)[1:]:
            out = layer(out)
        return (x + out if self.use_res_connect else out), expanded


class MobileNetV2(nn.Module):
    """MobileNetV2 body, optional classifier, and named feature taps.

    Args:
        num_classes: classifier outputs; 0 builds the body only (used as a backbone, ``forward`` then returns the
            pooled 1280-d features).
        width_mult: α; every width is ``make_divisible(c·α, 8)``; the last 1×1 conv stays 1280 for α < 1.
        output_stride: 32 (classification), 16 or 8; strides past it become 1 and later depthwise convs are dilated
            (TF DeepLab's rule: the block whose stride is removed keeps the current rate, later ones double it).
        dropout: dropout before the classifier.
        bn_eps, bn_momentum: BatchNorm settings (PyTorch momentum convention).
    """

    # Taps the heads read, by role (paper §6.2 for SSDLite, §6.3 "MNet V2*" for DeepLab). Heads look these names up
    # in ``feature_info``; a new backbone declares its own and no head needs a per-backbone branch.
    DETECTION_TAPS: tuple[str, str] = ("layer15_expand", "layer19")
    SEGMENTATION_TAP: str = "layer18"

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        output_stride: int = 32,
        dropout: float = 0.2,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        setting: Sequence[tuple[int, int, int, int]] = INVERTED_RESIDUAL_SETTING,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult, self.output_stride = width_mult, output_stride
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        in_ch = make_divisible(STEM_CHANNELS * width_mult)
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))

        layers: list[nn.Module] = [ConvNormAct(3, in_ch, kernel_size=3, stride=2, **norm)]
        current_stride, rate = 2, 1
        info: list[FeatureInfo] = [FeatureInfo("layer1", in_ch, current_stride, 0)]
        for t, c, n, s in setting:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                if current_stride == output_stride:
                    layer_stride, layer_rate, rate = 1, rate, rate * stride
                else:
                    layer_stride, layer_rate, current_stride = stride, 1, current_stride * stride
                idx = len(layers)
                if t != 1 and stride == 2 and c == 160:
                    # The expansion output inside the first c=160 block: paper §6.2 "layer 15", SSDLite's first map.
                    # It is computed before this block's stride, so its stride is the one before the block.
                    info.append(FeatureInfo(f"layer{idx + 1}_expand", int(round(in_ch * t)),
                                            current_stride // layer_stride, idx, expand=True))
                layers.append(InvertedResidual(in_ch, out_ch, layer_stride, t, dilation=layer_rate, **norm))
                in_ch = out_ch
                last_of_group = i == n - 1
                if last_of_group:
                    info.append(FeatureInfo(f"layer{idx + 1}", out_ch, current_stride, idx))
        layers.append(ConvNormAct(in_ch, self.last_channels, kernel_size=1, **norm))
        info.append(FeatureInfo(f"layer{len(layers)}", self.last_channels, current_stride, len(layers) - 1))
        self.features = nn.Sequential(*layers)
        self.feature_info: tuple[FeatureInfo, ...] = tuple(info)

        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channels, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so from-scratch runs compare like for like.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def tap(self, name: str) -> FeatureInfo:
        for f in self.feature_info:
            if f.name == name:
                return f
        raise KeyError(f"unknown tap {name!r}; this backbone offers {[f.name for f in self.feature_info]}")

    def forward_features(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Run the body once, as far as the deepest requested tap, and return ``{name: tensor}`` for each tap."""
        wanted = [self.tap(n) for n in taps]
        by_module: dict[int, list[FeatureInfo]] = {}
        for f in wanted:
            by_module.setdefault(f.module, []).append(f)
        last = max(f.module for f in wanted)
        out: dict[str, Tensor] = {}
        for idx, layer in enumerate(self.features):
            if idx > last:
                break
            here = by_module.get(idx, [])
            if any(f.expand for f in here):
                x, expanded = layer.forward_with_expansion(x)
            else:
                x, expanded = layer(x), None
            for f in here:
                out[f.name] = expanded if f.expand else x
        return {n: out[n] for n in taps}

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x) if self.num_classes > 0 else x


def mobilenet_v2(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    output_stride: int = 32,
    dropout: float = 0.2,
    pretrained: str | Path | None = None,
) -> MobileNetV2:
    """MobileNetV2 classifier.

    Args:
        num_classes: classifier outputs (1000 for ImageNet).
        width_mult: width multiplier α (0.35, 0.5, 0.75, 1.0, 1.4 are the paper's).
        output_stride: 32, 16 or 8 (dilated).
        dropout: dropout before the classifier.
        pretrained: ``"imagenet"`` (torchvision's IMAGENET1K_V1 through its weights API, α = 1 only), a path to a
            torchvision-format state dict or a mnv2_vision checkpoint, or ``None`` for random init. A classifier whose
            shape differs from the file's (fine-tuning to new classes) is reported and left at its init.
    """
    from .weights import load_pretrained

    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, output_stride=output_stride, dropout=dropout)
    if pretrained is not None:
        load_pretrained(model, pretrained, width_mult=width_mult, prefix="", optional=("classifier.",))
    return model
