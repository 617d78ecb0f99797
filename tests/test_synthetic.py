"""The built-in shapes dataset: determinism, real COCO / VOC / ImageFolder layouts, label round trips, the cache."""
import functools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage
from torchvision.datasets import ImageFolder

from mnv2_vision.data import synthetic
from mnv2_vision.data.io.labels import voc_palette
from mnv2_vision.data.synthetic import (CATEGORY_IDS, SHAPE_CLASSES, Scene, ShapeObject, ensure_shapes,
                                        generate_shapes, render_scene)

TINY = {"num_train": 6, "num_val": 3, "num_cls_train": 3, "num_cls_val": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "seed0", seed=0, **TINY)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_voc_palette_matches_voc_colours():
    pal = voc_palette()
    assert len(pal) == 768
    colours = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 15: (192, 128, 128),
               255: (224, 224, 192)}  # background, aeroplane, bicycle, bird, boat, person, void (VOC devkit)
    for index, rgb in colours.items():
        assert tuple(pal[3 * index:3 * index + 3]) == rgb


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny, tmp_path):
    again = _tree(generate_shapes(tmp_path / "again", seed=0, **TINY))
    first = _tree(tiny)
    assert again.keys() == first.keys()
    assert [k for k in first if first[k] != again[k]] == []
    assert any(k.endswith(".json") for k in first) and any(k.endswith(".png") for k in first)
    other = _tree(generate_shapes(tmp_path / "other", seed=1, **TINY))
    for key in ("coco/annotations/instances_train2017.json", "VOC2012/SegmentationClass/000000000001.png",
                "coco/train2017/000000000001.jpg", "classification/train/star/00000.jpg"):
        assert other[key] != first[key], key


def test_scene_does_not_depend_on_split_size(tiny, tmp_path):
    bigger = generate_shapes(tmp_path / "bigger", seed=0, num_train=8, num_val=0, num_cls_train=0, num_cls_val=0)
    for stem in ("000000000001", "000000000006"):
        name = f"VOC2012/SegmentationClass/{stem}.png"
        assert (bigger / name).read_bytes() == (tiny / name).read_bytes()


