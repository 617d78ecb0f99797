"""SSD multibox loss on logits built so that every per-anchor loss is known in closed form."""
import math
from dataclasses import replace

import pytest
import torch

from mnv2_vision.config import EvalCfg
from mnv2_vision.ops.boxes import BoxCoder, match_anchors
from mnv2_vision.ops.losses import ssd_multibox_loss
from mnv2_vision.ops.postprocess import PostprocessSettings, postprocess_detections

NUM_ANCHORS = 20
# 20 disjoint 8×8 anchors in a row: a ground truth equal to an anchor matches it and nothing else.
ANCHORS = torch.tensor([[10.0 * j, 0.0, 10.0 * j + 8, 8.0] for j in range(NUM_ANCHORS)])


def _logits_with_background_loss(losses: list[float]) -> torch.Tensor:
    """K = 2 logits [0, b] whose cross-entropy against background is exactly c: log(1 + e^b) = c."""
    return torch.tensor([[0.0, math.log(math.expm1(c))] for c in losses])


def _image_with_two_objects():
    # Anchors 0 and 1 are positives (class 1, logits [0, 0] → CE ln 2 each); negatives 2..19 get CE 1, 2, ..., 18.
    logits = torch.cat([torch.zeros(2, 2), _logits_with_background_loss([float(c) for c in range(1, 19)])])
    target = {"boxes": ANCHORS[:2].clone(), "labels": torch.tensor([1, 1])}
    regression = torch.zeros(NUM_ANCHORS, 4)
    regression[0, 0] = 1.0  # targets are 0 (gt == anchor): smooth-L1 0.5·1² = 0.5
    regression[1, 1] = 3.0  # |3| > 1: smooth-L1 3 − 0.5 = 2.5
    return logits, regression, target


