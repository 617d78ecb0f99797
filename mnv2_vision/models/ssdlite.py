"""SSDLite (MobileNetV2 paper §6.2, Table 6; TF Object Detection API ``ssdlite_mobilenet_v2_coco``).

Read top to bottom: the extra-layer and prediction blocks → ``SSDLiteHead`` → ``SSDLite`` (backbone taps + extra
layers + head + anchors) → ``_ssdlite`` (construction from any backbone module) → the registered builder.

SSDLite is SSD with every regular 3×3 convolution of the prediction layers replaced by a depthwise-separable one
(paper §6.2). The network returns raw class logits and box offsets, the same in train and eval; matching, the loss
and NMS are functions in ``mnv2_vision.ops`` wired together by the training system.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops.anchors import DEFAULT_ASPECT_RATIOS, num_anchors_per_location, ssd_anchors
from .layers import ConvNormAct
from .mobilenetv2 import MobileNetV2

__all__ = ["EXTRA_DEPTHS", "init_conv", "extra_block", "prediction_block", "SSDLiteHead", "SSDLite",
           "ssdlite320_mobilenet_v2", "ssdlite320_mobilenet_v1"]

# Depths of the four extra layers after the backbone (TF feature_map_layout layer_depth [-1, -1, 512, 256, 256, 128]).
EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)
MIN_DEPTH = 16  # TF's min_depth for width-scaled extra layers


def init_conv(conv: nn.Conv2d) -> None:
    """The initialisation of every conv SSDLite adds (extra layers, predictors): TF's truncated normal σ 0.03 cut at
    2σ, zero bias. Fine-tuning re-initialises a class layer with it (``lit/finetune.py``)."""
    nn.init.trunc_normal_(conv.weight, std=0.03, a=-0.06, b=0.06)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def extra_block(in_channels: int, out_channels: int, bn_eps: float, bn_momentum: float) -> nn.Sequential:
    """1×1 conv to half depth → 3×3 depthwise stride 2 → 1×1 conv to depth, each with BN and ReLU6.

    TF's ``insert_1x1_conv`` followed by a separable 3×3 convolution of stride 2 (docs/design.md#ssdlite).
    """
    mid = out_channels // 2
    norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
    return nn.Sequential(
        ConvNormAct(in_channels, mid, kernel_size=1, **norm),
        ConvNormAct(mid, mid, kernel_size=3, stride=2, groups=mid, **norm),
        ConvNormAct(mid, out_channels, kernel_size=1, **norm),
    )


def prediction_block(in_channels: int, out_channels: int, bn_eps: float, bn_momentum: float) -> nn.Sequential:
    """3×3 depthwise → BN → ReLU6 → 1×1 conv with bias: the SSDLite predictor (paper §6.2)."""
    return nn.Sequential(
        ConvNormAct(in_channels, in_channels, kernel_size=3, groups=in_channels, bn_eps=bn_eps,
                    bn_momentum=bn_momentum),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


class SSDLiteHead(nn.Module):
    """Class and box predictors, one pair per feature level.

    Args:
        in_channels: channels of each level's feature map.
        num_anchors: boxes per cell on each level.
        num_classes: outputs per box, background included.
        bn_eps, bn_momentum: BatchNorm settings of the depthwise convs.
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int,
                 bn_eps: float = 1e-3, bn_momentum: float = 0.03) -> None:
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"{len(in_channels)} feature levels but anchors for {len(num_anchors)}")
        self.num_classes = num_classes
        self.cls_heads = nn.ModuleList(
            prediction_block(c, a * num_classes, bn_eps, bn_momentum) for c, a in zip(in_channels, num_anchors))
        self.box_heads = nn.ModuleList(
            prediction_block(c, a * 4, bn_eps, bn_momentum) for c, a in zip(in_channels, num_anchors))

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        # (N, A·K, h, w) → (N, h·w·A, K): rows ordered y, x, box, as ops.anchors orders the anchors. Each level is
        # flattened to (N, h·w·A·K) (a view when the convs run channels-last) and the levels are concatenated
        # before the one reshape, so an exported graph computes the dynamic batch's shape twice, not per level.
        cls = torch.cat([head(f).permute(0, 2, 3, 1).flatten(1) for head, f in zip(self.cls_heads, features)], 1)
        box = torch.cat([head(f).permute(0, 2, 3, 1).flatten(1) for head, f in zip(self.box_heads, features)], 1)
        return cls.view(cls.shape[0], -1, self.num_classes), box.view(box.shape[0], -1, 4)  # (N, A, K), (N, A, 4)


