"""The multi-task pair on real COCO images with exact masks (``$MNV2_REAL_DATA/coco_masks``): an overfitting check."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import real_data, tool as _tool

REAL = os.environ.get("MNV2_REAL_DATA")
pytestmark = pytest.mark.skipif(not REAL, reason="MNV2_REAL_DATA not set (real COCO subset coco_masks)")


@pytest.fixture(scope="module")
def coco_masks() -> Path:
    return real_data("coco_masks", "annotations/instances_train2017.json")


@pytest.mark.slow
def test_memorises_boxes_and_masks_of_sixteen_training_images(coco_masks, tmp_path):
    """The documented command (configs/multitask_coco_masks.yaml): 400 steps on the first 16 images of
    coco_masks/train2017, evaluated on the same images: mAP50 ≥ 0.5 (80 COCO classes) and mIoU ≥ 0.5 (VOC classes,
    masks painted from the instances)."""
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    result = _tool("train_multitask").main(["--cfg", "multitask_coco_masks", "--out", str(tmp_path),
                                            "--set", f"data.root={coco_masks}", "--set", "data.num_workers=0"])
    present = {k: round(v, 3) for k, v in result["per_class_iou"].items() if v is not None}
    print(f"pair, 16 coco_masks images: mAP50 {result['map50']:.3f}, mAP {result['map']:.3f}, "
          f"mIoU {result['miou']:.3f} over {present}")
    assert result["map50"] >= 0.5 and result["miou"] >= 0.5
