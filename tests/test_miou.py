"""Confusion-matrix mIoU: hand-computed values, the ignore label, whole-set accumulation, and torchmetrics agreement."""
from __future__ import annotations

import math

import pytest
import torch

from mnv2_vision.eval.miou import ConfusionMatrix, metrics_from_confusion


def test_hand_computed_example():
    # K = 3. Pixels (target → pred): 0→0, 0→0, 0→1, 1→1, 1→2, 2→2, 255→0 (ignored), 255→2 (ignored).
    target = torch.tensor([[0, 0, 0, 1], [1, 2, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = cm.compute()
    # IoU_0 = 2 / (2 + 0 + 1) ; IoU_1 = 1 / (1 + 1 + 1) ; IoU_2 = 1 / (1 + 1 + 0)
    assert m.iou.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert m.miou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert m.pixel_acc == pytest.approx(4 / 6)


def test_perfect_prediction_is_one_and_absent_classes_are_nan():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 17, 23))  # classes 3 and 4 of K = 5 never appear
    target[:, :2] = 255
    pred = target.clone()
    pred[target == 255] = 4  # whatever is predicted on ignored pixels does not count
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    m = cm.compute()
    assert m.miou == 1.0 and m.pixel_acc == 1.0
    assert m.iou[:3].tolist() == [1.0, 1.0, 1.0] and all(math.isnan(v) for v in m.iou[3:].tolist())


def test_predicted_but_absent_class_counts_as_zero():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 never in the target: IoU 0, and it is in the mean
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.compute().iou.tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert cm.compute().miou == pytest.approx(0.5)


def test_accumulated_over_the_set_not_averaged_over_batches():
    # Batch 1 is perfect (IoU 1 for class 0 and 1); batch 2 is all wrong on many pixels. Per-batch averaging would
    # give (1 + 0) / 2 for class 1; the whole-set matrix gives 10 / (10 + 90).
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1] * 5), torch.tensor([0, 1] * 5))
    cm.update(torch.zeros(90, dtype=torch.long), torch.ones(90, dtype=torch.long))
    m = cm.compute()
    assert m.iou[1].item() == pytest.approx(5 / 95)
    assert m.iou[0].item() == pytest.approx(5 / 95)
    one_shot = ConfusionMatrix(2)
    one_shot.update(torch.cat([torch.tensor([0, 1] * 5), torch.zeros(90, dtype=torch.long)]),
                    torch.cat([torch.tensor([0, 1] * 5), torch.ones(90, dtype=torch.long)]))
    assert torch.equal(one_shot.matrix, cm.matrix)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_multiclass_jaccard(seed):
    from torchmetrics.classification import MulticlassJaccardIndex

    torch.manual_seed(seed)
    k = 7
    ours = ConfusionMatrix(k)
    ref = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="macro")
    ref_per_class = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="none")
    for _ in range(4):
        target = torch.randint(0, k - 2, (3, 31, 29))  # class 5 is only predicted, class 6 appears nowhere
        pred = torch.where(torch.rand(target.shape) < 0.6, target, torch.randint(0, k - 1, target.shape))
        target[torch.rand(target.shape) < 0.1] = 255
        ours.update(pred, target)
        ref.update(pred, target)
        ref_per_class.update(pred, target)
    m = ours.compute()
    # torchmetrics leaves classes with no target and no prediction out of the macro mean (weight 0) and reports 0
    # for them per class; we report NaN. Everywhere else the numbers must agree.
    assert abs(m.miou - ref.compute().item()) < 1e-6
    seen = ~torch.isnan(m.iou)
    assert seen.tolist() == [True] * 6 + [False]
    assert torch.allclose(m.iou[seen].float(), ref_per_class.compute()[seen], atol=1e-6)


def test_rejects_bad_labels_and_shapes():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="0..2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="0..2"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(300, ignore_index=255)
    assert cm.matrix.sum() == 0  # failed updates leave the matrix untouched


def test_empty_matrix_gives_nan_not_an_error():
    m = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(m.miou) and math.isnan(m.pixel_acc)