class SSDLite(nn.Module):
    """SSDLite detector on any backbone that declares its detection taps.

    The backbone must offer ``feature_info`` (``FeatureInfo`` records with name, channels and stride), a class
    attribute ``DETECTION_TAPS`` naming two of them (stride 16 and stride 32 for MobileNetV2: the expansion output
    of layer 15 and the final 1280-channel conv) and ``forward_features(x, taps) -> {name: tensor}``. The head is
    sized from that data, never from a dummy forward.

    Args:
        backbone: the feature extractor (its init and weights are kept).
        num_classes: class outputs per box, background (index 0) included: 91 for COCO's id space.
        extra_depths: output channels of the extra stride-2 layers after the last tap.
        min_scale, max_scale, aspect_ratios, reduce_boxes_in_lowest_layer: anchor settings (``ops.anchors``).
        bn_eps, bn_momentum: BatchNorm settings of the extra layers and the head.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        extra_depths: Sequence[int] = EXTRA_DEPTHS,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
        reduce_boxes_in_lowest_layer: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be ≥ 2, got {num_classes}")
        infos = {f.name: f for f in getattr(backbone, "feature_info", ())}
        taps = tuple(getattr(type(backbone), "DETECTION_TAPS", ()))
        missing = [t for t in taps if t not in infos]
        if not taps or missing:
            raise ValueError(f"{type(backbone).__name__} must declare DETECTION_TAPS found in its feature_info; "
                             f"taps {taps}, missing {missing}, offered {sorted(infos)}")
        self.backbone = backbone
        self.taps = taps
        self.tap_strides = tuple(infos[t].stride for t in taps)
        for t, s in zip(taps, self.tap_strides):
            if s < 1 or s & (s - 1):
                raise ValueError(f"tap {t!r} has stride {s}; feature_sizes assumes a power of two")
        self.num_classes = num_classes
        self.anchor_settings = dict(min_scale=min_scale, max_scale=max_scale, aspect_ratios=tuple(aspect_ratios),
                                    reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)

        channels = [infos[t].channels for t in taps]
        extras = []
        for depth in extra_depths:
            extras.append(extra_block(channels[-1], depth, bn_eps, bn_momentum))
            channels.append(depth)
        self.extras = nn.ModuleList(extras)
        self.feature_channels = tuple(channels)
        self.num_anchors = num_anchors_per_location(len(channels), aspect_ratios, reduce_boxes_in_lowest_layer)
        self.head = SSDLiteHead(channels, self.num_anchors, num_classes, bn_eps, bn_momentum)
        self._anchor_cache: dict[tuple[int, int, str], Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        # TF's truncated normal σ 0.03 (cut at 2σ) for the layers SSDLite adds; the backbone keeps its own init.
        for m in [*self.extras.modules(), *self.head.modules()]:
            if isinstance(m, nn.Conv2d):
                init_conv(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """``(h, w)`` of every prediction level for an input of ``image_size`` ``(H, W)``, without a forward.

        Every stride-2 layer (backbone and extras) is a 3×3 conv with padding 1, mapping n to ``ceil(n / 2)``.
        """
        def halve(n: int, times: int) -> int:
            for _ in range(times):
                n = math.ceil(n / 2)
            return n

        h, w = int(image_size[0]), int(image_size[1])
        sizes = [(halve(h, s.bit_length() - 1), halve(w, s.bit_length() - 1)) for s in self.tap_strides]
        for _ in self.extras:
            sizes.append((halve(sizes[-1][0], 1), halve(sizes[-1][1], 1)))
        return sizes

    def anchors(self, image_size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
        """Anchors ``(A, 4)`` xyxy in input pixels for ``image_size`` ``(H, W)``; cached per size and device."""
        key = (int(image_size[0]), int(image_size[1]), str(torch.device(device) if device is not None else "cpu"))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = ssd_anchors(self.feature_sizes(key[:2]), key[:2], device=device,
                                                  **self.anchor_settings)
        return self._anchor_cache[key]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images`` ``(N, 3, H, W)`` → ``cls_logits`` ``(N, A, num_classes)``, ``bbox_regression`` ``(N, A, 4)``."""
        taps = self.backbone.forward_features(images, self.taps)
        return self.detect([taps[t] for t in self.taps])

    def detect(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        """The extra layers and the predictors on the tapped maps (one per ``taps`` entry, at ``tap_strides``)."""
        features = list(features)
        for extra in self.extras:
            features.append(extra(features[-1]))
        cls_logits, bbox_regression = self.head(features)
        return {"cls_logits": cls_logits, "bbox_regression": bbox_regression}


def _ssdlite(
    backbone: nn.Module,
    num_classes: int,
    *,
    width_mult: float = 1.0,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.03,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
) -> SSDLite:
    """SSDLite on ``backbone`` with the TF layout: extra depths scaled by ``width_mult`` (at least 16)."""
    extra_depths = tuple(max(int(d * width_mult), MIN_DEPTH) for d in EXTRA_DEPTHS)
    return SSDLite(backbone, num_classes, extra_depths=extra_depths, min_scale=min_scale, max_scale=max_scale,
                   bn_eps=bn_eps, bn_momentum=bn_momentum)


def ssdlite320_mobilenet_v2(
    *,
    num_classes: int = 91,
    width_mult: float = 1.0,
    pretrained: str | Path | None = None,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.03,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
) -> SSDLite:
    """SSDLite with a MobileNetV2 backbone, 320×320 input by default (paper Table 6: 4.3 M params, 0.8 B MAdds).

    Args:
        num_classes: outputs per box including background: 91 = background + COCO's category ids 1..90.
        width_mult: backbone width multiplier α; the extra layers scale with it too (TF ``depth_multiplier``).
        pretrained: backbone weights: ``"imagenet"`` (torchvision's, α = 1) or a classifier file (the ImageNet
            classifier is reported as skipped; extra layers and head start from their init), or a whole SSDLite
            checkpoint / state dict to fine-tune: every tensor that fits is loaded, and the class heads' last convs
            are re-initialised (and reported as skipped) when ``num_classes`` differs from the file's.
        bn_eps, bn_momentum: BatchNorm settings for the whole network (TF: ε 1e-3; torchvision's SSDLite recipe
            uses momentum 0.03).
        min_scale, max_scale: anchor scales of the lowest and highest level.
    """
    from .weights import holds_whole_model, load_pretrained

    backbone = MobileNetV2(num_classes=0, width_mult=width_mult, bn_eps=bn_eps, bn_momentum=bn_momentum)
    model = _ssdlite(backbone, num_classes, width_mult=width_mult, bn_eps=bn_eps, bn_momentum=bn_momentum,
                     min_scale=min_scale, max_scale=max_scale)
    if pretrained is not None and holds_whole_model(pretrained):
        # Fine-tuning a trained detector, possibly to other classes: every tensor whose shape fits is loaded; the
        # class heads' last convs (sized by num_classes) are re-initialised when the class count differs.
        load_pretrained(model, pretrained, width_mult=width_mult, optional=("head.cls_heads.",))
    elif pretrained is not None:
        load_pretrained(model.backbone, pretrained, width_mult=width_mult, optional=("classifier.",))
    return model


def ssdlite320_mobilenet_v1(
    *,
    num_classes: int = 91,
    width_mult: float = 1.0,
    pretrained: str | Path | None = None,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.03,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
) -> SSDLite:
    """SSDLite with a MobileNetV1 backbone, the paper's "MNetV1 + SSDLite" baseline (Table 6: 5.1 M params, 1.3 B
    MAdds, 22.2 mAP). The same ``_ssdlite`` as the V2 builder; the backbone's ``DETECTION_TAPS`` place the head at
    ``Conv2d_11_pointwise`` (512, stride 16) and ``Conv2d_13_pointwise`` (1024, stride 32), as the TF Object Detection
    API's ``ssd_mobilenet_v1``.

    Args:
        num_classes, width_mult, bn_eps, bn_momentum, min_scale, max_scale: as ``ssdlite320_mobilenet_v2``.
        pretrained: backbone weights: a MobileNetV1 classifier checkpoint or state dict (no official ImageNet
            weights exist for V1 in PyTorch); its classifier is reported as skipped.
    """
    from .mobilenetv1 import MobileNetV1, load_v1_weights

    backbone = MobileNetV1(num_classes=0, width_mult=width_mult, bn_eps=bn_eps, bn_momentum=bn_momentum)
    model = _ssdlite(backbone, num_classes, width_mult=width_mult, bn_eps=bn_eps, bn_momentum=bn_momentum,
                     min_scale=min_scale, max_scale=max_scale)
    if pretrained is not None:
        load_v1_weights(model.backbone, pretrained)
    return model