def test_hard_negative_count_and_values():
    logits, regression, target = _image_with_two_objects()
    logits.requires_grad_(True)
    out = ssd_multibox_loss(logits[None], regression[None], ANCHORS, [target], BoxCoder())
    # 2 positives → 6 hard negatives: the CEs 18, 17, 16, 15, 14, 13 (sum 93); normalised by 2 positives.
    assert out["num_pos"].item() == 2
    assert out["loss_cls"].item() == pytest.approx((2 * math.log(2) + 93) / 2, rel=1e-5)
    assert out["loss_box"].item() == pytest.approx((0.5 + 2.5) / 2, rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["loss_cls"].item() + out["loss_box"].item(), rel=1e-6)
    out["loss"].backward()
    contributing = (logits.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert contributing == [0, 1, 14, 15, 16, 17, 18, 19]  # the positives and exactly the 6 hardest negatives


def test_neg_pos_ratio_and_box_weight():
    logits, regression, target = _image_with_two_objects()
    out = ssd_multibox_loss(logits[None], regression[None], ANCHORS, [target], BoxCoder(), neg_pos_ratio=1,
                            box_weight=2.0)
    # 1 negative per positive would be 2, but min_negatives = 3 (TF's miner) raises it to 18 + 17 + 16.
    assert out["loss_cls"].item() == pytest.approx((2 * math.log(2) + 18 + 17 + 16) / 2, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["loss_cls"].item() + 2 * 1.5, rel=1e-6)
    out = ssd_multibox_loss(logits[None], regression[None], ANCHORS, [target], BoxCoder(), neg_pos_ratio=1,
                            min_negatives=0)
    assert out["loss_cls"].item() == pytest.approx((2 * math.log(2) + 18 + 17) / 2, rel=1e-5)


def test_zero_target_image_contributes_negatives_only():
    logits = _logits_with_background_loss([float(c) for c in range(1, 21)])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    regression = torch.randn(1, NUM_ANCHORS, 4)  # no positives: the box loss must ignore it entirely
    out = ssd_multibox_loss(logits[None], regression, ANCHORS, [empty], BoxCoder())
    # min_negatives = 3: the three hardest background anchors (20 + 19 + 18), normaliser clamped to 1.
    assert out["num_pos"].item() == 0
    assert out["loss_cls"].item() == pytest.approx(57.0, rel=1e-5)
    assert out["loss_box"].item() == 0.0 and math.isfinite(out["loss"].item())
    # torchvision's behaviour when asked for: no positives, no negatives.
    assert ssd_multibox_loss(logits[None], regression, ANCHORS, [empty], BoxCoder(),
                             min_negatives=0)["loss"].item() == 0.0


def test_batch_normalises_by_total_positives():
    logits, regression, target = _image_with_two_objects()
    empty_logits = _logits_with_background_loss([float(c) for c in range(1, 21)])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out = ssd_multibox_loss(torch.stack([logits, empty_logits]), torch.stack([regression, torch.zeros(20, 4)]),
                            ANCHORS, [target, empty], BoxCoder())
    assert out["loss_cls"].item() == pytest.approx((2 * math.log(2) + 93 + 57) / 2, rel=1e-5)


def test_fp32_under_autocast_and_half_inputs():
    logits, regression, target = _image_with_two_objects()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ssd_multibox_loss(logits[None].bfloat16(), regression[None].bfloat16(), ANCHORS, [target], BoxCoder())
    assert out["loss"].dtype == torch.float32
    assert out["loss_box"].item() == pytest.approx(1.5, rel=1e-6)


def test_bad_targets_are_named():
    logits, regression, target = _image_with_two_objects()
    bad = {"boxes": target["boxes"], "labels": torch.tensor([0, 1])}  # 0 is background, not a class
    with pytest.raises(ValueError, match=r"1\.\.1.*images \[0\]"):
        ssd_multibox_loss(logits[None], regression[None], ANCHORS, [bad], BoxCoder())
    inverted = {"boxes": torch.tensor([[8.0, 0.0, 0.0, 8.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="x2 ≥ x1"):
        ssd_multibox_loss(logits[None], regression[None], ANCHORS, [inverted], BoxCoder())
    with pytest.raises(KeyError, match=r"targets\[0\] has no 'labels'"):
        ssd_multibox_loss(logits[None], regression[None], ANCHORS, [{"boxes": target["boxes"]}], BoxCoder())
    with pytest.raises(ValueError, match="anchors must be"):
        ssd_multibox_loss(logits[None], regression[None], ANCHORS[:5], [target], BoxCoder())


def test_perfect_predictions_give_zero_box_loss_and_recover_boxes():
    # Targets built by the matcher + coder, fed back as predictions: the loss sees no box error and post-processing
    # returns the ground truth (anchors, coder, loss and post-processing agree on one convention).
    from mnv2_vision.ops.anchors import ssd_anchors

    anchors = ssd_anchors([(4, 4), (2, 2), (1, 1)], (64, 64))
    gt = {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [20.0, 10.0, 60.0, 62.0]]), "labels": torch.tensor([2, 1])}
    coder = BoxCoder()
    matches = match_anchors(gt["boxes"], anchors)
    pos = matches >= 0
    regression = torch.zeros(len(anchors), 4)
    regression[pos] = coder.encode(gt["boxes"][matches[pos]], anchors[pos])
    logits = torch.full((len(anchors), 3), -10.0)
    logits[:, 0] = 10.0
    logits[pos, 0] = -10.0
    logits[pos, gt["labels"][matches[pos]]] = 10.0
    out = ssd_multibox_loss(logits[None], regression[None], anchors, [gt], coder)
    assert out["loss_box"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss_cls"].item() < 1e-6
    settings = replace(PostprocessSettings.from_eval(EvalCfg()), score_thresh=0.5)
    det = postprocess_detections(logits[None], regression[None], anchors, coder, (64, 64), [(64, 64)], settings)[0]
    assert sorted(det["labels"].tolist()) == [1, 2]
    order = det["labels"].argsort(descending=True)
    torch.testing.assert_close(det["boxes"][order], gt["boxes"], atol=1e-3, rtol=0)
