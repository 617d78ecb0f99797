"""MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
arXiv 1704.04861).

Read top to bottom: the layer table (paper Table 1) → ``DepthwiseSeparable`` (paper Figure 3) → ``MobileNetV1`` with
feature taps and output-stride dilation → the ``mobilenet_v1`` builder. Layer names follow TF-slim's
``mobilenet_v1.py`` (``Conv2d_0``, ``Conv2d_1_pointwise`` … ``Conv2d_13_pointwise``), which the TF Object Detection
API uses to name its SSD taps. It serves as the MobileNetV2 paper's baseline backbone (Tables 6 and 7).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from .layers import ConvNormAct, FeatureInfo, find_tap

if TYPE_CHECKING:
    from .weights import LoadReport

__all__ = ["DEPTHWISE_SEPARABLE_SETTING", "DepthwiseSeparable", "MobileNetV1", "mobilenet_v1", "load_v1_weights"]

# Paper Table 1: after the 3×3/s2 32-channel stem, 13 depthwise-separable layers, as (pointwise out channels,
# depthwise stride). Row i is TF-slim's Conv2d_{i+1}.
DEPTHWISE_SEPARABLE_SETTING: tuple[tuple[int, int], ...] = (
    # c, s
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32
MIN_DEPTH = 8  # TF-slim's min_depth: no layer gets thinner than this at small α


class DepthwiseSeparable(nn.Module):
    """3×3 depthwise conv → BN → ReLU, then 1×1 pointwise conv → BN → ReLU (paper Figure 3, right)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int = 1, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, activation=nn.ReLU)
        self.in_channels, self.out_channels, self.stride, self.dilation = in_channels, out_channels, stride, dilation
        self.depthwise = ConvNormAct(in_channels, in_channels, 3, stride, groups=in_channels, dilation=dilation, **norm)
        self.pointwise = ConvNormAct(in_channels, out_channels, 1, **norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNetV1 body, optional classifier, and named feature taps (the same interface as ``MobileNetV2``).

    Args:
        num_classes: classifier outputs; 0 builds the body only (``forward`` then returns the pooled features).
        width_mult: α; every width is ``max(8, int(c·α))`` (paper §3.3, TF-slim's ``min_depth``).
        output_stride: 32 (classification), 16 or 8; strides past it become 1 and later depthwise convs are dilated
            (TF DeepLab's rule, as in ``MobileNetV2``).
        dropout: dropout before the classifier (TF-slim keeps 0.999, i.e. p = 0.001).
        bn_eps, bn_momentum: BatchNorm settings (PyTorch momentum convention).
        setting: the (c, s) layer table.
    """

    # The TF Object Detection API's SSD feature maps for V1 (``ssd_mobilenet_v1_feature_extractor.py``): 512 channels at
    # stride 16 and 1024 at stride 32. DeepLab reads the last 1024-channel map (MobileNetV2 paper Table 7, "MNet V1").
    DETECTION_TAPS: tuple[str, str] = ("Conv2d_11_pointwise", "Conv2d_13_pointwise")
    SEGMENTATION_TAP: str = "Conv2d_13_pointwise"
    # Stride 16 (SSDLite's first map) and stride 8 (256 channels), as MobileNetV2.DECODER_TAPS.
    DECODER_TAPS: tuple[str, ...] = ("Conv2d_11_pointwise", "Conv2d_5_pointwise")

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        output_stride: int = 32,
        dropout: float = 0.001,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        setting: Sequence[tuple[int, int]] = DEPTHWISE_SEPARABLE_SETTING,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult, self.output_stride = width_mult, output_stride
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)

        def width(c: int) -> int:
            return max(MIN_DEPTH, int(c * width_mult))

        in_ch = width(STEM_CHANNELS)
        layers: list[nn.Module] = [ConvNormAct(3, in_ch, 3, stride=2, activation=nn.ReLU, **norm)]
        info: list[FeatureInfo] = [FeatureInfo("Conv2d_0", in_ch, 2, 0)]
        current_stride, rate = 2, 1
        for i, (c, s) in enumerate(setting, start=1):
            if current_stride == output_stride:
                # The layer whose stride is removed keeps the current rate; the following ones see it doubled.
                layer_stride, layer_rate, rate = 1, rate, rate * s
            else:
                layer_stride, layer_rate, current_stride = s, 1, current_stride * s
            out_ch = width(c)
            layers.append(DepthwiseSeparable(in_ch, out_ch, layer_stride, dilation=layer_rate, **norm))
            info.append(FeatureInfo(f"Conv2d_{i}_pointwise", out_ch, current_stride, i))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.feature_info: tuple[FeatureInfo, ...] = tuple(info)
        self.last_channels = in_ch

        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(in_ch, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # The same initialisation as MobileNetV2 here, so V1-vs-V2 comparisons differ only in architecture.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def tap(self, name: str) -> FeatureInfo:
        return find_tap(self.feature_info, name)

    def forward_features(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Run the body once, as far as the deepest requested tap, and return ``{name: tensor}`` for each tap."""
        wanted = {f.module: f.name for f in (self.tap(n) for n in taps)}
        last = max(wanted)
        out: dict[str, Tensor] = {}
        for idx, layer in enumerate(self.features):
            if idx > last:
                break
            x = layer(x)
            if idx in wanted:
                out[wanted[idx]] = x
        return {n: out[n] for n in taps}

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x) if self.num_classes > 0 else x


def mobilenet_v1(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    output_stride: int = 32,
    dropout: float = 0.001,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    pretrained: str | Path | None = None,
) -> MobileNetV1:
    """MobileNetV1 classifier.

    Args:
        num_classes: classifier outputs (1000 for ImageNet).
        width_mult: width multiplier α (the paper's 1.0, 0.75, 0.5, 0.25).
        output_stride: 32, 16 or 8 (dilated).
        dropout: dropout before the classifier.
        bn_eps, bn_momentum: BatchNorm settings (PyTorch's defaults; TF-slim's recipe is ε 1e-3, momentum 0.003).
        pretrained: a path to a state dict or an mnv2_vision classification checkpoint of the same α (no official
            PyTorch weights exist for V1), or ``None``. A classifier whose shape differs from the file's is reported
            and left at its init.
    """
    model = MobileNetV1(num_classes=num_classes, width_mult=width_mult, output_stride=output_stride, dropout=dropout,
                        bn_eps=bn_eps, bn_momentum=bn_momentum)
    if pretrained is not None:
        load_v1_weights(model, pretrained)
    return model


def load_v1_weights(module: MobileNetV1, source: str | Path) -> "LoadReport":
    """Fill a MobileNetV1 (classifier or body) from a state dict or classification checkpoint file; the file's
    classifier is optional (skipped and reported when the module has none or another class count)."""
    from .weights import load_pretrained

    if str(source) == "imagenet":
        raise ValueError("no ImageNet weights are published for mobilenet_v1 in PyTorch; train one with "
                         "tools/train_cls.py --cfg mobilenet_v1_imagenet and pass its checkpoint path")
    return load_pretrained(module, source, optional=("classifier.",))
