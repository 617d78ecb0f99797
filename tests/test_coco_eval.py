"""COCO evaluation wrapper: hand-computed AP values, the xyxy → xywh / label → category id edge, crowd and empty
cases, and an oracle run through post-processing on the built-in shapes data."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.detection.transforms import detection_transform
from mnv2_vision.eval.coco import STAT_NAMES, evaluate_coco, format_coco_stats, to_coco_results
from mnv2_vision.ops.boxes import BoxCoder
from mnv2_vision.config import EvalCfg
from mnv2_vision.ops.postprocess import PostprocessSettings, postprocess_detections


def _gt(annotations: list[dict], num_images: int = 2) -> COCO:
    coco = COCO()
    for k, a in enumerate(annotations):
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    coco.dataset = {"images": [{"id": 10 + i, "width": 200, "height": 100} for i in range(num_images)],
                    "annotations": annotations,
                    "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(boxes, scores, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_to_coco_results_converts_boxes_and_labels():
    res = to_coco_results([_det([[10, 20, 50, 80]], [0.9], [2]), _det([], [], [])], [10, 11], category_ids=[3, 7])
    assert res == [{"image_id": 10, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9}]
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        to_coco_results([_det([[0, 0, 1, 1]], [0.5], [3])], [10], category_ids=[3, 7])


def test_ground_truth_as_detections_scores_one():
    gt = _gt([{"image_id": 10, "category_id": 3, "bbox": [10, 10, 30, 40]},
              {"image_id": 10, "category_id": 7, "bbox": [100, 20, 60, 50]},
              {"image_id": 11, "category_id": 3, "bbox": [5, 5, 90, 90]}])
    dets = [_det([[10, 10, 40, 50], [100, 20, 160, 70]], [1.0, 1.0], [1, 2]), _det([[5, 5, 95, 95]], [1.0], [1])]
    s = evaluate_coco(gt, to_coco_results(dets, [10, 11], [3, 7]))
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0)
    assert s["per_class"] == {3: pytest.approx(1.0), 7: pytest.approx(1.0)}
    assert len(s["stats"]) == len(STAT_NAMES) == 12


def test_hand_computed_ap_from_a_false_positive_and_a_loose_box():
    # One ground truth (0,0,100,100). A false positive scores higher than the true positive, so precision at
    # recall 1 is 1/2 → AP 0.5 at every IoU threshold the true positive passes. Its IoU is 0.64 (a 64×100 box
    # inside), which passes .50, .55 and .60 of the ten thresholds → AP@[.5:.95] = 0.5 · 3/10 = 0.15.
    gt = _gt([{"image_id": 10, "category_id": 3, "bbox": [0, 0, 100, 100]}], num_images=1)
    dets = [_det([[150, 0, 190, 40], [0, 0, 64, 100]], [0.9, 0.8], [1, 1])]
    s = evaluate_coco(gt, to_coco_results(dets, [10], [3, 7]))
    assert s["map50"] == pytest.approx(0.5) and s["map"] == pytest.approx(0.15)
    assert s["map75"] == pytest.approx(0.0)
    assert s["per_class"][3] == pytest.approx(0.15) and math.isnan(s["per_class"][7])  # 7 has no ground truth


def test_crowd_regions_are_ignored_not_false_positives():
    gt = _gt([{"image_id": 10, "category_id": 3, "bbox": [10, 10, 30, 40]},
              {"image_id": 10, "category_id": 3, "bbox": [100, 0, 100, 100], "iscrowd": 1}], num_images=1)
    # A high-scoring detection on the crowd region must not lower the AP of the real object.
    dets = [_det([[120, 10, 180, 90], [10, 10, 40, 50]], [0.99, 0.5], [1, 1])]
    assert evaluate_coco(gt, to_coco_results(dets, [10], [3, 7]))["map"] == pytest.approx(1.0)


def test_empty_results_and_images_without_detections_do_not_crash():
    gt = _gt([{"image_id": 10, "category_id": 3, "bbox": [10, 10, 30, 40]}])
    s = evaluate_coco(gt, [])
    assert s["map"] == 0.0 and s["stats"] == [0.0] * 12 and s["per_class"][3] == 0.0
    assert math.isnan(s["per_class"][7])
    # image 11 has neither ground truth nor detections; image 10 is found perfectly
    s = evaluate_coco(gt, to_coco_results([_det([[10, 10, 40, 50]], [0.7], [1]), _det([], [], [])], [10, 11], [3, 7]))
    assert s["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(gt, [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])


def test_format_lists_the_twelve_stats_and_per_class_rows():
    gt = _gt([{"image_id": 10, "category_id": 3, "bbox": [10, 10, 30, 40]}])
    text = format_coco_stats(evaluate_coco(gt, []), {3: "car", 7: "train"})
    assert all(name in text for name in STAT_NAMES) and "car" in text and "n/a" in text


def test_oracle_outputs_through_postprocess_score_one(shapes_root):
    """Perfect raw SSD outputs (each object encoded on its best anchor) → postprocess → mAP 1.0: the whole chain from
    network frame back to original pixels and category ids is lossless."""
    ds = CocoDetection(shapes_root / "coco", "val2017",
                       transform=detection_transform("none", False, 160), subset=12)
    from mnv2_vision.models import build_model

    anchors = build_model("ssdlite320_mobilenet_v2", num_classes=ds.num_classes, width_mult=0.35).anchors((160, 160))
    coder = BoxCoder()
    dets, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        logits = torch.full((1, anchors.shape[0], ds.num_classes), -10.0)
        logits[..., 0] = 10.0
        reg = torch.zeros(1, anchors.shape[0], 4)
        if len(t["boxes"]):
            best = box_iou(t["boxes"], anchors).argmax(dim=1)
            assert len(set(best.tolist())) == len(best)  # distinct anchors, or objects would overwrite each other
            logits[0, best, 0] = -10.0
            logits[0, best, t["labels"]] = 10.0
            reg[0, best] = coder.encode(t["boxes"], anchors[best])
        dets += postprocess_detections(logits, reg, anchors, coder, (160, 160), [t["orig_size"]],
                                       PostprocessSettings.from_eval(EvalCfg()))
        ids.append(t["image_id"])
    s = evaluate_coco(ds.coco, to_coco_results(dets, ids, ds.category_ids), image_ids=ds.ids)
    assert s["map"] == pytest.approx(1.0)


def test_precision_recall_curves_by_hand(tmp_path):
    # The case above: a false positive (0.9) before the true positive (0.8) of IoU 0.64 → at IoU 0.5 the
    # interpolated precision is 1/2 at every recall point up to 1; at IoU 0.75 the object is never found (0).
    gt = _gt([{"image_id": 10, "category_id": 3, "bbox": [0, 0, 100, 100]}], num_images=1)
    dets = [_det([[150, 0, 190, 40], [0, 0, 64, 100]], [0.9, 0.8], [1, 1])]
    pr = evaluate_coco(gt, to_coco_results(dets, [10], [3, 7]))["pr"]
    assert len(pr["recall"]) == 101 and pr["recall"][0] == 0.0 and pr["recall"][-1] == 1.0
    assert pr["iou50"][3] == pytest.approx([0.5] * 101)
    assert pr["iou75"][3] == pytest.approx([0.0] * 101)
    assert all(math.isnan(v) for v in pr["iou50"][7])  # no ground truth of category 7

    from PIL import Image

    from mnv2_vision.viz import plot_pr_curves

    path = plot_pr_curves(pr, {3: "car", 7: "train"}, str(tmp_path / "pr.png"))
    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] > 500
    assert len(img.convert("L").getcolors(1 << 16)) > 20  # axes, text and a curve: not a blank canvas


@pytest.mark.skipif(not __import__("os").environ.get("MNV2_REAL_DATA"), reason="MNV2_REAL_DATA not set")
@pytest.mark.parametrize("subset,per_image", [
    ("coco_masks/annotations/instances_val2017.json", 20),  # crowd regions in play; ~3 s
    pytest.param("coco_masks/annotations/instances_train2017.json", 100, marks=pytest.mark.slow),
    pytest.param("coco128/annotations/instances_val2017.json", 100, marks=pytest.mark.slow)])
def test_faster_coco_eval_gives_pycocotools_numbers_on_the_real_subsets(subset, per_image):
    pytest.importorskip("faster_coco_eval")
    import os

    from mnv2_vision.perf.coco_eval import realistic_results

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(os.environ["MNV2_REAL_DATA"], subset))
    if "coco_masks" in subset:  # the crowd regions are in play
        assert gt.getAnnIds(iscrowd=True)
    results = realistic_results(gt, per_image=per_image, seed=1)
    ids = sorted(gt.getImgIds())[5:]  # a subset of the images, as a DDP rank's share would be
    ref = evaluate_coco(gt, results, image_ids=ids)
    fast = evaluate_coco(gt, results, image_ids=ids, evaluator="faster_coco_eval")
    assert 0.05 < ref["map"] < 0.95  # a realistic, not a trivial, score
    assert max(abs(a - b) for a, b in zip(ref["stats"], fast["stats"])) <= 1e-6
    for cat, ap in ref["per_class"].items():
        assert (math.isnan(ap) and math.isnan(fast["per_class"][cat])) or abs(ap - fast["per_class"][cat]) <= 1e-6
    with pytest.raises(ValueError, match="unknown COCO evaluator 'lvis'"):
        evaluate_coco(gt, results, evaluator="lvis")
