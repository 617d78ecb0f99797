"""Segmentation on the real `voc_coco` fixture (COCO images with VOC-class palette labels) under $MNV2_REAL_DATA."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from mnv2_vision.data.segmentation.transforms import SegEvalTransform, SegTrainTransform, pad_collate
from mnv2_vision.data.voc import VOC_CLASSES, VOCSegmentation
from mnv2_vision.eval.miou import ConfusionMatrix
from mnv2_vision.models.deeplabv3 import deeplabv3_mobilenet_v2
from mnv2_vision.ops.losses import seg_loss

from helpers import real_data


@pytest.fixture(scope="module")
def voc_root() -> Path:
    return real_data("voc_coco", "VOC2012") / "VOC2012"


def test_voc_coco_splits_and_labels(voc_root):
    train = VOCSegmentation(voc_root, "train", SegEvalTransform(), num_classes=len(VOC_CLASSES))
    val = VOCSegmentation(voc_root, "val", SegEvalTransform(), num_classes=len(VOC_CLASSES))
    assert len(train) == 100 and len(val) == 100 and not set(train.ids) & set(val.ids)
    seen: set[int] = set()
    for i in range(0, 100, 10):
        item = train[i]
        png = voc_root / "SegmentationClass" / f"{item['id']}.png"
        assert Image.open(png).mode == "P"
        assert torch.equal(item["mask"], torch.from_numpy(np.array(Image.open(png))).long())
        assert item["image"].shape[1:] == item["mask"].shape
        seen |= set(torch.unique(item["mask"]).tolist())
    assert seen <= set(range(21)) | {255} and {0, 255} <= seen and len(seen) > 3


@pytest.mark.slow
def test_overfits_eight_training_images(voc_root):
    """A few hundred steps on 8 images (random init) reach mIoU ≥ 0.5 on those images.

    Trained and evaluated at half resolution (scale 0.5, whole images in a 320² crop) to keep it to minutes on a CPU;
    the predictions are upsampled and scored against the full-resolution labels. Evaluation pads each image to the
    crop as training did (TF DeepLab's eval protocol: pad with the mean to the crop size, crop the logits back):
    a net fitted from random init to 8 always-padded crops uses the padded context, through the image-pooling
    branch above all (measured: mIoU 0.84 evaluated padded, 0.51 on the bare images).
    """
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    train = VOCSegmentation(voc_root, "train", SegTrainTransform(320, scale_range=(0.5, 0.5)), subset=8)
    model = deeplabv3_mobilenet_v2(num_classes=21).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    loader = DataLoader(train, batch_size=8, shuffle=True, collate_fn=pad_collate)
    steps = 300
    for step in range(steps):
        batch = next(iter(loader))
        loss = seg_loss(model(batch["image"])["out"], batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    val = VOCSegmentation(voc_root, "train", SegEvalTransform(), subset=8)
    cm = ConfusionMatrix(21)
    with torch.no_grad():
        for batch in DataLoader(val, batch_size=1, collate_fn=pad_collate):
            cm.update(_padded_prediction(model, batch["image"], 320), batch["mask"][0])
    metrics = cm.compute()
    print(f"overfit 8 voc_coco images, {steps} steps: loss {loss.item():.3f}, mIoU {metrics.miou:.3f}")
    assert metrics.miou >= 0.5


def _padded_prediction(model, image, crop: int):
    """Label map at the full resolution of ``image`` (1, 3, H, W): scaled by 0.5, centred in a ``crop``² canvas of
    zeros (the mean after normalising, as ``SegTrainTransform`` pads), logits cropped back and upsampled."""
    small = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
    h, w = small.shape[-2:]
    top, left = (crop - h) // 2, (crop - w) // 2
    canvas = F.pad(small, (left, crop - w - left, top, crop - h - top))
    logits = model(canvas)["out"][:, :, top:top + h, left:left + w]
    return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False).argmax(1)[0]
