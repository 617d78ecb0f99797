"""Box coder and SSD matcher with hand-computed values and edge cases."""
import math
from dataclasses import replace

import pytest
import torch

from mnv2_vision.config import EvalCfg
from mnv2_vision.ops.boxes import BoxCoder, match_anchors
from mnv2_vision.ops.postprocess import PostprocessSettings

DEFAULTS = PostprocessSettings.from_eval(EvalCfg())  # the config's eval.* defaults


def test_encode_hand_computed():
    # anchor: centre (5, 5), size 10×10; box [1, 2, 21, 12]: centre (11, 7), size 20×10
    # dx = 10·6/10 = 6, dy = 10·2/10 = 2, dw = 5·log 2, dh = 5·log 1 = 0
    rel = BoxCoder().encode(torch.tensor([[1.0, 2.0, 21.0, 12.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(rel, torch.tensor([[6.0, 2.0, 5 * math.log(2.0), 0.0]]))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 100], dim=1)
    xy = torch.rand(50, 2, generator=g) * 300
    anchors = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 100], dim=1)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-3, rtol=1e-5)
    # broadcasting: one set of anchors against a batch of boxes
    batch = torch.stack([boxes, boxes.flip(0)])
    torch.testing.assert_close(coder.decode(coder.encode(batch, anchors), anchors), batch, atol=1e-3, rtol=1e-5)


def test_decode_clamps_size_offsets():
    # dw/5 = 100 would overflow exp; it is clamped to log(1000/16), so the width grows 62.5× at most.
    out = BoxCoder().decode(torch.tensor([[0.0, 0.0, 500.0, 0.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(out, torch.tensor([[5 - 312.5, 0.0, 5 + 312.5, 10.0]]))


def test_geometry_stays_fp32_under_autocast():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    rel = torch.tensor([[0.123, -0.456, 0.789, -0.321]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = coder.decode(rel, anchors)
        enc = coder.encode(dec, anchors)
    assert dec.dtype == enc.dtype == torch.float32
    torch.testing.assert_close(enc, rel, atol=1e-5, rtol=0)


def test_no_ground_truth_all_background():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    m = match_anchors(torch.zeros(0, 4), anchors)
    assert m.tolist() == [-1, -1] and m.dtype == torch.int64


def test_threshold_and_forced_best_anchor():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 20.0]])
    # gt [0, 0, 10, 30]: IoU 100/300 = 0.33 with anchor 0, 0 with anchor 1, 200/300 = 0.67 with anchor 2
    assert match_anchors(torch.tensor([[0.0, 0.0, 10.0, 30.0]]), anchors).tolist() == [-1, -1, 0]
    # gt [0, 0, 10, 15]: IoU 100/150 = 0.67 with anchor 0 and 150/200 = 0.75 with anchor 2: both match
    assert match_anchors(torch.tensor([[0.0, 0.0, 10.0, 15.0]]), anchors).tolist() == [0, -1, 0]
    # gt [0, 0, 10, 40]: best IoU 200/400 = 0.5 exactly (≥ threshold) with anchor 2, 0.25 with anchor 0
    assert match_anchors(torch.tensor([[0.0, 0.0, 10.0, 40.0]]), anchors).tolist() == [-1, -1, 0]
    # gt [0, 0, 10, 50]: every IoU < 0.5 (0.2, 0, 0.4) — still forced onto its best anchor, 2
    assert match_anchors(torch.tensor([[0.0, 0.0, 10.0, 50.0]]), anchors).tolist() == [-1, -1, 0]
    # a gt overlapping no anchor at all is not forced (IoU 0 everywhere)
    assert match_anchors(torch.tensor([[100.0, 100.0, 110.0, 110.0]]), anchors).tolist() == [-1, -1, -1]


def test_two_ground_truths_competing_for_one_anchor():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])
    # gt0 [0,0,10,10]: IoU 1.0 with a0, 0.5 with a1; gt1 [0,0,3,3]: IoU 0.09 with a0, 0.045 with a1.
    # Both want a0 as their best anchor: it goes to gt0, which overlaps it more; a1 takes gt0 by threshold.
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 3.0, 3.0]])
    assert match_anchors(gts, anchors).tolist() == [0, 0]
    assert match_anchors(gts.flip(0), anchors).tolist() == [1, 1]  # same rule, independent of gt order
    # Identical gts tie: the lower index wins.
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert match_anchors(same, anchors).tolist() == [0, 0]


