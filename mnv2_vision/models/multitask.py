"""One backbone pass, boxes and masks: SSDLite and DeepLabv3 heads on one MobileNet body (docs/design.md#multi-task).

Read top to bottom: ``SegDecoder`` (the decoder of sharing "os32") → ``tie_dilated_tail`` (the "twin" tail)
→ ``SSDLiteDeepLabV3`` → ``_ssdlite_deeplabv3`` (construction from any backbone family) → the registered builders.

SSDLite reads the body at output stride 32 (MobileNetV2: ``layer15_expand`` at 16, ``layer19`` at 32), DeepLab at
output stride 16 (``layer18``, the last stages dilated). ``sharing`` picks how one pass serves both (design notes):

- ``"os32"`` (a): the body at stride 32 for both heads. DeepLab's ASPP reads ``layer18`` at stride 32 and a light
  DeepLabv3+-style decoder adds the backbone's stride-16 and stride-8 maps (``DECODER_TAPS``: the expansion SSDLite
  reads, and the end of the c = 32 stage) back: cheapest; the detector is exactly SSDLite.
- ``"os16"`` (b): the body at output stride 16 (dilated); the segmentation head is exactly DeepLab's, and SSDLite's
  stride-32 map is made by one more stride-2 layer (a 3×3 depthwise conv) on the stride-16 ``layer19``. The last
  stages run at 4× the pixels.
- ``"twin"`` (c): the body is shared up to stride 16, then its last stages run twice with the **same weights**:
  strided for SSDLite (exactly SSDLite) and dilated for DeepLab (exactly DeepLab); the dilated copy costs its pixels.

The measured trade-off (parameters, MAdds, latency, accuracy after one budget) is in docs/multitask.md; ``os32`` is the
default. ``forward`` returns SSDLite's ``cls_logits`` / ``bbox_regression`` and DeepLab's ``out`` (segmentation
logits at the input size) in one dict, the same in training and evaluation, so the detection and segmentation code
paths (loss, post-processing, mIoU) take the model as they take the single-task ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..ops.anchors import DEFAULT_ASPECT_RATIOS
from .deeplabv3 import ASPP, ASPP_KINDS, default_atrous_rates, init_segmentation_head
from .layers import ConvNormAct
from .ssdlite import EXTRA_DEPTHS, MIN_DEPTH, SSDLite

__all__ = ["SHARING", "SegDecoder", "tie_dilated_tail", "SSDLiteDeepLabV3", "ssdlite320_deeplabv3_mobilenet_v2",
           "ssdlite320_deeplabv3_mobilenet_v1"]

SHARING = ("os32", "os16", "twin")


class SegDecoder(nn.Module):
    """DeepLabv3+'s decoder (Chen et al. 2018 §3.2), thinned for a mobile budget and applied once per finer map: the
    ASPP output (stride 32) is reduced to ``channels``; then for each tap, coarse to fine, the running map is
    upsampled to the tap's size, the tap is projected to ``low_channels`` (48 in DeepLabv3+), and a
    depthwise-separable 3×3 conv fuses the concatenation back to ``channels``.

    Args:
        high_channels: channels of the ASPP output.
        low_channels_in: channels of each backbone tap, coarse to fine (e.g. stride 16, then stride 8).
        channels: width of the decoder (and of its output).
        low_channels: width of each tap's projection.

    Shapes: (N, high, h, w), [(N, c_i, h_i, w_i), ...] → (N, channels, h_last, w_last).
    """

    def __init__(self, high_channels: int, low_channels_in: Sequence[int], channels: int = 64,
                 low_channels: int = 48) -> None:
        super().__init__()
        both = channels + low_channels
        self.reduce = ConvNormAct(high_channels, channels, 1, activation=nn.ReLU)
        self.lows = nn.ModuleList(ConvNormAct(c, low_channels, 1, activation=nn.ReLU) for c in low_channels_in)
        self.fuses = nn.ModuleList(nn.Sequential(ConvNormAct(both, both, 3, groups=both, activation=nn.ReLU),
                                                 ConvNormAct(both, channels, 1, activation=nn.ReLU))
                                   for _ in low_channels_in)
        self.out_channels = channels

    def forward(self, high: Tensor, lows: Sequence[Tensor]) -> Tensor:
        x = self.reduce(high)  # before upsampling: the interpolation then moves `channels` maps, not the ASPP's 256
        for low, project, fuse in zip(lows, self.lows, self.fuses):
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, project(low)], dim=1))
        return x


def tie_dilated_tail(dilated: nn.Module, strided: nn.Module) -> nn.Module:
    """Make ``dilated`` (the tail of an output-stride-16 body) run on the weights of ``strided`` (the same layers at
    output stride 32), in place, and return it.

    Every module of ``strided`` is put into ``dilated`` at the same place, except convolutions whose stride, padding
    or dilation differ (the depthwise convs the output stride changes): those stay ``dilated``'s own, with the
    weight (and bias) Parameters of ``strided``'s. So the two paths share every parameter and BatchNorm statistic;
    the state dict lists the shared tensors under both names.
    """
    own = dict(dilated.named_modules())
    for name, src in strided.named_modules():
        if not name:
            continue
        tgt = own.get(name)
        if tgt is None or type(tgt) is not type(src):
            raise ValueError(f"dilated and strided tails differ at {name!r}: {type(tgt).__name__} vs "
                             f"{type(src).__name__}")
        if isinstance(src, nn.Conv2d) and (src.stride, src.padding, src.dilation) != (tgt.stride, tgt.padding,
                                                                                      tgt.dilation):
            tgt.weight = src.weight
            if src.bias is not None:
                tgt.bias = src.bias
            continue
        if isinstance(src, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            parent, _, leaf = name.rpartition(".")
            dilated.get_submodule(parent)._modules[leaf] = src
    return dilated


class SSDLiteDeepLabV3(SSDLite):
    """SSDLite and DeepLabv3 on one backbone pass.

    The detection part is ``SSDLite`` (same modules and state-dict keys: ``backbone``, ``extras``, ``head``, so an
    SSDLite checkpoint fine-tunes into it); the segmentation part is an ASPP (``seg_head``), for ``"os32"`` a decoder
    (``seg_decoder``), and a 1×1 classifier (``seg_classifier``). Both size themselves from the backbone's declared
    taps (``DETECTION_TAPS``, ``SEGMENTATION_TAP``, ``DECODER_TAPS``).

    Args:
        backbone: the body at output stride 32 (``"os32"``, ``"twin"``) or 16 (``"os16"``).
        num_classes: detection outputs per box, background included.
        seg_num_classes: segmentation classes (background included).
        sharing: ``"os32"``, ``"os16"`` or ``"twin"`` (module docstring).
        dilated_backbone: ``"twin"`` only: the same body built at output stride 16; its layers after the last
            stride-16 map become the dilated tail, tied to ``backbone``'s weights (``tie_dilated_tail``).
        aspp: ``"lite"`` (1×1 + image pooling, the paper's mobile head) or ``"full"``.
        seg_channels: width of the ASPP (256).
        decoder_channels: width of the ``"os32"`` decoder.
        extra_depths, min_scale, max_scale, aspect_ratios, bn_eps, bn_momentum: as ``SSDLite``.

    ``forward(x)`` → ``{"cls_logits": (N, A, num_classes), "bbox_regression": (N, A, 4), "out": (N, K_seg, H, W)}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        seg_num_classes: int,
        sharing: str = "os32",
        dilated_backbone: nn.Module | None = None,
        aspp: str = "lite",
        seg_channels: int = 256,
        decoder_channels: int = 64,
        extra_depths: Sequence[int] = EXTRA_DEPTHS,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
        if aspp not in ASPP_KINDS:
            raise ValueError(f"aspp must be one of {ASPP_KINDS}, got {aspp!r}")
        if seg_num_classes < 1:
            raise ValueError(f"seg_num_classes must be ≥ 1, got {seg_num_classes}")
        wanted_os = 16 if sharing == "os16" else 32
        if getattr(backbone, "output_stride", None) != wanted_os:
            raise ValueError(f"sharing={sharing!r} needs the backbone at output stride {wanted_os}, got "
                             f"{getattr(backbone, 'output_stride', None)}")
        if (sharing == "twin") != (dilated_backbone is not None):
            raise ValueError("dilated_backbone is required for sharing='twin' and only for it")
        super().__init__(backbone, num_classes, extra_depths=extra_depths, min_scale=min_scale, max_scale=max_scale,
                         aspect_ratios=aspect_ratios, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.sharing, self.seg_num_classes, self.aspp_kind = sharing, seg_num_classes, aspp
        self.seg_tap: str = type(backbone).SEGMENTATION_TAP
        seg_info = backbone.tap(self.seg_tap)
        if sharing == "os16":
            # The stride-16 body leaves SSDLite's second map at stride 16: one more stride-2 layer (a depthwise 3×3,
            # SSDLite's own kind of layer) restores its stride-32 geometry, and every level's size, for the anchors.
            ch = backbone.tap(self.taps[-1]).channels
            self.downsample = ConvNormAct(ch, ch, 3, stride=2, groups=ch, bn_eps=bn_eps, bn_momentum=bn_momentum)
            self.tap_strides = (*self.tap_strides[:-1], 2 * self.tap_strides[-1])
            self._anchor_cache.clear()
        self.backbone_taps = tuple(dict.fromkeys([*self.taps, self.seg_tap]))
        seg_stride = seg_info.stride
        if sharing == "twin":
            assert dilated_backbone is not None
            self.twin_input = self._last_stride16_tap(backbone)
            start = backbone.tap(self.twin_input).module + 1
            if dilated_backbone.tap(self.seg_tap).module != seg_info.module:
                raise ValueError("dilated_backbone must be the same body as backbone, at output stride 16")
            tail = nn.Sequential(*list(dilated_backbone.features)[start: seg_info.module + 1])
            self.seg_tail = tie_dilated_tail(tail, nn.Sequential(*list(backbone.features)[start: seg_info.module + 1]))
            self.backbone_taps = tuple(dict.fromkeys([*self.taps, self.twin_input]))
            seg_stride = 16
        rates = default_atrous_rates(seg_stride) if aspp == "full" else ()
        self.seg_head = ASPP(seg_info.channels, seg_channels, rates)
        head_channels = seg_channels
        if sharing == "os32":
            self.decoder_taps: tuple[str, ...] = tuple(type(backbone).DECODER_TAPS)
            self.seg_decoder = SegDecoder(seg_channels, [backbone.tap(t).channels for t in self.decoder_taps],
                                          decoder_channels)
            self.backbone_taps = tuple(dict.fromkeys([*self.backbone_taps, *self.decoder_taps]))
            head_channels = decoder_channels
        self.seg_classifier = nn.Conv2d(head_channels, seg_num_classes, 1)
        init_segmentation_head(nn.ModuleList([self.seg_head, getattr(self, "seg_decoder", nn.Identity())]),
                               self.seg_classifier)
        if sharing == "os16":
            nn.init.trunc_normal_(self.downsample[0].weight, std=0.03, a=-0.06, b=0.06)  # SSDLite's own layers' init

    @staticmethod
    def _last_stride16_tap(backbone: nn.Module) -> str:
        """The last block output at stride ≤ 16: the twin tail starts after it."""
        taps = [f for f in backbone.feature_info if f.stride <= 16 and not f.expand]
        return taps[-1].name

    def forward(self, images: Tensor, upsample: bool = True) -> dict[str, Tensor]:
        """SSDLite's raw outputs and ``"out"``: the segmentation logits at the input size (``upsample=False``: at
        the segmentation head's stride)."""
        taps = self.backbone.forward_features(images, self.backbone_taps)
        features = [taps[t] for t in self.taps]
        if self.sharing == "os16":
            features[-1] = self.downsample(features[-1])
        out = self.detect(features)
        seg = self.seg_tail(taps[self.twin_input]) if self.sharing == "twin" else taps[self.seg_tap]
        seg = self.seg_head(seg)
        if self.sharing == "os32":
            seg = self.seg_decoder(seg, [taps[t] for t in self.decoder_taps])
        out["out"] = self.seg_classifier(seg)
        if upsample:  # bilinear upsampling of the logits to the input size, as DeepLabV3 does
            out["out"] = F.interpolate(out["out"], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return out


def _ssdlite_deeplabv3(backbone_fn, num_classes: int, seg_num_classes: int, *, width_mult: float, sharing: str,
                       aspp: str, pretrained: str | Path | None, bn_eps: float, bn_momentum: float, min_scale: float,
                       max_scale: float, load_backbone) -> SSDLiteDeepLabV3:
    """The pair on ``backbone_fn(output_stride)`` with SSDLite's TF layout (extra depths scaled by α); ``pretrained``:
    a whole multi-task or SSDLite file fine-tunes everything that fits, anything else goes to ``load_backbone``."""
    from .weights import holds_whole_model, load_pretrained

    if sharing not in SHARING:
        raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
    backbone = backbone_fn(16 if sharing == "os16" else 32)
    whole = pretrained is not None and holds_whole_model(pretrained)
    if pretrained is not None and not whole:
        load_backbone(backbone, pretrained)
    extra_depths = tuple(max(int(d * width_mult), MIN_DEPTH) for d in EXTRA_DEPTHS)
    model = SSDLiteDeepLabV3(backbone, num_classes, seg_num_classes, sharing=sharing, aspp=aspp,
                             dilated_backbone=backbone_fn(16) if sharing == "twin" else None,
                             extra_depths=extra_depths, min_scale=min_scale, max_scale=max_scale, bn_eps=bn_eps,
                             bn_momentum=bn_momentum)
    if whole:
        # A multi-task file (other class counts: the class convs start fresh) or an SSDLite one (the segmentation
        # layers are not in it and keep their init); every skipped tensor is reported.
        load_pretrained(model, pretrained, width_mult=width_mult,
                        optional=("head.cls_heads.", "seg_", "downsample."))
    return model


def ssdlite320_deeplabv3_mobilenet_v2(
    *,
    num_classes: int = 91,
    seg_num_classes: int = 21,
    width_mult: float = 1.0,
    sharing: str = "os32",
    aspp: str = "lite",
    pretrained: str | Path | None = None,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.03,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
) -> SSDLiteDeepLabV3:
    """SSDLite (boxes) and DeepLabv3 (per-pixel classes) on one MobileNetV2 pass, 320×320 input by default.

    Args:
        num_classes: detection outputs per box incl. background (91 = COCO's id space).
        seg_num_classes: segmentation classes incl. background (21 = VOC).
        width_mult: backbone width multiplier α (the extra layers scale with it, as in SSDLite).
        sharing: ``"os32"`` (default), ``"os16"`` or ``"twin"``: how the heads share the strides (module docstring).
        aspp: ``"lite"`` or ``"full"`` segmentation head.
        pretrained: ``"imagenet"`` or a classifier file (backbone only), or a whole multi-task / SSDLite checkpoint
            or state dict to fine-tune (class convs of another class count and absent segmentation layers are
            reported and start from their init).
        bn_eps, bn_momentum: BatchNorm settings of the backbone and the detection layers (SSDLite's).
        min_scale, max_scale: anchor scales.
    """
    from .mobilenetv2 import MobileNetV2
    from .weights import load_pretrained

    def body(output_stride: int) -> MobileNetV2:
        return MobileNetV2(num_classes=0, width_mult=width_mult, output_stride=output_stride, bn_eps=bn_eps,
                           bn_momentum=bn_momentum)

    return _ssdlite_deeplabv3(
        body, num_classes, seg_num_classes, width_mult=width_mult, sharing=sharing, aspp=aspp, pretrained=pretrained,
        bn_eps=bn_eps, bn_momentum=bn_momentum, min_scale=min_scale, max_scale=max_scale,
        load_backbone=lambda b, src: load_pretrained(b, src, width_mult=width_mult, optional=("classifier.",)))


def ssdlite320_deeplabv3_mobilenet_v1(
    *,
    num_classes: int = 91,
    seg_num_classes: int = 21,
    width_mult: float = 1.0,
    sharing: str = "os32",
    aspp: str = "lite",
    pretrained: str | Path | None = None,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.03,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
) -> SSDLiteDeepLabV3:
    """The same pair on MobileNetV1 (the paper's baseline backbone), sized from its declared taps.

    Args:
        num_classes, seg_num_classes, width_mult, sharing, aspp, bn_eps, bn_momentum, min_scale, max_scale: as
            ``ssdlite320_deeplabv3_mobilenet_v2``.
        pretrained: a MobileNetV1 classifier file (backbone only), or a whole multi-task / SSDLite file.
    """
    from .mobilenetv1 import MobileNetV1, load_v1_weights

    def body(output_stride: int) -> MobileNetV1:
        return MobileNetV1(num_classes=0, width_mult=width_mult, output_stride=output_stride, bn_eps=bn_eps,
                           bn_momentum=bn_momentum)

    return _ssdlite_deeplabv3(
        body, num_classes, seg_num_classes, width_mult=width_mult, sharing=sharing, aspp=aspp, pretrained=pretrained,
        bn_eps=bn_eps, bn_momentum=bn_momentum, min_scale=min_scale, max_scale=max_scale,
        load_backbone=load_v1_weights)
