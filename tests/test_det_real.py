"""Detection on real COCO images (``$MNV2_REAL_DATA/coco128``): evaluation sanity and an overfitting check."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.detection.transforms import detection_transform
from mnv2_vision.eval.coco import evaluate_coco, to_coco_results
from mnv2_vision.ops.postprocess import resize_boxes

from helpers import real_data, tool as _tool

REAL = os.environ.get("MNV2_REAL_DATA")
pytestmark = pytest.mark.skipif(not REAL, reason="MNV2_REAL_DATA not set (real COCO subset coco128)")


@pytest.fixture(scope="module")
def coco128() -> Path:
    return real_data("coco128", "annotations/instances_val2017.json")


def test_ground_truth_as_detections_gives_map_one(coco128):
    """Targets in the network frame (320², as training sees them), mapped back to original pixels and to COCO
    category ids with the same code as predictions: every box must land on its ground truth (mAP 1.0)."""
    ds = CocoDetection(coco128, "val2017", transform=detection_transform("ssdlite", False, 320))
    dets, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        boxes = resize_boxes(t["boxes"], (320, 320), t["orig_size"])
        dets.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": t["labels"]})
        ids.append(t["image_id"])
    s = evaluate_coco(ds.coco, to_coco_results(dets, ids, ds.category_ids), image_ids=ds.ids)
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0)
    assert all(ap == pytest.approx(1.0) for ap in s["per_class"].values() if ap == ap)  # NaN: class not present


@pytest.mark.slow
def test_overfits_sixteen_training_images(coco128, tmp_path):
    """The documented overfitting command (docs, configs/ssdlite_coco128.yaml): train on the first 16 images of
    coco128/train2017 for 300 steps and evaluate on the same images: mAP50 ≥ 0.5."""
    result = _tool("train_det").main(["--cfg", "ssdlite_coco128", "--out", str(tmp_path),
                                      "--set", f"data.root={coco128}", "--set", "data.num_workers=0"])
    print(f"overfit 16 coco128 images: mAP50 {result['map50']:.3f}, mAP {result['map']:.3f}")
    assert result["map50"] >= 0.5