def test_coco_json_loads_and_is_consistent(tiny):
    seen_images, seen_anns = set(), set()
    for split in ("train2017", "val2017"):
        coco = COCO(str(tiny / "coco/annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == list(CATEGORY_IDS) == [1, 3, 4, 7]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        assert all(c["supercategory"] == "shape" for c in coco.loadCats(coco.getCatIds()))
        img_ids = coco.getImgIds()
        assert len(img_ids) == TINY["num_train" if split == "train2017" else "num_val"]
        assert any(not coco.getAnnIds(imgIds=[i]) for i in img_ids), "no negative image"
        for info in coco.loadImgs(img_ids):
            with Image.open(tiny / "coco" / split / info["file_name"]) as im:
                assert im.format == "JPEG" and im.size == (info["width"], info["height"])
            assert 224 <= info["width"] <= 320 and 224 <= info["height"] <= 320
        for ann in coco.loadAnns(coco.getAnnIds()):
            info = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= info["width"] and y + h <= info["height"]
            assert ann["iscrowd"] == 0
            mask = coco.annToMask(ann)
            assert mask.shape == (info["height"], info["width"])
            assert ann["area"] == mask.sum() > 0
            ys, xs = np.nonzero(mask)  # the visible part lies inside the full shape's box
            assert xs.min() >= x and xs.max() < x + w and ys.min() >= y and ys.max() < y + h
        assert not seen_images & set(img_ids) and not seen_anns & set(coco.anns)
        seen_images |= set(img_ids)
        seen_anns |= set(coco.anns)


def test_voc_masks_read_back_to_the_drawn_labels(tiny):
    voc = tiny / "VOC2012"
    sets = {s: (voc / "ImageSets/Segmentation" / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert sets["trainval"] == sets["train"] + sets["val"]
    assert len(sets["train"]) == TINY["num_train"] and len(sets["val"]) == TINY["num_val"]
    cat_to_label = {cid: i + 1 for i, cid in enumerate(CATEGORY_IDS)}
    borders = 0
    for split, coco_split in (("train", "train2017"), ("val", "val2017")):
        coco = COCO(str(tiny / "coco/annotations" / f"instances_{coco_split}.json"))
        by_stem = {Path(info["file_name"]).stem: info["id"] for info in coco.imgs.values()}
        for index, stem in enumerate(sets[split]):
            assert (voc / "JPEGImages" / f"{stem}.jpg").read_bytes() == (tiny / "coco" / coco_split / f"{stem}.jpg"
                                                                         ).read_bytes()
            with Image.open(voc / "SegmentationClass" / f"{stem}.png") as im:
                assert im.mode == "P" and im.getpalette() == voc_palette()
                labels = np.array(im)
            # Exactly what the generator drew ...
            np.testing.assert_array_equal(labels, render_scene(0, split, index).label_map())
            # ... and consistent with the COCO instance masks of the same scene: interiors carry their class,
            # 255 stays within 2 px of an object edge, and nothing outside the objects is labelled.
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[by_stem[stem]]))
            masks = [coco.annToMask(a).astype(bool) for a in anns]
            covered = np.zeros(labels.shape, bool)
            edges = np.zeros(labels.shape, bool)
            for ann, mask in zip(anns, masks):
                interior = ndimage.binary_erosion(mask, iterations=3)
                assert (labels[interior] == cat_to_label[ann["category_id"]]).all()
                covered |= mask
                edges |= mask & ~ndimage.binary_erosion(mask, border_value=1)
            assert set(np.unique(labels[~covered])) <= {0, 255}
            band = labels == 255
            assert not (band & ~ndimage.binary_dilation(edges, np.ones((3, 3), bool), iterations=2)).any()
            assert band.any() == bool(anns)
            borders += int(band.any())
    assert borders > 0


def test_label_map_band_hand_computed():
    mask = np.zeros((14, 14), bool)
    mask[2:10, 2:10] = True  # an 8x8 object: outer ring rows/cols 2 and 9, dilated by 1 px -> 1..3 and 8..10
    expected = np.zeros((14, 14), np.uint8)
    expected[1:11, 1:11] = 255
    expected[4:8, 4:8] = 3  # label 2 ("star") -> VOC index 3
    scene = Scene(np.zeros((14, 14, 3), np.uint8), [ShapeObject(2, (2, 2, 10, 10), mask, 64)])
    np.testing.assert_array_equal(scene.label_map(), expected)
    no_border = expected.copy()
    no_border[1:11, 1:11] = 0
    no_border[2:10, 2:10] = 3
    np.testing.assert_array_equal(scene.label_map(border=0), no_border)


def test_label_map_touching_objects_get_a_band_between_them():
    left, right = np.zeros((12, 20), bool), np.zeros((12, 20), bool)
    left[:, :10] = True  # objects fill the image: the image border gets no band, only their shared edge (cols 9|10)
    right[:, 10:] = True
    scene = Scene(np.zeros((12, 20, 3), np.uint8), [ShapeObject(0, (0, 0, 10, 12), left, 120),
                                                     ShapeObject(1, (10, 0, 20, 12), right, 120)])
    expected = np.zeros((12, 20), np.uint8)
    expected[:, :8], expected[:, 8:12], expected[:, 12:] = 1, 255, 2
    np.testing.assert_array_equal(scene.label_map(), expected)


def test_scene_statistics_make_a_learnable_task():
    counts, sizes, occluded, classes = [], [], 0, set()
    for index in range(60):
        scene = render_scene(0, "train", index)
        h, w = scene.image.shape[:2]
        assert 224 <= w <= 320 and 224 <= h <= 320
        counts.append(len(scene.objects))
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert obj.mask.sum() >= 0.7 * obj.full_area  # occlusion below 30 %
            occluded += obj.mask.sum() < obj.full_area
            sizes.append(max(x1 - x0, y1 - y0) / min(w, h))
            classes.add(obj.label)
    assert counts[1] == counts[21] == counts[41] == 0  # every 20th scene is a negative
    assert set(counts) - {0} <= {1, 2, 3, 4} and max(counts) == 4
    assert classes == set(range(len(SHAPE_CLASSES)))
    assert occluded > 0
    assert min(sizes) < 0.12 and max(sizes) > 0.45 and max(sizes) <= 0.75


def test_imagefolder_split(tiny):
    for split, per_class in (("train", TINY["num_cls_train"]), ("val", TINY["num_cls_val"])):
        ds = ImageFolder(str(tiny / "classification" / split))
        assert ds.classes == list(SHAPE_CLASSES)
        assert np.bincount(ds.targets).tolist() == [per_class] * len(SHAPE_CLASSES)
        image, _ = ds[0]
        assert 64 <= image.size[0] <= 96 and image.size[0] == image.size[1]


def test_meta_and_cli(tiny, tmp_path):
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["classes"] == list(SHAPE_CLASSES) and meta["version"] == synthetic.VERSION
    assert meta["counts"]["train_images"] == TINY["num_train"] and meta["counts"]["train_negatives"] >= 1
    synthetic.main(["--root", str(tmp_path / "cli"), "--num-train", "6", "--num-val", "3", "--num-cls-train", "3",
                    "--num-cls-val", "2"])
    assert (tmp_path / "cli/coco/annotations/instances_train2017.json").read_bytes() == (
        tiny / "coco/annotations/instances_train2017.json").read_bytes()


@pytest.fixture
def tiny_generator(monkeypatch):
    """Make ensure_shapes generate the tiny dataset and count its calls."""
    calls = []
    real = functools.partial(generate_shapes, **TINY)

    def generate(root, *, seed=0):
        calls.append(Path(root))
        return real(root, seed=seed)

    monkeypatch.setattr(synthetic, "generate_shapes", generate)
    return calls


def test_ensure_shapes_is_idempotent_and_cleans_leftovers(tmp_path, tiny_generator, monkeypatch):
    leftover = tmp_path / ".shapes-v2-seed3.tmp-999-deadbeef"
    (leftover / "coco").mkdir(parents=True)  # an interrupted run's half dataset
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path))
    root = ensure_shapes(seed=3)
    assert root == tmp_path / "shapes-v2-seed3"
    assert json.loads((root / "meta.json").read_text())["seed"] == 3
    assert not leftover.exists()
    assert ensure_shapes(tmp_path, seed=3) == root
    assert len(tiny_generator) == 1  # the second call found the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shapes-v2-seed3.lock", "shapes-v2-seed3"]


