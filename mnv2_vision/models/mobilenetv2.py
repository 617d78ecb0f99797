"""MobileNetV2 (Sandler et al., "Inverted Residuals and Linear Bottlenecks", CVPR 2018).

Read top to bottom: the t, c, n, s table (paper Table 2) → ``InvertedResidual`` (paper Table 1) and, for the
ablations only, ``ClassicResidual`` → ``MobileNetV2`` with feature taps, output-stride dilation and the ablation
switches → the ``mobilenet_v2`` builder. At default settings state-dict keys are identical to torchvision's
``mobilenet_v2`` so its ImageNet weights load without conversion.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from .layers import ConvNormAct, FeatureInfo, find_tap, make_divisible

__all__ = ["INVERTED_RESIDUAL_SETTING", "InvertedResidual", "ClassicResidual", "MobileNetV2", "mobilenet_v2"]

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

# Ablation switches (paper §6.4 / Figure 6, CIFAR-10 seed blog: docs/design.md#ablations); the first is the paper's.
BLOCKS = ("inverted", "classic")
SHORTCUTS = ("bottleneck", "expansion", "none")
PROJECTION_ACTIVATIONS = ("none", "relu6")


class _NormActConv(nn.Sequential):
    """BN → ReLU6 → conv: the pre-activation ordering (He et al. 2016, "Identity Mappings"), ablations only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 dilation: int = 1, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=False),
        )


def _three_convs(in_ch: int, hidden: int, out_ch: int, stride: int, dilation: int, first_conv: bool,
                 projection_activation: str, preactivation: bool, bn_eps: float, bn_momentum: float) -> list[nn.Module]:
    """1×1 in→hidden (optional) → 3×3 depthwise on hidden → 1×1 hidden→out, with BN/ReLU6 placed per variant."""
    norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
    layers: list[nn.Module] = []
    if preactivation:
        if projection_activation != "none":
            raise ValueError("a pre-activation block ends in a bare 1×1 conv (its ReLU6 sits before the expansion); "
                             "projection_activation applies to post-activation blocks only")
        if first_conv:
            layers.append(_NormActConv(in_ch, hidden, 1, **norm))
        layers.append(_NormActConv(hidden, hidden, 3, stride, groups=hidden, dilation=dilation, **norm))
        layers.append(_NormActConv(hidden, out_ch, 1, **norm))
        return layers
    if first_conv:
        layers.append(ConvNormAct(in_ch, hidden, kernel_size=1, **norm))
    layers += [
        ConvNormAct(hidden, hidden, kernel_size=3, stride=stride, groups=hidden, dilation=dilation, **norm),
        nn.Conv2d(hidden, out_ch, 1, bias=False),
        nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
    ]
    if projection_activation == "relu6":
        layers.append(nn.ReLU6(inplace=True))  # the non-linear bottleneck of paper Figure 6a
    elif projection_activation != "none":
        raise ValueError(f"projection_activation must be one of {PROJECTION_ACTIVATIONS}, "
                         f"got {projection_activation!r}")
    return layers


