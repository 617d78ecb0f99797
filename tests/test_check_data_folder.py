"""``mnv2-check-data PATH``: a dataset folder's layout detected from its files alone (COCO, VOC, a VOCdevkit,
ImageFolder, CIFAR-10), every split found checked; COCO masks checked when the file has segmentations; an iscrowd
other than 0/1 reported by check_data and read as "not a crowd" by training; a broken categories list a DataError."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnv2_vision.config import load_config
from mnv2_vision.data.classes import coco_category_names
from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.detect import Layout, detect_layouts
from mnv2_vision.data.synthetic import generate_shapes
from mnv2_vision.data.verify import check_coco
from mnv2_vision.errors import DataError

TOOLS = Path(__file__).resolve().parents[1] / "tools"
REAL = os.environ.get("MNV2_REAL_DATA")


def _check_data(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("check_data_folder_tool", TOOLS / "check_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def _cifar(root: Path, test_labels: list[int] = (0, 9)) -> Path:
    """``<root>/cifar-10-batches-py``: five train batches of 2 images, a test batch, batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(test_labels) if name == "test_batch" else [1, 2]
        batch = {"data": np.zeros((len(labels), 3072), np.uint8), "labels": labels, "batch_label": name}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return base


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = generate_shapes(tmp_path_factory.mktemp("folder") / "shapes", num_train=4, num_val=2, num_cls_train=2,
                           num_cls_val=1)
    _cifar(root / "cifar")
    return root


@pytest.mark.parametrize("sub, expected", [
    ("coco", Layout("coco", Path("coco"), ("train2017", "val2017"))),
    ("VOC2012", Layout("voc", Path("VOC2012"), ("train", "val"))),  # trainval is train + val: not read twice
    (".", Layout("voc", Path("VOC2012"), ("train", "val"))),  # a VOCdevkit: the folder holding VOC2012/
    ("classification", Layout("imagefolder", Path("classification"), ("train", "val"))),
    ("cifar", Layout("cifar10", Path("cifar"), ("train", "test"))),
    ("cifar/cifar-10-batches-py", Layout("cifar10", Path("cifar"), ("train", "test"))),
])
def test_each_layout_is_detected_from_the_folder_alone(shapes, sub, expected):
    layout = expected.__class__(expected.format, (shapes / expected.root).resolve(), expected.splits)
    assert [Layout(f.format, f.root.resolve(), f.splits) for f in detect_layouts(shapes / sub)] == [layout]


@pytest.mark.parametrize("sub, scanned", [
    ("coco", ["train2017: 4 image(s)", "annotation(s) with masks (instances_train2017.json)", "val2017: 2 image(s)"]),
    ("VOC2012", ["split 'train', 4 image(s) and label map(s)", "split 'val', 2 image(s)"]),
    ("classification", ["train: 8 image(s) in 4 class folder(s)", "val: 4 image(s) in 4 class folder(s)"]),
    ("cifar", ["cifar-10-batches-py: 10 train and 2 test image(s)"]),
])
def test_check_data_on_a_clean_folder(shapes, capsys, sub, scanned):
    assert _check_data([str(shapes / sub)]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s) in 0 file(s)" in out
    for text in scanned:
        assert text in out, out


