"""Semantic label maps from COCO instance annotations (``data/masks.py``): hand-built polygons, RLE and crowd RLE with
known answers, the real ``coco_masks`` fixture against an independent ``pycocotools.mask`` composition, the
check_data failure modes, and the COCO segmentation dataset."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mnv2_vision.data.verify import check_coco
from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.segmentation.coco import CocoSegmentation
from mnv2_vision.data.masks import VOC20_CATEGORY_IDS, paint_semantic, segmentation_problems
from mnv2_vision.data.segmentation.transforms import SegEvalTransform

from helpers import real_data, tool as _tool

H, W = 40, 50
CATS = [{"id": i, "name": n} for i, n in ((1, "person"), (18, "dog"), (28, "umbrella"))]


def _rect_rle(y0, y1, x0, x1, h=H, w=W, compressed=True):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    if compressed:
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    # Uncompressed RLE (how COCO stores crowd regions): run lengths in column-major order, starting with zeros.
    flat = m.flatten(order="F")
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    runs.append(n)
    return {"size": [h, w], "counts": runs}


def _square(x0, y0, x1, y1):  # polygon with pixel-corner coordinates
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _anns():
    return [
        # person polygon 10x10 at rows 2..12, cols 2..12
        {"id": 1, "category_id": 1, "segmentation": _square(2, 2, 12, 12), "bbox": [2, 2, 10, 10], "iscrowd": 0},
        # dog as compressed RLE overlapping the person on rows 8..12, cols 8..12
        {"id": 2, "category_id": 18, "segmentation": _rect_rle(8, 20, 8, 20), "bbox": [8, 8, 12, 12], "iscrowd": 0},
        # umbrella (not a VOC class) polygon, rows 25..35, cols 2..12
        {"id": 3, "category_id": 28, "segmentation": _square(2, 25, 12, 35), "bbox": [2, 25, 10, 10], "iscrowd": 0},
        # crowd of persons, uncompressed RLE, rows 25..35, cols 30..45
        {"id": 4, "category_id": 1, "segmentation": _rect_rle(25, 35, 30, 45, compressed=False),
         "bbox": [30, 25, 15, 10], "iscrowd": 1},
        # a person whose mask is empty (a 2-point "polygon"): its box region becomes 255
        {"id": 5, "category_id": 1, "segmentation": [[40, 2, 45, 2]], "bbox": [40, 2, 5, 6], "iscrowd": 0},
    ]


@pytest.fixture(scope="module")
def hand_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("masks")
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "val" / "a.png")
    data = {"images": [{"id": 7, "file_name": "a.png", "width": W, "height": H}], "annotations": [
        {**a, "image_id": 7, "area": 1.0} for a in _anns()], "categories": CATS}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def test_voc20_label_map_by_hand():
    label, empty = paint_semantic(_anns(), H, W, {c: i + 1 for i, c in enumerate(VOC20_CATEGORY_IDS)})
    person, dog = 15, 12  # VOC labels of COCO 1 and 18
    assert label.dtype == np.uint8 and label.shape == (H, W)
    assert label[5, 5] == person and label[15, 15] == dog
    assert label[10, 10] == 255  # inside both the person and the dog: overlap
    assert label[30, 5] == 0  # umbrella: background in VOC classes
    assert (label[25:35, 30:45] == 255).all()  # crowd region
    assert (label[2:8, 40:45] == 255).all() and empty == [5]  # empty mask: its box region is ignored
    assert label[38, 48] == 0
    # The polygon rasterises whole pixels inside its outline; exact counts of each value:
    assert (label == person).sum() == 10 * 10 - 4 * 4 and (label == dog).sum() == 12 * 12 - 4 * 4


def test_all_classes_label_map_by_hand():
    label, _ = paint_semantic(_anns(), H, W, {1: 1, 18: 2, 28: 3})
    assert label[5, 5] == 1 and label[15, 15] == 2 and label[30, 5] == 3 and label[10, 10] == 255
    assert (label[25:35, 30:45] == 255).all()


def test_a_crowd_of_an_unselected_category_is_background():
    crowd = {"id": 9, "category_id": 28, "segmentation": _rect_rle(0, 10, 0, 10, compressed=False),
             "bbox": [0, 0, 10, 10], "iscrowd": 1}
    label, _ = paint_semantic([crowd], H, W, {1: 15})
    assert (label == 0).all()


def test_four_number_polygons_are_not_read_as_boxes():
    # pycocotools.frPyObjects reads [[x, y, w, h]] as a BOX; a 2-point polygon must paint nothing.
    ann = {"id": 1, "category_id": 1, "segmentation": [[1, 1, 30, 30]], "bbox": [1, 1, 29, 29], "iscrowd": 0}
    label, empty = paint_semantic([ann], H, W, {1: 1})
    assert empty == [1] and set(np.unique(label)) == {0, 255}  # box region ignored, never labelled "person"


def test_rle_of_another_size_is_an_error_naming_the_annotation():
    ann = {"id": 77, "category_id": 1, "segmentation": _rect_rle(0, 5, 0, 5, h=30, w=W), "bbox": [0, 0, 5, 5]}
    with pytest.raises(ValueError, match=r"annotation 77: RLE size \[30, 50\].*\[40, 50\]"):
        paint_semantic([ann], H, W, {1: 1})


def test_coco_detection_returns_boxes_and_the_label_map(hand_root):
    ds = CocoDetection(hand_root, "val", masks="voc20")
    image, target = ds[0]
    assert target["mask"].dtype == torch.int64 and tuple(target["mask"].shape) == (H, W) == tuple(image.shape[1:])
    assert int(target["mask"][5, 5]) == 15 and len(target["boxes"]) == 4  # the crowd box is not a target
    assert ds.mask_class_names[15] == "person" and len(ds.mask_class_names) == 21
    all_ds = CocoDetection(hand_root, "val", masks="all")
    assert all_ds.mask_class_names == ["background", "person", "dog", "umbrella"]
    assert int(all_ds[0][1]["mask"][30, 5]) == 3


def test_check_data_reports_the_mask_failure_modes(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "val" / "a.png")
    anns = [
        {"id": 1, "category_id": 1, "segmentation": _square(-5, 2, 30, 12), "bbox": [0, 2, 30, 10]},  # outside
        {"id": 2, "category_id": 1, "segmentation": _rect_rle(0, 5, 0, 5, h=H + 1), "bbox": [0, 0, 5, 5]},  # size
        {"id": 3, "category_id": 1, "segmentation": [], "bbox": [3, 3, 5, 5]},  # empty
        {"id": 4, "category_id": 1, "segmentation": _rect_rle(0, 0, 0, 0), "bbox": [3, 3, 5, 5]},  # empty RLE
        {"id": 5, "category_id": 1, "segmentation": _square(1, 1, 20, 20), "bbox": [1, 1, 19, 19]},  # fine
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "annotations": [{**a, "image_id": 1, "iscrowd": 0, "area": 1.0} for a in anns], "categories": CATS}
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(data))
    assert check_coco(tmp_path, "val") == []  # masks are not checked unless asked for
    problems = check_coco(tmp_path, "val", masks=True)
    kinds = sorted((p.kind, p.detail.split(":")[0]) for p in problems)
    assert kinds == [("empty_mask", "annotation 3 has no segmentation"), ("empty_mask", "annotation 4"),
                     ("mask_size_mismatch", "annotation 2"), ("polygon_outside_image", "annotation 1")]
    assert all(p.file.endswith("a.png") for p in problems)
    # Training's policy for the same file: the RLE of another size makes the image unusable → skipped.
    with pytest.raises(ValueError, match="a.png: annotation 2: RLE size"):
        CocoDetection(tmp_path, "val", masks="voc20")[0]
    assert segmentation_problems({"id": 9, "segmentation": [[0, 0, 1]]}, H, W)[0].startswith("malformed_mask")


def test_coco_segmentation_items_and_area_filter(hand_root):
    ds = CocoSegmentation(hand_root, "val", SegEvalTransform(), masks="voc20")
    item = ds[0]
    assert item["id"] == "7" and item["mask"].shape == item["image"].shape[1:] and ds.num_classes == 21
    with pytest.raises(ValueError, match="no image left"):
        CocoSegmentation(hand_root, "val", SegEvalTransform(), masks="voc20", min_mask_pixels=1000)


# ---------------------------------------------------------------------------------------------- the real fixture
def _independent_label_map(coco: COCO, img_id: int, cat_to_label: dict[int, int]) -> np.ndarray:
    """Stack every selected instance mask decoded straight by ``pycocotools.mask`` and reduce the stack
    (torchvision's composition: max label over instances, 255 where more than one instance covers a pixel), then
    crowd regions and empty instances' boxes to 255."""
    info = coco.imgs[img_id]
    h, w = info["height"], info["width"]
    stack, labels, ignore = [], [], np.zeros((h, w), bool)
    for ann in coco.imgToAnns[img_id]:
        if ann["category_id"] not in cat_to_label:
            continue
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rles = mask_utils.frPyObjects([p for p in seg if len(p) >= 6], h, w)
            m = mask_utils.decode(rles).any(axis=2) if rles else np.zeros((h, w), bool)
        else:
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            m = mask_utils.decode(rle).astype(bool)
        if ann["iscrowd"]:
            ignore |= m
        elif m.any():
            stack.append(m)
            labels.append(cat_to_label[ann["category_id"]])
        else:
            x, y, bw, bh = ann["bbox"]
            ignore[int(np.floor(y)):int(np.ceil(y + bh)), int(np.floor(x)):int(np.ceil(x + bw))] = True
    if not stack:
        out = np.zeros((h, w), np.uint8)
    else:
        s = np.stack(stack)
        out = (s * np.array(labels, np.uint8)[:, None, None]).max(axis=0)
        out[s.sum(axis=0) > 1] = 255
    out[ignore] = 255
    return out


@pytest.fixture(scope="module")
def coco_masks() -> Path:
    return real_data("coco_masks", "annotations/instances_train2017.json")


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_real_label_maps_equal_an_independent_pycocotools_composition(coco_masks, split):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_masks / "annotations" / f"instances_{split}.json"))
    assert check_coco(coco_masks, split, masks=True) == []  # the fixture itself is clean
    voc20 = CocoDetection(coco_masks, split, masks="voc20")
    everything = CocoDetection(coco_masks, split, masks="all")
    voc_map = {c: i + 1 for i, c in enumerate(VOC20_CATEGORY_IDS)}
    all_map = {c: i + 1 for i, c in enumerate(sorted(coco.getCatIds()))}
    crowd_pixels = 0
    for i, img_id in enumerate(voc20.ids):
        size = (coco.imgs[img_id]["height"], coco.imgs[img_id]["width"])
        for ds, cat_map in ((voc20, voc_map), (everything, all_map)):
            np.testing.assert_array_equal(ds.load_mask(i, size), _independent_label_map(coco, img_id, cat_map))
        painted = everything.load_mask(i, size)
        crowd = np.zeros(size, bool)
        for ann in coco.imgToAnns[img_id]:
            if ann["iscrowd"]:
                crowd |= mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], *size)
                                           if isinstance(ann["segmentation"]["counts"], list)
                                           else ann["segmentation"]).astype(bool)
        assert (painted[crowd] == 255).all()
        crowd_pixels += int(crowd.sum())
        # The fixture's masks come from COCO panoptic segments, which never overlap: every 255 is a crowd pixel here
        # (the overlap rule is checked on the hand-built annotations above).
        assert ((painted == 255) == crowd).all()
    assert crowd_pixels > 0


