"""DeepLabv3 on a tapped backbone (Chen et al. 2017; MobileNetV2 paper §6.3, Table 7).

Read top to bottom: ``ImagePooling`` → ``ASPP`` (the "full" head: 1×1 + three atrous 3×3 + image pooling, or the
paper's mobile "lite" head: 1×1 + image pooling) → ``DeepLabV3`` (backbone tap → head → classifier → upsample) →
the ``deeplabv3_mobilenet_v2`` builder. Layer order and widths follow TF DeepLab's ``model.py``
(``mobilenetv2_coco_voc_trainaug``): every head conv is conv → BN → ReLU, the concatenation is projected by a
1×1 conv to 256 channels and dropped out (keep 0.9), and a 1×1 conv with bias gives the logits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import ConvNormAct

__all__ = ["ASPP_KINDS", "ImagePooling", "ASPP", "init_segmentation_head", "DeepLabV3", "deeplabv3_mobilenet_v2",
           "deeplabv3_mobilenet_v1"]

ASPP_KINDS = ("lite", "full")
# TF DeepLab's atrous rates at output stride 16; they double at output stride 8 (same field of view in pixels).
BASE_ATROUS_RATES = (6, 12, 18)
BASE_OUTPUT_STRIDE = 16


class _PoolingBatchNorm(nn.BatchNorm2d):
    """BatchNorm for the (N, C, 1, 1) image-pooling tensor that also trains on a batch of one.

    With N = 1 there is a single value per channel and PyTorch refuses to normalise ("Expected more than 1 value per
    channel when training"; the DeepLab crash users hit on a last batch of one). TF normalises that lone value to
    exactly ``beta`` (zero variance), which carries no information either, so such a batch is normalised with the
    running statistics instead and leaves them untouched. Batches of two or more behave exactly like BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def default_atrous_rates(stride: int) -> tuple[int, ...]:
    """The full head's rates for features at ``stride``: (6, 12, 18) at 16, doubled at 8 (same field of view)."""
    return tuple(max(1, r * BASE_OUTPUT_STRIDE // stride) for r in BASE_ATROUS_RATES)


class ImagePooling(nn.Sequential):
    """Global average pool → 1×1 conv → BN → ReLU, broadcast back to the feature size (DeepLabv3 §3.3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            _PoolingBatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        # A 1×1 map upsampled bilinearly is a constant map, so no interpolation: the pooled values are broadcast to
        # the feature size by a multiplication with ones (exact: v · 1.0 = v). Not `expand`: litert-torch 0.10 turns
        # it into a BROADCAST_TO of the NCHW (N, C, 1, 1) tensor to an NHWC shape (N, h, w, C), which LiteRT refuses at
        # allocate_tensors; a broadcasting multiply is an op every export target (ONNX, LiteRT, OpenVINO) runs.
        return super().forward(x) * torch.ones_like(x[:, :1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling.

    Args:
        in_channels: channels of the tapped feature map.
        out_channels: width of every branch and of the projection (256 in the paper).
        atrous_rates: dilation of each 3×3 branch; empty for the paper's mobile head (1×1 + image pooling only).
        dropout: dropout after the projection (TF DeepLab: keep_prob 0.9).

    Shapes: (N, in_channels, h, w) → (N, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, atrous_rates: Sequence[int] = (),
                 dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1, activation=nn.ReLU)]
        for rate in atrous_rates:
            branches.append(ConvNormAct(in_channels, out_channels, 3, dilation=rate, activation=nn.ReLU))
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvNormAct(len(branches) * out_channels, out_channels, 1, activation=nn.ReLU),
            nn.Dropout(dropout),
        )
        self.atrous_rates = tuple(atrous_rates)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def init_segmentation_head(head: nn.Module, classifier: nn.Conv2d) -> None:
    """TF DeepLab's initialisation: He-normal convs and unit BatchNorm in the head; the logits layer truncated normal
    σ 0.01 with zero bias, so training starts from near-uniform scores."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(classifier.weight, std=0.01, a=-0.02, b=0.02)
    nn.init.zeros_(classifier.bias)


class DeepLabV3(nn.Module):
    """DeepLabv3: a backbone's segmentation tap → ASPP → 1×1 classifier → bilinear upsampling to the input size.

    The backbone declares which feature map the head reads (``SEGMENTATION_TAP``) and its channels and stride
    (``feature_info``); the head sizes itself from those, so any backbone with the same contract plugs in. Layers
    of the backbone past the tap (MobileNetV2's 1280-wide 1×1 conv) are removed: the head never reads them, and
    the paper's parameter counts (Table 7, "MNet V2*") leave them out.

    Args:
        backbone: a body with ``SEGMENTATION_TAP``, ``feature_info`` (whose ``module`` indexes
            ``backbone.features``) and ``forward_features(x, taps)``; it is truncated in place after its tap.
        num_classes: output classes (21 for PASCAL VOC: background + 20).
        aspp: ``"lite"`` (1×1 + image pooling, the paper's mobile head) or ``"full"`` (+ three atrous 3×3).
        channels: width of the head (256).
        atrous_rates: rates of the full head's 3×3 branches; ``None`` = (6, 12, 18) scaled by 16 / tap stride.
        dropout: dropout after the ASPP projection.

    ``forward(x)`` with x (N, 3, H, W), any H and W, returns ``{"out": logits (N, num_classes, H, W)}`` in both
    training and evaluation.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, aspp: str = "lite", channels: int = 256,
                 atrous_rates: Sequence[int] | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if aspp not in ASPP_KINDS:
            raise ValueError(f"aspp must be one of {ASPP_KINDS}, got {aspp!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.tap_name: str = backbone.SEGMENTATION_TAP
        tap = backbone.tap(self.tap_name)
        backbone.features = backbone.features[: tap.module + 1]
        backbone.feature_info = tuple(f for f in backbone.feature_info if f.module <= tap.module)
        self.backbone = backbone
        self.output_stride = tap.stride
        if atrous_rates is None:
            atrous_rates = default_atrous_rates(tap.stride)
        self.aspp_kind = aspp
        self.num_classes = num_classes
        self.head = ASPP(tap.channels, channels, atrous_rates if aspp == "full" else (), dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self._init_head()

    def _init_head(self) -> None:
        init_segmentation_head(self.head, self.classifier)

    def forward(self, x: Tensor, upsample: bool = True) -> dict[str, Tensor]:
        """``{"out": logits}`` at the input size; ``upsample=False``: at the output stride (what the benchmark times
        as the network, the upsampling being post-processing there)."""
        size = x.shape[-2:]
        feats = self.backbone.forward_features(x, [self.tap_name])[self.tap_name]  # (N, C_tap, ⌈H/os⌉, ⌈W/os⌉)
        logits = self.classifier(self.head(feats))
        if not upsample:
            return {"out": logits}
        # Bilinear upsampling of logits to the input size (DeepLabv3 §4); align_corners=False is PyTorch's convention
        # and keeps pixel centres aligned for sizes that are not 16k+1.
        return {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}


def deeplabv3_mobilenet_v2(
    *,
    num_classes: int = 21,
    width_mult: float = 1.0,
    output_stride: int = 16,
    aspp: str = "lite",
    pretrained: str | Path | None = None,
) -> DeepLabV3:
    """DeepLabv3 with a MobileNetV2 backbone read at its 320-channel second-to-last map (paper's "MNet V2*").

    At 513×513, 21 classes, OS 16: ``aspp="lite"`` ≈ 2.11 M parameters / 2.74 B MAdds (paper: 2.11 M / 2.75 B,
    75.32 VOC val mIoU after COCO pre-training); ``aspp="full"`` ≈ 4.52 M / 5.36 B (paper: 4.52 M / 5.8 B).

    Args:
        num_classes: output classes (21 for PASCAL VOC).
        width_mult: backbone width multiplier α.
        output_stride: 16 (default) or 8; the backbone is dilated past it and the atrous rates double at 8.
        aspp: ``"lite"`` (1×1 + image pooling) or ``"full"`` (+ 3×3 at rates 6/12/18, or 12/24/36 at OS 8).
        pretrained: backbone weights: ``"imagenet"`` or a MobileNetV2 classifier file (its classifier is skipped;
            the head starts from random init), a whole DeepLabV3 checkpoint / state dict to fine-tune (every tensor
            that fits is loaded; the last 1×1 conv is re-initialised and reported when ``num_classes`` differs), or
            ``None`` for random init.
    """
    from .mobilenetv2 import MobileNetV2
    from .weights import holds_whole_model, load_pretrained

    if aspp not in ASPP_KINDS:
        raise ValueError(f"deeplabv3_mobilenet_v2: aspp must be one of {ASPP_KINDS}, got {aspp!r}")
    if output_stride not in (8, 16):
        raise ValueError(f"deeplabv3_mobilenet_v2: output_stride must be 8 or 16 (dense prediction), "
                         f"got {output_stride}")
    backbone = MobileNetV2(num_classes=0, width_mult=width_mult, output_stride=output_stride)
    whole = pretrained is not None and holds_whole_model(pretrained)
    if pretrained is not None and not whole:
        # Loaded before DeepLabV3 truncates the backbone, so the file's full body (incl. the 1280 conv) matches.
        load_pretrained(backbone, pretrained, width_mult=width_mult, optional=("classifier.",))
    model = DeepLabV3(backbone, num_classes=num_classes, aspp=aspp)
    if whole:  # fine-tuning a trained segmenter: the last 1×1 conv is re-initialised if the class count differs
        load_pretrained(model, pretrained, width_mult=width_mult, optional=("classifier.",))
    return model


def deeplabv3_mobilenet_v1(
    *,
    num_classes: int = 21,
    width_mult: float = 1.0,
    output_stride: int = 16,
    aspp: str = "full",
    pretrained: str | Path | None = None,
) -> DeepLabV3:
    """DeepLabv3 with a MobileNetV1 backbone read at its last 1024-channel map, the paper's "MNet V1" row (Table 7,
    full ASPP, OS 16: 11.15 M params, 14.25 B MAdds by the paper's count, 75.29 VOC val mIoU); the same
    ``DeepLabV3`` as the V2 builder, sized from the backbone's ``SEGMENTATION_TAP``.

    Args:
        num_classes, width_mult, output_stride: as ``deeplabv3_mobilenet_v2``.
        aspp: ``"full"`` (default: the only head the paper reports with V1) or ``"lite"``.
        pretrained: a MobileNetV1 classifier checkpoint or state dict (no official ImageNet weights exist for V1 in
            PyTorch); its classifier is reported as skipped. The head always starts from random init.
    """
    from .mobilenetv1 import MobileNetV1, load_v1_weights

    if aspp not in ASPP_KINDS:
        raise ValueError(f"deeplabv3_mobilenet_v1: aspp must be one of {ASPP_KINDS}, got {aspp!r}")
    if output_stride not in (8, 16):
        raise ValueError(f"deeplabv3_mobilenet_v1: output_stride must be 8 or 16 (dense prediction), "
                         f"got {output_stride}")
    backbone = MobileNetV1(num_classes=0, width_mult=width_mult, output_stride=output_stride)
    if pretrained is not None:
        load_v1_weights(backbone, pretrained)
    return DeepLabV3(backbone, num_classes=num_classes, aspp=aspp)