def test_undetectable_folder_is_one_line_naming_the_layouts(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")
    with pytest.raises(SystemExit) as e:
        _check_data([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {tmp_path}: no dataset layout recognised; looked for COCO")
    for name in ("VOC (", "VOCdevkit", "ImageFolder (<split>/<class>/*.jpg)", "CIFAR-10"):
        assert name in err


def test_path_or_cfg_not_both(shapes, capsys):
    with pytest.raises(SystemExit) as e:
        _check_data([str(shapes / "coco"), "--cfg", "ssdlite_shapes"])
    assert e.value.code == 2 and "give a dataset folder or --cfg" in capsys.readouterr().err


def test_coco_masks_checked_when_the_file_has_segmentations(shapes, tmp_path, capsys):
    coco = shutil.copytree(shapes / "coco", tmp_path / "coco")
    ann_path = coco / "annotations" / "instances_val2017.json"
    data = json.loads(ann_path.read_text())
    ann = data["annotations"][0]
    ann["segmentation"]["size"][0] += 3  # an RLE of another size than its image
    ann_path.write_text(json.dumps(data))
    assert _check_data([str(coco)]) == 1
    assert "[mask_size_mismatch] annotation" in capsys.readouterr().out
    cfg = tmp_path / "c.yaml"  # a detection config (no data.masks): masks are not its concern, as before
    cfg.write_text(f"task: detection\ndata:\n  format: coco\n  root: {coco}\n")
    assert _check_data(["--cfg", str(cfg)]) == 0


def test_damaged_imagefolder_and_cifar(shapes, tmp_path, capsys):
    folder = shutil.copytree(shapes / "classification", tmp_path / "classification")
    corrupt = next((folder / "train" / "circle").glob("*.jpg"))
    corrupt.write_bytes(b"\x00not a JPEG" * 10)
    (folder / "val" / "hexagon").mkdir()  # a class the training split lacks, without images
    assert _check_data([str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"{corrupt}\n  [unreadable_image]" in out
    assert f"{folder / 'val' / 'hexagon'}\n  [empty_class]" in out
    assert f"{folder / 'val'}\n  [class_mismatch] classes differ from split 'train''s: missing [], extra ['hexagon']" \
        in out
    (folder / "test").mkdir()  # a split asked for that holds no class folder
    assert _check_data([str(folder), "--split", "test"]) == 1
    assert f"{folder / 'test'}\n  [missing_file] no class folder in it" in capsys.readouterr().out
    base = _cifar(tmp_path / "cifar", test_labels=[3, 12])
    assert _check_data([str(tmp_path / "cifar")]) == 1
    assert f"{base / 'test_batch'}\n  [label_values] labels 3..12 outside 0..9" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------ iscrowd
def test_iscrowd_other_than_0_or_1_is_reported_and_read_as_not_crowd(shapes, tmp_path, caplog):
    coco = shutil.copytree(shapes / "coco", tmp_path / "coco")
    ann_path = coco / "annotations" / "instances_train2017.json"
    data = json.loads(ann_path.read_text())
    first = data["annotations"][0]
    first["iscrowd"] = "0"  # a string: Python's truth would make it a crowd
    ann_path.write_text(json.dumps(data))
    image = next(img for img in data["images"] if img["id"] == first["image_id"])
    problems = [p for p in check_coco(coco, "train2017") if p.kind == "malformed_iscrowd"]
    assert [str(p) for p in problems] == [f"{coco / 'train2017' / image['file_name']}: [malformed_iscrowd] annotation "
                                          f"{first['id']}: iscrowd '0' is not 0 or 1 (training treats it as not crowd)"]
    with caplog.at_level(logging.WARNING, logger="mnv2_vision"):
        ds = CocoDetection(coco, "train2017")
    warnings = [r.getMessage() for r in caplog.records if "iscrowd" in r.getMessage()]
    assert len(warnings) == 1 and str(ann_path) in warnings[0] and f"[{first['id']}]" in warnings[0], warnings
    index = ds.ids.index(first["image_id"])
    boxes, _ = ds.load_annotations(index, (image["height"], image["width"]))
    assert len(boxes) == sum(a["image_id"] == first["image_id"] for a in data["annotations"])  # its box is kept
    assert ds.coco.anns[first["id"]]["iscrowd"] == 0  # and COCOeval, reading the same index, agrees


def test_broken_categories_list_is_a_data_error_naming_the_file(shapes, tmp_path):
    coco = shutil.copytree(shapes / "coco", tmp_path / "coco")
    ann_path = coco / "annotations" / "instances_train2017.json"
    data = json.loads(ann_path.read_text())
    cfg = load_config("ssdlite_shapes", ["data.synthetic=false", f"data.root={coco}"])
    assert coco_category_names(cfg) == ["circle", "square", "star", "triangle"]
    for categories, message in (([{"name": "circle"}], "KeyError: 'id'"), ("circle", "TypeError"),
                                ([], "defines no categories")):
        ann_path.write_text(json.dumps({**data, "categories": categories}))
        with pytest.raises(DataError, match=message) as e:
            coco_category_names(cfg)
        assert str(ann_path) in str(e.value)


# ---------------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not REAL, reason="MNV2_REAL_DATA not set (real COCO / VOC subsets)")
@pytest.mark.parametrize("sub, fmt, masks", [("coco128", "coco", False), ("voc_coco", "voc", False),
                                             ("coco_masks", "coco", True)])
def test_real_folders_are_detected_and_clean(capsys, sub, fmt, masks):
    root = Path(REAL) / sub
    (layout,) = detect_layouts(root)
    assert layout.format == fmt and layout.splits == (("train2017", "val2017") if fmt == "coco" else ("train", "val"))
    assert _check_data([str(root)]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s)" in out and ("with masks" in out) == masks