def test_coco_pretraining_stage_then_voc_fine_tune(coco_masks, tmp_path, capsys):
    """TF DeepLab's two stages: configs/deeplabv3_coco_voc.yaml trains DeepLab on COCO painted in the VOC classes
    (here a few real coco_masks images), and configs/deeplabv3_voc.yaml starts from its model.pt through
    model.pretrained — every tensor, head included (same 21 classes), arrives."""
    from mnv2_vision.checkpoint import build_from_config
    from mnv2_vision.config import load_config

    small = ["data.subset=4", "data.image_size=96", "data.batch_size=2", "data.val_batch_size=2",
             "data.num_workers=0", "model.width_mult=0.35", "model.pretrained=null", "trainer.max_epochs=1"]
    sets = [a for kv in [f"data.root={coco_masks}", *small] for a in ("--set", kv)]
    result = _tool("train_seg").main(["--cfg", "deeplabv3_coco_voc", "--out", str(tmp_path / "coco"), *sets])
    assert result["num_images"] > 0 and 0.0 <= result["val_miou"] <= 1.0
    out = capsys.readouterr().out
    assert "masks='voc20'" in out, out[-2000:]
    cfg = load_config("deeplabv3_voc", ["model.width_mult=0.35", f"model.pretrained={tmp_path / 'coco' / 'model.pt'}"])
    model = build_from_config(cfg)
    stage1 = torch.load(tmp_path / "coco" / "model.pt", weights_only=True)
    state = model.state_dict()
    assert set(stage1) == set(state)
    for k, v in stage1.items():
        assert torch.equal(state[k], v), k