def test_ensure_shapes_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def crash(root, *, seed=0):
        (Path(root) / "coco").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate_shapes", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(tmp_path, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == [".shapes-v2-seed0.lock"]


def test_ensure_shapes_tolerates_a_concurrent_generator(tmp_path, monkeypatch):
    real = functools.partial(generate_shapes, **TINY)

    def racing(root, *, seed=0):  # another process renames its finished copy into place while we generate
        real(tmp_path / "shapes-v2-seed0", seed=seed)
        return real(root, seed=seed)

    monkeypatch.setattr(synthetic, "generate_shapes", racing)
    assert ensure_shapes(tmp_path, seed=0) == tmp_path / "shapes-v2-seed0"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shapes-v2-seed0.lock", "shapes-v2-seed0"]


def test_ensure_shapes_concurrent_callers_generate_once(tmp_path, tiny_generator):
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_shapes(tmp_path, seed=5))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / "shapes-v2-seed5"] * 2
    assert len(tiny_generator) == 1


def test_default_dataset_in_cache(shapes_root):
    meta = json.loads((shapes_root / "meta.json").read_text())
    assert meta["counts"]["train_images"] == 2000 and meta["counts"]["val_images"] == 96
    assert len(list((shapes_root / "classification/train/circle").glob("*.jpg"))) == 500
    assert ensure_shapes() == shapes_root


def test_ensure_shapes_says_what_it_generates_once(tmp_path, tiny_generator, capsys):
    """Generation takes ~40 s at the default size: one line when it starts (where, how many images, once), one when
    it is done; a cached dataset is used without a word."""
    root = ensure_shapes(tmp_path, seed=4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == (f"generating the built-in shapes dataset (4,196 images) into {root}; this happens once, "
                        "later runs reuse it")
    assert lines[1].startswith("built-in shapes dataset ready in ") and lines[1].endswith(" s")
    assert ensure_shapes(tmp_path, seed=4) == root and len(tiny_generator) == 1
    assert capsys.readouterr() == ("", "")