def test_forced_match_overrides_threshold_match_of_another_gt():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])
    # gt0 [0,0,10,18]: IoU 100/180 = 0.56 with a0, 180/200 = 0.9 with a1 → by threshold it takes both anchors.
    # gt1 [0,0,4,4]: IoU 0.16 with a0, 0.08 with a1 → its best anchor a0 is forced to it.
    gts = torch.tensor([[0.0, 0.0, 10.0, 18.0], [0.0, 0.0, 4.0, 4.0]])
    assert match_anchors(gts, anchors).tolist() == [1, 0]
    # With a 0.95 threshold nothing matches by IoU; both anchors come from forcing alone.
    assert match_anchors(gts, anchors, iou_threshold=0.95).tolist() == [1, 0]


# --- post-processing -------------------------------------------------------------------------------------------

def _logits_for(scores: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly ``scores`` (rows sum to 1)."""
    return torch.tensor(scores).log()


def test_postprocess_maps_boxes_to_original_pixels():
    from mnv2_vision.ops.postprocess import postprocess_detections

    anchors = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 300.0, 300.0], [250.0, 10.0, 350.0, 50.0]])
    logits = _logits_for([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8], [0.3, 0.7, 0.0]])
    regression = torch.zeros(1, 3, 4)  # boxes decode to the anchors themselves
    # Network input 320×320, original H = 640, W = 480: x × 1.5, y × 2. The third box is clipped at x = 320 first.
    det = postprocess_detections(logits[None], regression, anchors, BoxCoder(), (320, 320), [(640, 480)], DEFAULTS)[0]
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.8, 0.7]))
    assert det["labels"].tolist() == [1, 2, 1] and det["labels"].dtype == torch.int64
    torch.testing.assert_close(det["boxes"], torch.tensor([
        [0.0, 0.0, 150.0, 200.0], [300.0, 400.0, 450.0, 600.0], [375.0, 20.0, 480.0, 100.0]]))


def test_postprocess_nms_threshold_and_limit():
    from mnv2_vision.ops.postprocess import postprocess_detections

    # a0 and a1 overlap with IoU 95²/(2·100² − 95²) = 0.82; a2 is a1's twin box predicted as another class.
    anchors = torch.tensor([[0.0, 0.0, 100.0, 100.0], [5.0, 5.0, 105.0, 105.0], [5.0, 5.0, 105.0, 105.0],
                            [200.0, 200.0, 220.0, 220.0]])
    logits = _logits_for([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.4, 0.0, 0.6], [0.95, 0.05, 0.0]])
    args = (logits[None], torch.zeros(1, 4, 4), anchors, BoxCoder(), (320, 320), [(320, 320)])
    det = postprocess_detections(*args, DEFAULTS)[0]
    # per-class NMS: the class-1 duplicate (0.8) goes, the class-2 twin (0.6) and the far box (0.05) stay
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.6, 0.05]))
    assert det["labels"].tolist() == [1, 2, 1]
    def scores(**settings) -> list[float]:
        return postprocess_detections(*args, replace(DEFAULTS, **settings))[0]["scores"].tolist()

    assert scores(nms_iou=0.9) == pytest.approx([0.9, 0.8, 0.6, 0.05])
    assert scores(score_thresh=0.5) == pytest.approx([0.9, 0.6])
    assert scores(detections_per_img=1) == pytest.approx([0.9])
    # top-k per class: with 1 candidate per class, class 1 keeps only a0 before NMS
    assert scores(topk_candidates=1) == pytest.approx([0.9, 0.6])


def test_postprocess_empty_and_batch():
    from mnv2_vision.ops.postprocess import postprocess_detections

    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    logits = _logits_for([[1.0, 0.0, 0.0]])[None].expand(2, 1, 3)  # background only
    dets = postprocess_detections(logits, torch.zeros(2, 1, 4), anchors, BoxCoder(), (32, 32), [(32, 32), (64, 64)],
                                  DEFAULTS)
    assert len(dets) == 2 and all(d["boxes"].shape == (0, 4) for d in dets)
    with pytest.raises(ValueError, match="original sizes"):
        postprocess_detections(logits, torch.zeros(2, 1, 4), anchors, BoxCoder(), (32, 32), [(32, 32)], DEFAULTS)
