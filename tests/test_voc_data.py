"""VOC segmentation data: palette indices, label checks, layouts and splits, transforms and the padding collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2_vision.data.segmentation.transforms import SegEvalTransform, SegTrainTransform, pad_collate
from mnv2_vision.data.io.labels import voc_palette
from mnv2_vision.data.io.labels import read_label, write_label
from mnv2_vision.data.voc import VOCSegmentation, find_voc_root, resolve_split


def _identity(image, mask):
    return torch.as_tensor(image), torch.as_tensor(mask, dtype=torch.int64)


def _label(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 21, (h, w)).astype(np.uint8)
    label[0, :] = 255
    return label


def _make_voc(root, ids=("a", "b", "c"), size=(24, 32), aug=False):
    """A tiny VOCdevkit/VOC2012 tree: random JPEGs, palette label PNGs, train/val lists (+ SBD trainaug)."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {}
    for i, image_id in enumerate(ids):
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        labels[image_id] = _label(*size, i)
        write_label(voc / "SegmentationClass" / f"{image_id}.png", labels[image_id])
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(ids[2] + "\n")
    if aug:  # the common SBD release: raw indices in grayscale ("L") PNGs
        (voc / "SegmentationClassAug").mkdir()
        for image_id in ids:
            Image.fromarray(np.minimum(labels[image_id], 20)).save(voc / "SegmentationClassAug" / f"{image_id}.png")
        (voc / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("\n".join(ids) + "\n")
    return voc, labels


def test_write_read_round_trip_keeps_indices_and_palette(tmp_path):
    label = _label(9, 11, 0)
    path = write_label(tmp_path / "x.png", label)
    img = Image.open(path)
    assert img.mode == "P"
    assert np.array_equal(np.array(img), label)
    assert img.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # VOC: background black, aeroplane dark red
    assert img.getpalette()[3 * 255:3 * 256] == voc_palette()[3 * 255:3 * 256]
    assert np.array_equal(read_label(path, 21), label)


def test_dataset_reads_palette_indices_from_a_vocdevkit_parent(tmp_path):
    voc, labels = _make_voc(tmp_path)
    assert find_voc_root(tmp_path / "VOCdevkit") == voc
    ds = VOCSegmentation(tmp_path / "VOCdevkit", "train", _identity)
    assert ds.ids == ["a", "b"] and len(ds) == 2
    item = ds[1]
    assert item["id"] == "b" and item["image"].shape == (24, 32, 3)
    assert np.array_equal(item["mask"].numpy(), labels["b"])  # indices, not colours; 255 kept
    assert len(VOCSegmentation(voc, "train", _identity, subset=1)) == 1


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_or_grayscale_voc_label_is_rejected_naming_the_file(tmp_path, mode):
    voc, labels = _make_voc(tmp_path)
    bad = voc / "SegmentationClass" / "a.png"
    Image.open(bad).convert(mode).save(bad)  # what cv2 / .convert() round trips produce
    ds = VOCSegmentation(voc, "train", _identity)
    with pytest.raises(ValueError, match=f"{bad}.*mode '{mode}'"):
        ds[0]


def test_out_of_range_label_is_rejected_naming_the_file(tmp_path):
    voc, _ = _make_voc(tmp_path)
    write_label(voc / "SegmentationClass" / "b.png", np.full((24, 32), 42, np.uint8))
    with pytest.raises(ValueError, match=r"b\.png has values \[42\]"):
        VOCSegmentation(voc, "train", _identity)[1]


def test_image_and_label_size_mismatch_is_an_error(tmp_path):
    voc, _ = _make_voc(tmp_path)
    write_label(voc / "SegmentationClass" / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="a.png is 10×10 but its image"):
        VOCSegmentation(voc, "train", _identity)[0]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        find_voc_root(tmp_path)
    voc, _ = _make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VOCSegmentation(voc, "test", _identity)
    (voc / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"\['a'\]"):
        VOCSegmentation(voc, "train", _identity)
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug"):
        resolve_split(voc, "trainaug")


def test_trainaug_reads_sbd_labels_and_auto_picks_it(tmp_path):
    voc, labels = _make_voc(tmp_path, aug=True)
    assert resolve_split(voc, "auto") == ("trainaug", "SegmentationClassAug")
    ds = VOCSegmentation(voc, "auto", _identity)
    assert ds.split == "trainaug" and ds.ids == ["a", "b", "c"]
    assert np.array_equal(ds[2]["mask"].numpy(), np.minimum(labels["c"], 20))  # "L" accepted here


def test_auto_falls_back_to_train_without_sbd(tmp_path):
    voc, _ = _make_voc(tmp_path)
    assert resolve_split(voc, "auto") == ("train", "SegmentationClass")


def test_train_transform_pads_with_ignore_and_mean_and_keeps_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (30, 40)).astype(np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    t = SegTrainTransform(64, scale_range=(1.0, 1.0), mean=mean, std=std)
    img, m = t(image, mask)
    assert img.shape == (3, 64, 64) and m.shape == (64, 64) and m.dtype == torch.int64
    assert int((m == 255).sum()) == 64 * 64 - 30 * 40  # every padded pixel is ignore, no original pixel is
    # Padding is the mean pixel, which normalises to ~0 (up to the uint8 rounding of the fill colour).
    assert img[:, m == 255].abs().max() < 0.02
    assert sorted(torch.unique(m[m != 255]).tolist()) == sorted(np.unique(mask).tolist())


def test_train_transform_scales_masks_with_nearest_neighbour():
    mask = np.zeros((100, 120), np.uint8)
    mask[20:60, 30:90] = 3
    mask[60:80, 30:90] = 7
    t = SegTrainTransform(48, scale_range=(0.5, 2.0))
    for _ in range(10):
        _, m = t(np.zeros((100, 120, 3), np.uint8), mask)
        assert set(torch.unique(m).tolist()) <= {0, 3, 7, 255}  # no blended, invented labels


def test_eval_transform_keeps_full_size():
    image = np.full((33, 47, 3), 255, np.uint8)
    img, m = SegEvalTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image, np.ones((33, 47), np.uint8))
    assert img.shape == (3, 33, 47) and torch.allclose(img, torch.ones_like(img))
    assert torch.equal(m, torch.ones(33, 47, dtype=torch.int64))


def test_pad_collate_pads_images_with_zero_and_masks_with_ignore():
    a = {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.int64), "id": "a"}
    b = {"image": torch.ones(3, 6, 2), "mask": torch.ones(6, 2, dtype=torch.int64), "id": "b"}
    batch = pad_collate([a, b])
    assert batch["image"].shape == (2, 3, 6, 5) and batch["mask"].shape == (2, 6, 5)
    assert batch["size"].tolist() == [[4, 5], [6, 2]] and batch["id"] == ["a", "b"]
    assert batch["image"][0, :, 4:].abs().sum() == 0 and (batch["mask"][0, 4:] == 255).all()
    assert (batch["mask"][1, :, 2:] == 255).all() and (batch["mask"][1, :, :2] == 1).all()


def test_builtin_shapes_through_the_voc_reader(shapes_root):
    ds = VOCSegmentation(shapes_root / "VOC2012", "val", _identity, num_classes=5, subset=3)
    for i in range(len(ds)):
        m = ds[i]["mask"]
        assert set(torch.unique(m).tolist()) <= {0, 1, 2, 3, 4, 255}
        assert m.shape == ds[i]["image"].shape[:2]