class _Bottleneck(nn.Module):
    """Forward logic shared by both block shapes: ``self.conv`` holds [first 1×1 (if ``has_expand``), depthwise, …]."""

    conv: nn.Sequential
    has_expand: bool
    use_res_connect: bool
    join_expansion: bool

    def forward(self, x: Tensor) -> Tensor:
        if not self.join_expansion:
            out = self.conv(x)
            return x + out if self.use_res_connect else out
        return self.forward_pair(x)[0]

    def forward_pair(self, x: Tensor, previous_expansion: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return (block output, output of the first 1×1 conv); with ``join_expansion`` the previous block's
        expansion output is added to this one's (the "shortcut between expansions" of paper Figure 6b)."""
        if not self.has_expand:
            return self.forward(x), x
        expanded = self.conv[0](x)
        if self.join_expansion and previous_expansion is not None:
            expanded = expanded + previous_expansion
        out = expanded
        for layer in list(self.conv)[1:]:
            out = layer(out)
        return (x + out if self.use_res_connect else out), expanded

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (block output, expansion output); the latter is the SSDLite stride-16 tap (paper §6.2)."""
        return self.forward_pair(x)


class InvertedResidual(_Bottleneck):
    """1×1 expansion → BN → ReLU6 → 3×3 depthwise → BN → ReLU6 → 1×1 linear projection → BN (paper Table 1).

    No activation after the projection: the linear bottleneck (paper §3.2). The residual joins the thin bottleneck
    tensors, only when stride is 1 and input and output widths agree (paper §3.3). With ``expand_ratio == 1`` the
    expansion conv is omitted, as in the paper's first bottleneck. The keyword arguments after ``bn_momentum`` exist
    for the ablations and default to the paper's design.

    Args:
        projection_activation: ``"none"`` (linear bottleneck) or ``"relu6"`` after the projection's BN.
        preactivation: BN → ReLU6 before each conv instead of after it (so a ReLU6 acts on the bottleneck input and
            the block ends in a bare 1×1 conv).
        residual: add the identity shortcut when the shapes allow it.
        join_expansion: add the previous block's expansion output to this block's (set by ``MobileNetV2`` for
            ``shortcut="expansion"``; the network threads that tensor through ``forward_pair``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        dilation: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        *,
        projection_activation: str = "none",
        preactivation: bool = False,
        residual: bool = True,
        join_expansion: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden
        self.stride, self.dilation = stride, dilation
        self.use_res_connect = residual and stride == 1 and in_channels == out_channels
        self.has_expand = expand_ratio != 1
        self.join_expansion = join_expansion and self.has_expand
        self.conv = nn.Sequential(*_three_convs(in_channels, hidden, out_channels, stride, dilation, self.has_expand,
                                                projection_activation, preactivation, bn_eps, bn_momentum))


class ClassicResidual(_Bottleneck):
    """The classic (ResNet-style, non-inverted) residual of paper Figure 3a: 1×1 squeeze → 3×3 depthwise on the thin
    tensor → 1×1 expand, with the shortcut joining the wide block inputs and outputs. Ablations only.

    ``MobileNetV2(block="classic")`` keeps the table's layers and widths and moves the depthwise conv and the
    shortcut: a row (t, c) has wide outputs of c·t channels and a thin c-channel middle, so the 1×1 convs are the
    same size as the inverted form's and the depthwise conv is t times cheaper, but c·t-wide tensors flow between
    blocks (the memory cost paper §5.1 argues against).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        squeeze_channels: int,
        dilation: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        *,
        projection_activation: str = "none",
        preactivation: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, squeeze_channels
        self.stride, self.dilation = stride, dilation
        self.use_res_connect = residual and stride == 1 and in_channels == out_channels
        self.has_expand, self.join_expansion = True, False
        self.conv = nn.Sequential(*_three_convs(in_channels, squeeze_channels, out_channels, stride, dilation, True,
                                                projection_activation, preactivation, bn_eps, bn_momentum))


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
        setting: the (t, c, n, s) table.
        small_input: the CIFAR-10 adaptation (design.md): stride 1 in the first conv and in the second table row, so a
            32×32 input ends at 4×4 before pooling.
        expand_ratio: replaces t in every table row but the first (whose t = 1 reads the 32-channel stem); ``None``
            keeps the table (ablation (c), docs/design.md#ablations).
        block: ``"inverted"`` (paper) or ``"classic"`` (``ClassicResidual``; ablation (d)).
        shortcut: ``"bottleneck"`` (paper: joins the thin block outputs), ``"expansion"`` (joins consecutive
            blocks' expansion outputs, paper Figure 6b) or ``"none"``.
        projection_activation: ``"none"`` (linear bottleneck, paper) or ``"relu6"`` (paper Figure 6a).
        preactivation: BN → ReLU6 before each conv of a block (the seed blog's pre-activation block).
    """

    # Taps the heads read, by role (paper §6.2 for SSDLite, §6.3 "MNet V2*" for DeepLab). Heads look these names up
    # in ``feature_info``; a new backbone declares its own and no head needs a per-backbone branch.
    DETECTION_TAPS: tuple[str, str] = ("layer15_expand", "layer19")
    SEGMENTATION_TAP: str = "layer18"
    # The maps a segmentation decoder adds back to a stride-32 head, coarse to fine (DeepLabv3+'s low-level features;
    # the multi-task pair's "os32" sharing): the stride-16 expansion SSDLite reads, and the end of the c = 32 stage.
    DECODER_TAPS: tuple[str, ...] = ("layer15_expand", "layer7")

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        output_stride: int = 32,
        dropout: float = 0.2,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        setting: Sequence[tuple[int, int, int, int]] = INVERTED_RESIDUAL_SETTING,
        *,
        small_input: bool = False,
        expand_ratio: float | None = None,
        block: str = "inverted",
        shortcut: str = "bottleneck",
        projection_activation: str = "none",
        preactivation: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        for key, value, options in (("block", block, BLOCKS), ("shortcut", shortcut, SHORTCUTS),
                                    ("projection_activation", projection_activation, PROJECTION_ACTIVATIONS)):
            if value not in options:
                raise ValueError(f"{key} must be one of {options}, got {value!r}")
        if block == "classic" and shortcut == "expansion":
            raise ValueError("shortcut='expansion' is defined for the inverted block; a classic block's shortcut "
                             "already joins its wide tensors (use shortcut='bottleneck' or 'none')")
        if expand_ratio is not None and expand_ratio <= 0:
            raise ValueError(f"expand_ratio must be positive, got {expand_ratio}")
        self.width_mult, self.output_stride, self.shortcut = width_mult, output_stride, shortcut
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        variant = dict(projection_activation=projection_activation, preactivation=preactivation,
                       residual=shortcut == "bottleneck")
        rows = [(t if expand_ratio is None or i == 0 else expand_ratio, c, n, 1 if small_input and i == 1 else s)
                for i, (t, c, n, s) in enumerate(setting)]
        stem_stride = 1 if small_input else 2
        in_ch = make_divisible(STEM_CHANNELS * width_mult)
        self.last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))

        layers: list[nn.Module] = [ConvNormAct(3, in_ch, kernel_size=3, stride=stem_stride, **norm)]
        current_stride, rate = stem_stride, 1
        info: list[FeatureInfo] = [FeatureInfo("layer1", in_ch, current_stride, 0)]
        previous: _Bottleneck | None = None
        for t, c, n, s in rows:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                if current_stride == output_stride:
                    layer_stride, layer_rate, rate = 1, rate, rate * stride
                else:
                    layer_stride, layer_rate, current_stride = stride, 1, current_stride * stride
                idx = len(layers)
                if block == "classic":
                    wide = int(round(out_ch * t))
                    layer: _Bottleneck = ClassicResidual(in_ch, wide, layer_stride, out_ch, dilation=layer_rate,
                                                         **norm, **variant)
                    out_ch_here = wide
                else:
                    # Between expansions: the previous block's expanded tensor has this block's shape exactly when
                    # that block keeps resolution and width (the blocks that carry the paper's shortcut).
                    join = (shortcut == "expansion" and previous is not None and previous.stride == 1
                            and previous.in_channels == previous.out_channels == in_ch
                            and previous.hidden_channels == int(round(in_ch * t)))
                    if t != 1 and stride == 2 and c == 160:
                        # The expansion output inside the first c=160 block: paper §6.2 "layer 15", SSDLite's first
                        # map. It is computed before this block's stride, so its stride is the one before the block.
                        info.append(FeatureInfo(f"layer{idx + 1}_expand", int(round(in_ch * t)),
                                                current_stride // layer_stride, idx, expand=True))
                    layer = InvertedResidual(in_ch, out_ch, layer_stride, t, dilation=layer_rate, **norm, **variant,
                                             join_expansion=join)
                    out_ch_here = out_ch
                layers.append(layer)
                previous, in_ch = layer, out_ch_here
                if i == n - 1:
                    info.append(FeatureInfo(f"layer{idx + 1}", in_ch, current_stride, idx))
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
        return find_tap(self.feature_info, name)

    def _walk(self, x: Tensor, last: int) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        """Yield (index, output, expansion output or None) for ``features[0..last]``."""
        thread = self.shortcut == "expansion"  # otherwise no expanded tensor is kept alive past its block
        expanded: Tensor | None = None
        for idx, layer in enumerate(self.features):
            if idx > last:
                break
            if isinstance(layer, _Bottleneck) and (thread or layer.has_expand):
                x, expanded = layer.forward_pair(x, expanded if thread else None)
                yield idx, x, expanded
                if not thread:
                    expanded = None
            else:
                x, expanded = layer(x), None
                yield idx, x, None

    def forward_features(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Run the body once, as far as the deepest requested tap, and return ``{name: tensor}`` for each tap."""
        wanted = [self.tap(n) for n in taps]
        by_module: dict[int, list[FeatureInfo]] = {}
        for f in wanted:
            by_module.setdefault(f.module, []).append(f)
        out: dict[str, Tensor] = {}
        for idx, y, expanded in self._walk(x, max(by_module)):
            for f in by_module.get(idx, []):
                out[f.name] = expanded if f.expand else y
        return {n: out[n] for n in taps}

    def forward(self, x: Tensor) -> Tensor:
        if self.shortcut == "expansion":  # expanded tensors cross block boundaries: thread them through the walk
            last = self.feature_info[-1].name
            x = self.forward_features(x, [last])[last]
        else:
            x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x) if self.num_classes > 0 else x


def mobilenet_v2(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    output_stride: int = 32,
    dropout: float = 0.2,
    small_input: bool = False,
    expand_ratio: float | None = None,
    block: str = "inverted",
    shortcut: str = "bottleneck",
    projection_activation: str = "none",
    preactivation: bool = False,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    pretrained: str | Path | None = None,
) -> MobileNetV2:
    """MobileNetV2 classifier.

    Args:
        num_classes: classifier outputs (1000 for ImageNet).
        width_mult: width multiplier α (0.35, 0.5, 0.75, 1.0, 1.4 are the paper's).
        output_stride: 32, 16 or 8 (dilated).
        dropout: dropout before the classifier.
        small_input: CIFAR-10 adaptation (stride 1 in the stem and the second row; 32×32 → 4×4).
        expand_ratio, block, shortcut, projection_activation, preactivation: the ablation variants
            (see ``MobileNetV2``); the defaults are the paper's design.
        bn_eps, bn_momentum: BatchNorm settings (PyTorch's defaults; TF-slim's recipe is ε 1e-3, momentum 0.003).
        pretrained: ``"imagenet"`` (torchvision's IMAGENET1K_V1 through its weights API, α = 1 only), a path to a
            torchvision-format state dict or a mnv2_vision checkpoint, or ``None`` for random init. A classifier whose
            shape differs from the file's (fine-tuning to new classes) is reported and left at its init.
    """
    from .weights import load_pretrained

    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, output_stride=output_stride, dropout=dropout,
                        small_input=small_input, expand_ratio=expand_ratio, block=block, shortcut=shortcut,
                        projection_activation=projection_activation, preactivation=preactivation, bn_eps=bn_eps,
                        bn_momentum=bn_momentum)
    if pretrained is not None:
        load_pretrained(model, pretrained, width_mult=width_mult, prefix="", optional=("classifier.",))
    return model
