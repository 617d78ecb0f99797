"""Detection pipelines: hand-computed geometry of the SSD crop / zoom-out, and boxes that follow the pixels."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from mnv2_vision.data.detection.transforms import DetectionTransform, IoURandomCrop, ZoomOut, detection_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _painted(h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    """Grey image with box i filled in a pure colour (channel i % 3 at 255), so its pixels can be found again."""
    img = np.full((h, w, 3), 60, np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        img[y0:y1, x0:x1] = 0
        img[y0:y1, x0:x1, i % 3] = 255
    return img


def _extent(img: np.ndarray, channel: int) -> np.ndarray:
    """xyxy of the pixels whose ``channel`` is bright and the others dark."""
    others = [c for c in range(3) if c != channel]
    mask = (img[..., channel] > 200) & (img[..., others] < 50).all(-1)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_iou_crop_boxes_by_hand():
    crop = IoURandomCrop()
    shape = (200, 200, 3)
    # normalised xyxy + one label column, as albumentations passes them
    boxes = np.array([[0.0, 0.0, 0.25, 0.25, 1], [0.75, 0.75, 0.95, 0.95, 2], [0.05, 0.5, 0.25, 0.7, 3]])
    out = crop.apply_to_bboxes(boxes, crop_coords=(10, 20, 110, 120), shape=shape)
    # box 1 (centre 25,25) is kept and clipped: (0,0,50,50) → (0,0,40,30) in the 100×100 crop
    # box 2 (centre 170,170) is outside; box 3 (10,100,50,140), centre (30,120) lies on the border → dropped
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.4, 0.3, 1]])
    img = np.arange(200 * 200 * 3, dtype=np.int64).reshape(shape).astype(np.uint8)
    np.testing.assert_array_equal(crop.apply(img, crop_coords=(10, 20, 110, 120)), img[20:120, 10:110])


def test_iou_crop_params_satisfy_ssd_constraints():
    crop = IoURandomCrop(min_ious=(0.5,))
    crop.set_random_seed(0)
    box = np.array([60.0, 60.0, 140.0, 140.0])
    data = {"bboxes": np.array([[*(box / 200), 1]])}
    for _ in range(50):
        x0, y0, x1, y1 = crop.get_params_dependent_on_data({"shape": (200, 200, 3)}, data)["crop_coords"]
        w, h = x1 - x0, y1 - y0
        if (w, h) == (200, 200):
            continue  # no acceptable patch found in the trials: the whole image
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 200
        assert 0.5 <= w / h <= 2.0 and 60 <= w and 60 <= h  # scale ≥ 0.3 of each side
        inter = max(0, min(x1, 140) - max(x0, 60)) * max(0, min(y1, 140) - max(y0, 60))
        assert inter / (w * h + 80 * 80 - inter) >= 0.5
        assert x0 < 100 < x1 and y0 < 100 < y1  # the object's centre is inside


def test_zoom_out_by_hand():
    z = ZoomOut(fill=(1, 2, 3))
    img = np.full((10, 20, 3), 9, np.uint8)
    out = z.apply(img, canvas=(30, 40), offset=(5, 7))
    assert out.shape == (30, 40, 3)
    assert (out[7:17, 5:25] == 9).all() and (out[0, 0] == (1, 2, 3)).all() and (out[29, 39] == (1, 2, 3)).all()
    boxes = np.array([[0.0, 0.0, 1.0, 1.0, 4], [0.5, 0.5, 0.75, 1.0, 5]])
    got = z.apply_to_bboxes(boxes, canvas=(30, 40), offset=(5, 7), shape=(10, 20, 3))
    # pixels (0,0,20,10) → (5,7,25,17) of 40×30; (10,5,15,10) → (15,12,20,17)
    np.testing.assert_allclose(got, [[5 / 40, 7 / 30, 25 / 40, 17 / 30, 4], [15 / 40, 12 / 30, 20 / 40, 17 / 30, 5]])


@pytest.mark.parametrize("step", ["zoom", "crop", "flip"])
def test_boxes_follow_the_pixels(step):
    boxes = np.array([[20, 30, 70, 90], [100, 40, 150, 120], [60, 130, 180, 170]], np.float32)
    img = _painted(200, 240, boxes)
    geo = {"zoom": ZoomOut(fill=(60, 60, 60), p=1.0), "crop": IoURandomCrop(min_ious=(0.1, 0.3)),
           "flip": A.HorizontalFlip(p=1.0)}[step]
    compose = A.Compose([geo], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), seed=3)
    for _ in range(8):
        out = compose(image=img, bboxes=boxes, labels=np.arange(3))
        assert len(out["bboxes"]) >= 1  # a crop keeps at least one object centre
        for box, label in zip(np.asarray(out["bboxes"]), out["labels"]):
            np.testing.assert_allclose(box, _extent(out["image"], int(label) % 3), atol=1.01)


def test_eval_pipeline_resizes_boxes_and_normalises():
    tf = detection_transform("ssdlite", train=False, image_size=(60, 160), mean=MEAN, std=STD)
    img = np.full((120, 320, 3), 255, np.uint8)
    x, boxes, labels = tf(img, np.array([[32, 12, 64, 48]], np.float32), np.array([7]))
    assert x.shape == (3, 60, 160) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    torch.testing.assert_close(boxes, torch.tensor([[16.0, 6.0, 32.0, 24.0]]))
    assert labels.tolist() == [7] and labels.dtype == torch.int64


def test_train_pipeline_outputs_are_valid_including_empty_images():
    tf = detection_transform("ssdlite", train=True, image_size=64)
    tf.set_random_seed(0)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 40, 50], [60, 20, 118, 88], [30, 60, 50, 80]], np.float32)
    kept = 0
    for _ in range(40):
        x, b, lab = tf(img, boxes, np.array([1, 2, 3]))
        assert x.shape == (3, 64, 64) and b.shape == (len(lab), 4)
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all() and (b[:, 2:] - b[:, :2] >= 1).all()
        assert set(lab.tolist()) <= {1, 2, 3}
        kept += len(lab)
        x, b, lab = tf(img, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
        assert x.shape == (3, 64, 64) and b.shape == (0, 4) and lab.shape == (0,)
    assert kept >= 40  # the crop never silently turns an annotated image into a negative


def test_reseeding_repeats_and_separates_augmentation_streams():
    img = np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    boxes, labels = np.array([[5, 5, 30, 40]], np.float32), np.array([1])

    def run(seed: int) -> torch.Tensor:
        tf = detection_transform("ssdlite", train=True, image_size=32)
        tf.set_random_seed(seed)
        return torch.stack([tf(img, boxes, labels)[0] for _ in range(3)])

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="unknown detection augmentation preset 'mosaic'"):
        detection_transform("mosaic", train=True, image_size=32)
    assert isinstance(detection_transform("none", train=True, image_size=32), DetectionTransform)


def test_light_preset_only_flips_geometry():
    # 320×120 image resized to 160×60 (factor 0.5 in both axes); a flip maps x to 160 - x.
    tf = detection_transform("light", train=True, image_size=(60, 160))
    tf.set_random_seed(3)
    img = np.random.default_rng(2).integers(0, 255, (120, 320, 3), dtype=np.uint8)
    seen = set()
    for _ in range(30):
        _, b, lab = tf(img, np.array([[32, 12, 64, 48]], np.float32), np.array([4]))
        assert lab.tolist() == [4]
        got = tuple(round(v, 3) for v in b[0].tolist())
        assert got in {(16.0, 6.0, 32.0, 24.0), (128.0, 6.0, 144.0, 24.0)}, got
        seen.add(got)
    assert len(seen) == 2  # both the plain and the flipped box occur
