"""COCO dataset, robust image loading and the detection DataModule, on hand-built files with known answers."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.detection.datamodule import DetectionDataModule, detection_collate
from mnv2_vision.data.io.images import load_rgb

# Non-contiguous and unsorted on purpose: sorted ids (2, 5, 90) must become labels (1, 2, 3).
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 2, "name": "bicycle"}, {"id": 5, "name": "airplane"}]


def _write_coco(root: Path, split: str, images: list[tuple[str, Image.Image, dict]], anns: list[dict],
                categories=CATEGORIES) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    infos = []
    for i, (name, img, save_kw) in enumerate(images):
        img.save(root / split / name, **save_kw)
        w, h = save_kw.pop("_size", img.size)
        infos.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    for k, a in enumerate(anns):
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3] if all(np.isfinite(a["bbox"])) else 0.0)
    data = {"images": infos, "annotations": anns, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def _exif_rotated() -> Image.Image:
    """Stored 40 wide × 20 high with orientation 6 (rotate 90° clockwise to view): upright it is 20 × 40."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[0:4, 0:4] = 255  # stored top-left marker → upright top-right
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    rgb = Image.fromarray(np.full((60, 80, 3), (10, 20, 30), np.uint8))
    gray = Image.fromarray(np.full((50, 40), 77, np.uint8))  # mode L
    rgba = Image.fromarray(np.dstack([np.full((30, 30, 3), 200, np.uint8), np.zeros((30, 30), np.uint8)]), "RGBA")
    exif_img = _exif_rotated()
    exif = exif_img.getexif()
    exif[0x0112] = 6
    images = [
        ("a.jpg", rgb, {"quality": 95}),                   # id 100
        ("gray.jpg", gray, {}),                            # id 101
        ("rgba.png", rgba, {}),                            # id 102
        ("rot.jpg", exif_img, {"exif": exif, "quality": 95, "_size": (20, 40)}),  # id 103: annotated upright
        ("empty.jpg", rgb, {}),                            # id 104: no objects at all
        ("crowd.jpg", rgb, {}),                            # id 105: only a crowd region
    ]
    anns = [
        {"image_id": 100, "category_id": 90, "bbox": [10, 5, 20, 30]},
        {"image_id": 100, "category_id": 2, "bbox": [70, 50, 20, 20]},   # overflows → clipped to 80 × 60
        {"image_id": 100, "category_id": 5, "bbox": [30, 30, 0, 10]},    # zero width → dropped, warned
        {"image_id": 100, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # crowd → not a target
        {"image_id": 101, "category_id": 5, "bbox": [0, 0, 40, 50]},
        {"image_id": 103, "category_id": 2, "bbox": [2, 3, 10, 20]},
        {"image_id": 105, "category_id": 2, "bbox": [0, 0, 30, 30], "iscrowd": 1},
    ]
    _write_coco(root, "train2017", images, anns)
    _write_coco(root, "val2017", images[:2], [dict(a) for a in anns if a["image_id"] in (100, 101)])
    return root


def test_label_map_is_sorted_category_ids(coco_root):
    ds = CocoDetection(coco_root, "train2017")
    assert ds.category_ids == [2, 5, 90] and ds.category_names == ["bicycle", "airplane", "toothbrush"]
    assert ds.num_classes == 4 and ds.cat_to_label == {2: 1, 5: 2, 90: 3}
    assert ds.label_to_category_id([1, 2, 3]) == [2, 5, 90]


def test_boxes_are_xyxy_clipped_crowd_and_degenerate_dropped(coco_root, caplog):
    ds = CocoDetection(coco_root, "train2017")
    with caplog.at_level(logging.WARNING, logger="mnv2_vision"):
        img, t = ds[0]
        ds[0]  # the warning is given once per file
    assert img.dtype == torch.uint8 and img.shape == (3, 60, 80)
    assert t["image_id"] == 100 and t["orig_size"] == (60, 80)
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 5.0, 30.0, 35.0], [70.0, 50.0, 80.0, 60.0]]))
    assert t["labels"].tolist() == [3, 1] and t["labels"].dtype == torch.int64
    warnings = [r.getMessage() for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(warnings) == 1 and "a.jpg" in warnings[0]


def test_images_without_objects_are_kept_with_empty_targets(coco_root):
    ds = CocoDetection(coco_root, "train2017")
    assert len(ds) == 6
    for index in (4, 5):  # no annotation at all; only a crowd region
        _, t = ds[index]
        assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].shape == (0,) and t["labels"].dtype == torch.int64


def test_grayscale_rgba_and_exif_images_become_upright_rgb(coco_root):
    ds = CocoDetection(coco_root, "train2017")
    gray, t = ds[1]
    assert gray.shape == (3, 50, 40) and (gray == 77).all()
    rgba, _ = ds[2]
    assert rgba.shape == (3, 30, 30) and (rgba == 200).all()
    rot, t = ds[3]
    assert rot.shape == (3, 40, 20) and t["orig_size"] == (40, 20)
    # The marker stored at the top-left of the 40×20 pixels is at the top-right once upright.
    assert rot[:, :3, -3:].float().mean() > 200 and rot[:, :3, :3].float().mean() < 30
    torch.testing.assert_close(t["boxes"], torch.tensor([[2.0, 3.0, 12.0, 23.0]]))


def test_subset_takes_the_first_sorted_ids(coco_root):
    assert CocoDetection(coco_root, "train2017", subset=2).ids == [100, 101]


def test_missing_layout_and_bad_files_are_named(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        CocoDetection(tmp_path, "train2017")
    bad = tmp_path / "bad"
    _write_coco(bad, "train2017", [("x.jpg", Image.new("RGB", (8, 8)), {})],
                [{"image_id": 100, "category_id": 3, "bbox": [0, 0, 4, 4]}])
    ds = CocoDetection(bad, "train2017", category_ids=[2, 5])
    with pytest.raises(ValueError, match=r"x\.jpg.*category_id 3"):
        ds[0]
    (bad / "train2017" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"x\.jpg"):
        ds[0]
    wrong = tmp_path / "wrong"
    _write_coco(wrong, "train2017", [("y.jpg", Image.new("RGB", (8, 6)), {"_size": (6, 8)})], [])
    with pytest.raises(ValueError, match=r"y\.jpg.*6x8"):
        CocoDetection(wrong, "train2017")[0]


def test_load_rgb_converts_modes_and_names_broken_files(tmp_path):
    a16 = (np.arange(6 * 5).reshape(6, 5) * 2000).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    out = load_rgb(tmp_path / "g16.png")
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], (a16 // 257).astype(np.uint8))  # 16-bit scaled, not wrapped
    Image.new("CMYK", (4, 3), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    np.testing.assert_allclose(load_rgb(tmp_path / "c.jpg")[1, 1], (255, 0, 255), atol=3)  # no magenta ink
    p = Image.new("P", (4, 3), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png")[0, 0], (255, 0, 0))
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with pytest.raises(ValueError, match="trunc.jpg"):
        load_rgb(tmp_path / "trunc.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")


def test_datamodule_label_map_collate_and_loaders(coco_root):
    dm = DetectionDataModule(coco_root, image_size=32, augment="none", batch_size=4, val_batch_size=2,
                             num_workers=0)
    assert dm.num_classes == 4 and dm.category_ids == [2, 5, 90]
    assert dm.category_names == ["bicycle", "airplane", "toothbrush"]
    images, targets, skipped = next(iter(dm.val_dataloader()))  # evaluation batches list the images left out
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32 and skipped == []
    assert [t["image_id"] for t in targets] == [100, 101]
    # Eval resize 80×60 → 32×32: x scales by 0.4, y by 32/60.
    torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([4.0, 5 * 32 / 60, 12.0, 35 * 32 / 60]))
    train = dm.train_dataloader()
    assert train.drop_last and len(train) == 1  # 6 images, batch 4: the lone remainder never reaches BatchNorm
    batches = list(train)
    assert batches[0][0].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown detection augmentation preset"):
        DetectionDataModule(coco_root, augment="mosaic")


def test_collate_keeps_per_image_targets():
    a = (torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    b = (torch.ones(3, 4, 4), {"boxes": torch.ones(2, 4), "labels": torch.ones(2, dtype=torch.int64)})
    images, targets = detection_collate([a, b])
    assert images.shape == (2, 3, 4, 4) and [len(t["boxes"]) for t in targets] == [0, 2]


@pytest.mark.skipif(not os.environ.get("MNV2_REAL_DATA"), reason="MNV2_REAL_DATA not set (real COCO subset)")
def test_coco128_reads_every_image_and_box():
    root = Path(os.environ["MNV2_REAL_DATA"]) / "coco128"
    ds = CocoDetection(root, "val2017")
    assert len(ds) == 128 and ds.num_classes == 81
    raw = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    n_boxes, modes = 0, set()
    for i in range(len(ds)):
        modes.add(Image.open(ds.image_path(i)).mode)
        boxes, labels = ds.load_annotations(i, ds.load_image(i).shape[:2])
        n_boxes += len(boxes)
    assert "L" in modes  # the subset's grayscale image is read as RGB above
    assert n_boxes == sum(1 for a in raw["annotations"] if not a["iscrowd"])
