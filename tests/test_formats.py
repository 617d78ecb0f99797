"""Labelling-tool formats read into a COCO dict (``mnv2_vision/data/formats``): per-format fixtures with
hand-computed edge cases, ``check_data``'s one line per bad file, and ``convert_data``'s output rules."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnv2_vision.data.formats import detect_format, format_names, read_split
from mnv2_vision.data.formats.builder import rotated_corners

from helpers import tool


def _image(path: Path, w: int = 100, h: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 90, 90)).save(path)


def _boxes(split) -> list[tuple[str, list[float], int, bool]]:
    """(class name, xyxy rounded to 1e-6, iscrowd, has a polygon) per annotation, in file order."""
    names = {c["id"]: c["name"] for c in split.data["categories"]}
    out = []
    for a in split.data["annotations"]:
        x, y, w, h = a["bbox"]
        out.append((names[a["category_id"]], [round(v, 6) + 0.0 for v in (x, y, x + w, y + h)], a["iscrowd"],
                    "segmentation" in a))
    return out


def make_yolo(root: Path) -> Path:
    _image(root / "images/train/a.jpg")
    (root / "labels/train").mkdir(parents=True)
    # a box reaching past the right edge (cx + w/2 = 1.05), and a polygon in fractions
    (root / "labels/train/a.txt").write_text("0 0.95 0.5 0.2 0.4\n1 0.1 0.2 0.3 0.2 0.3 0.6\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: cat\n  1: dog\n")
    return root


def test_yolo_reads_coordinates_outside_0_1_as_they_are_and_polygons_as_segmentations(tmp_path):
    split = read_split("yolo", make_yolo(tmp_path / "yolo"), "train")
    # 100x50 image: cx 95, w 20 → x 85..105 (past the edge, kept: training clips it, check_data names it);
    # cy 25, h 20 → y 15..35; the polygon (10, 10), (30, 10), (30, 30) → its hull
    assert _boxes(split) == [("cat", [85, 15, 105, 35], 0, False), ("dog", [10, 10, 30, 30], 0, True)]
    assert split.data["annotations"][1]["segmentation"] == [[10, 10, 30, 10, 30, 30]]
    assert split.data["annotations"][1]["area"] == 200  # the triangle's, not the box's
    assert split.problems == [] and format_names("yolo", tmp_path / "yolo") == ["cat", "dog"]


def test_yolo_names_as_a_list_and_a_class_id_beyond_them(tmp_path):
    root = make_yolo(tmp_path / "yolo")
    (root / "data.yaml").write_text("train: images/train\nnames: [cat, dog]\n")
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")
    split = read_split("yolo", root, "train")
    assert [(p.file, p.kind) for p in split.problems] == [(f"{root}/labels/train/a.txt:2", "unknown_category")]
    assert "class 2 is not among data.yaml's 2 names (0..1)" in split.problems[0].detail
    assert len(split.data["annotations"]) == 1  # the good line is kept


def make_voc(root: Path) -> Path:
    _image(root / "JPEGImages/a.jpg")
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    (root / "Annotations/a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>100</width><height>50</height></size>"
        "<object><name>cat</name><difficult>1</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>50</ymax></bndbox></object>"
        "<object><name>dog</name><difficult>0</difficult>"
        "<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>")
    return root


def test_voc_xml_is_1_based_and_difficult_is_a_crowd_annotation(tmp_path):
    split = read_split("voc_xml", make_voc(tmp_path / "voc"), "train")
    # 1-based inclusive pixels: xmin 1 .. xmax 100 covers the whole 100 px width → 0..100 continuous
    assert _boxes(split) == [("cat", [0, 0, 100, 50], 1, False), ("dog", [10, 20, 50, 40], 0, False)]


def test_voc_difficult_is_ignored_by_the_evaluation_not_penalised(tmp_path):
    from pycocotools.coco import COCO

    from mnv2_vision.eval.coco import evaluate_coco

    split = read_split("voc_xml", make_voc(tmp_path / "voc"), "train")
    gt = COCO()
    gt.dataset = split.data
    gt.createIndex()
    dog = {"image_id": 1, "category_id": 2, "bbox": [10, 20, 40, 20], "score": 0.9}
    # no detection of the difficult cat: its AP is undefined (no non-crowd cat), not 0; the dog's AP is 1
    summary = evaluate_coco(gt, [dog])
    assert summary["per_class"][2] == pytest.approx(1.0) and np.isnan(summary["per_class"][1])
    # a detection on the difficult cat is not a false positive: the dog's AP stays 1, the cat's undefined
    cat = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 50], "score": 0.95}
    summary = evaluate_coco(gt, [dog, cat])
    assert summary["map"] == pytest.approx(1.0) and np.isnan(summary["per_class"][1])


def make_cvat(root: Path) -> Path:
    _image(root / "images/a.jpg")
    (root / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task><labels>'
        "<label><name>cat</name></label><label><name>dog</name></label></labels></task></meta>"
        '<image id="0" name="a.jpg" width="100" height="50" subset="train">'
        '<box label="cat" xtl="10" ytl="20" xbr="50" ybr="40" rotation="90" z_order="0"/>'
        '<box label="dog" xtl="10" ytl="20" xbr="50" ybr="40" rotation="30" z_order="0"/>'
        '<polygon label="dog" points="10.0,5.0;30.0,5.0;20.0,25.0" z_order="0"/>'
        '<points label="dog" points="1,1"/></image></annotations>')
    return root


def test_cvat_rotated_box_is_the_hull_of_the_turned_box(tmp_path):
    split = read_split("cvat", make_cvat(tmp_path / "cvat"), "train")
    # 40x20 box about its centre (30, 30): turned 90° it is 20 wide, 40 high; turned 30° it is
    # 40 cos 30 + 20 sin 30 = 44.641016 wide and 40 sin 30 + 20 cos 30 = 37.320508 high
    w30, h30 = 40 * np.cos(np.pi / 6) + 10, 20 + 20 * np.cos(np.pi / 6)
    expected30 = [round(v, 6) for v in (30 - w30 / 2, 30 - h30 / 2, 30 + w30 / 2, 30 + h30 / 2)]
    assert _boxes(split) == [("cat", [20, 10, 40, 50], 0, True), ("dog", expected30, 0, True),
                             ("dog", [10, 5, 30, 25], 0, True)]
    assert [p.kind for p in split.problems] == ["unsupported_shape"]  # the <points>, named


def test_rotated_corners_turn_clockwise_on_screen():
    # (1, 0) from the origin turned 90° clockwise with y down goes to (0, 1)
    corners = rotated_corners(0, 0, 1, 1, 90, about=(0, 0))
    assert np.allclose(corners, [[0, 0], [0, 1], [-1, 1], [-1, 0]])


def make_labelme(root: Path) -> Path:
    _image(root / "train/a.jpg")
    shapes = [{"label": "cat", "points": [[50, 40], [10, 20]], "shape_type": "rectangle"},
              {"label": "dog", "points": [[10, 5], [30, 5], [20, 25]], "shape_type": "polygon"},
              {"label": "dog", "points": [[10, 5], [30, 25]], "shape_type": "circle"}]
    (root / "train/a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.jpg", "imageHeight": 50,
                                                   "imageWidth": 100}))
    return root


def test_labelme_rectangle_corners_in_any_order_and_polygon(tmp_path):
    split = read_split("labelme", make_labelme(tmp_path / "labelme"), "train")
    assert _boxes(split) == [("cat", [10, 20, 50, 40], 0, False), ("dog", [10, 5, 30, 25], 0, True)]
    assert split.data["annotations"][1]["area"] == 200  # triangle, base 20, height 20
    assert [p.kind for p in split.problems] == ["unsupported_shape"]


def make_labelstudio(root: Path) -> Path:
    _image(root / "images/a.jpg", 200, 100)
    results = [
        {"original_width": 200, "original_height": 100, "type": "rectanglelabels", "id": "r1",
         "value": {"x": 10, "y": 20, "width": 25, "height": 10, "rotation": 0, "rectanglelabels": ["cat"]}},
        {"original_width": 200, "original_height": 100, "type": "rectanglelabels", "id": "r2",
         "value": {"x": 10, "y": 20, "width": 25, "height": 10, "rotation": 90, "rectanglelabels": ["cat"]}},
        {"original_width": 200, "original_height": 100, "type": "polygonlabels", "id": "p1",
         "value": {"points": [[5, 5], [15, 5], [10, 25]], "polygonlabels": ["dog"]}}]
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/a.jpg"}, "annotations": [{"result": results}]}]
    (root / "train.json").write_text(json.dumps(tasks))
    return root


def test_labelstudio_percents_and_rotation_about_the_top_left_corner(tmp_path):
    split = read_split("labelstudio", make_labelstudio(tmp_path / "ls"), "train")
    # 200x100 image: x 10 % = 20, y 20 % = 20, w 25 % = 50, h 10 % = 10 → (20, 20, 70, 30); turned 90° clockwise
    # about (20, 20) the 50x10 rectangle spans x 10..20, y 20..70; polygon (10, 5), (30, 5), (20, 25)
    assert _boxes(split) == [("cat", [20, 20, 70, 30], 0, False), ("cat", [10, 20, 20, 70], 0, True),
                             ("dog", [10, 5, 30, 25], 0, True)]


@pytest.mark.parametrize("fmt, make", [("yolo", make_yolo), ("voc_xml", make_voc), ("cvat", make_cvat),
                                       ("labelme", make_labelme), ("labelstudio", make_labelstudio)])
def test_the_format_is_detected_from_the_files(tmp_path, fmt, make):
    assert detect_format(make(tmp_path / fmt)) == fmt


# ------------------------------------------------------------------------------------------------ check_data
def _check(path: Path, capsys) -> tuple[int, list[str]]:
    code = tool("check_data").main([str(path)])
    return code, capsys.readouterr().out.splitlines()


def test_check_data_names_each_bad_yolo_file_once_and_fails(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo")
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n0 0.95 0.5 0.2 0.4\n")
    _image(root / "images/train/b.jpg")  # no label file
    (root / "labels/train/c.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    _image(root / "images/train/d.jpg")
    (root / "labels/train/d.txt").write_text("0 zero 0.5 0.1 0.1\n")  # unparsable
    code, lines = _check(root, capsys)
    assert code == 1
    problems = [line.strip() for line in lines if line.startswith("  [")]
    files = [line for line in lines if not line.startswith(("  ", "scanned", "4 problem"))]
    assert sorted(zip(files, problems)) == sorted([
        (f"{root}/labels/train/a.txt:2", "[unknown_category] class 7 is not among data.yaml's 2 names (0..1)"),
        (f"{root}/images/train/b.jpg", f"[unlabelled_image] no label file {root}/labels/train/b.txt (an image "
         "without objects needs an empty one); left out"),
        (f"{root}/labels/train/c.txt", "[orphan_label] label file without an image (looked for c.* in the split's "
         "image folder); left out"),
        (f"{root}/labels/train/d.txt:1", "[unreadable_annotations] '0 zero 0.5 0.1 0.1' is not 'class cx cy w h' or "
         "'class x1 y1 x2 y2 ...' numbers"),
        (f"{root}/labels/train/a.txt:3", "[out_of_bounds_box] annotation 2: bbox [85.0, 15.0, 20.0, 20.0] (xywh) "
         "leaves the 100x50 image by more than 1 px")])
    assert lines[-1].startswith("5 problem(s) in 5 file(s)")


def test_check_data_on_empty_and_unparsable_files_of_the_other_formats(tmp_path, capsys):
    voc = make_voc(tmp_path / "voc")
    (voc / "Annotations/a.xml").write_text("")
    labelme = make_labelme(tmp_path / "labelme")
    (labelme / "train/a.json").write_text("{not json")
    ls = make_labelstudio(tmp_path / "ls")
    (ls / "train.json").write_text("")
    cvat = make_cvat(tmp_path / "cvat")
    (cvat / "annotations.xml").write_text("<annotations><image name='a.jpg'")
    for root in (voc, labelme, ls, cvat):
        code, lines = _check(root, capsys)
        kinds = [line.strip().split("]")[0] + "]" for line in lines if line.startswith("  [")]
        assert code == 1 and "[unreadable_annotations]" in kinds, (root, lines)


def test_training_refuses_a_yolo_class_id_beyond_the_names_in_one_line(tmp_path):
    from mnv2_vision.data.formats import read_for_training
    from mnv2_vision.errors import DataError

    root = make_yolo(tmp_path / "yolo")
    (root / "labels/train/a.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"labels/train/a\.txt:1: \[unknown_category\] class 3 is not among"):
        read_for_training("yolo", root, "train")


# ------------------------------------------------------------------------------------------------ convert_data
def test_convert_data_refuses_a_non_empty_out_and_leaves_it_alone(tmp_path, capsys):
    src = make_labelme(tmp_path / "labelme")
    (src / "train/a.json").write_text(json.dumps({"shapes": [], "imagePath": "a.jpg", "imageHeight": 50,
                                                  "imageWidth": 100}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        tool("convert_data").main([str(src), "--to", "coco", "--out", str(out)])
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    tool("convert_data").main([str(src), "--to", "coco", "--out", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "train"]
    assert (out / "train/a.jpg").is_symlink() and not list(tmp_path.glob(".out.*"))
    data = json.loads((out / "annotations/instances_train.json").read_text())
    assert data["images"][0]["file_name"] == "a.jpg" and data["annotations"] == []


def test_convert_data_stops_on_problems_and_writes_nothing(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo")
    (root / "labels/train/a.txt").write_text("9 0.5 0.5 0.2 0.2\n")
    result = tool("convert_data").main([str(root), "--to", "coco", "--out", str(tmp_path / "out")])
    assert result["problems"] == 1 and not (tmp_path / "out").exists()
    assert "labels/train/a.txt:1: [unknown_category]" in capsys.readouterr().out


def test_yolo_polygons_paint_the_masks_boxes_without_one_are_ignored(tmp_path):
    from mnv2_vision.data.coco import CocoDetection
    from mnv2_vision.data.formats import dataset_kwargs

    root = make_yolo(tmp_path / "yolo")
    _, target = CocoDetection(root, "train", masks="all", **dataset_kwargs("yolo", root, "train"))[0]
    mask = target["mask"]
    assert mask.shape == (50, 100)
    assert mask[12, 25] == 2 and mask[28, 29] == 2  # inside the dog triangle (10, 10), (30, 10), (30, 30)
    assert mask[28, 12] == 0 and mask[5, 50] == 0  # below its diagonal, and far from both
    assert mask[25, 90] == 255  # the cat box has no polygon: its region is ignored, not background
    assert target["boxes"].tolist() == [[85, 15, 100, 35], [10, 10, 30, 30]]  # clipped to the image for training


def test_train_det_stops_on_a_yolo_class_id_beyond_data_yaml_in_one_line(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [cat, dog]\n")
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")
    args = ["--cfg", "ssdlite_shapes", "--out", str(tmp_path / "run")]
    for s in ("data.synthetic=false", "data.format=yolo", f"data.root={root}", "data.train_split=train",
              "data.val_split=train", "data.num_workers=0", "model.width_mult=0.35", "data.image_size=96"):
        args += ["--set", s]
    with pytest.raises(SystemExit) as e:
        tool("train_det").main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1  # DataError: the data is unusable
    assert err[0] == (f"error: {root}/labels/train/a.txt:2: [unknown_category] class 2 is not among data.yaml's 2 "
                      "names (0..1); tools/check_data.py lists every one")


def test_yolo_yaml_path_of_another_machine_falls_back_and_gapped_names_are_refused(tmp_path):
    from mnv2_vision.errors import DataError

    root = make_yolo(tmp_path / "yolo")
    (root / "data.yaml").write_text("path: /nonexistent/datasets/x\ntrain: images/train\nnames: [cat, dog]\n")
    assert len(read_split("yolo", root, "train").data["annotations"]) == 2
    (root / "data.yaml").write_text("train: images/train\nnames: {0: cat, 2: dog}\n")
    with pytest.raises(DataError, match=r"data\.yaml: names indices \[0, 2\] are not 0\.\.1"):
        read_split("yolo", root, "train")


def test_labelme_image_path_with_windows_backslashes(tmp_path):
    root = make_labelme(tmp_path / "labelme")
    _image(root / "train/sub/b.jpg")
    shapes = [{"label": "cat", "points": [[1, 2], [3, 4]], "shape_type": "rectangle"}]
    (root / "train/b.json").write_text(json.dumps({"shapes": shapes, "imagePath": "sub\\b.jpg"}))
    split = read_split("labelme", root, "train")
    assert [i["file_name"] for i in split.data["images"]] == ["a.jpg", "sub/b.jpg"]
    assert split.data["images"][1]["height"] == 50  # no imageHeight: read from the image


def test_segmentation_from_labelme_polygons_through_the_config(tmp_path):
    from mnv2_vision.config import load_config
    from mnv2_vision.data.classes import segmentation_class_names
    from mnv2_vision.lit.segmentation import build_seg_datamodule

    root = make_labelme(tmp_path / "labelme")
    cfg = load_config("deeplabv3_shapes", ["data.synthetic=false", "data.format=labelme", f"data.root={root}",
                                           "data.masks=all", "data.train_split=train", "data.val_split=train",
                                           "data.num_workers=0", "model.num_classes=null"])
    assert segmentation_class_names(cfg) == ("background", "cat", "dog")
    item = build_seg_datamodule(cfg).val_dataset()[0]
    mask = item["mask"]
    assert mask.shape == (50, 100)
    assert mask[10, 20] == 2 and mask[30, 30] == 255 and mask[45, 80] == 0  # dog polygon, cat box (no polygon)


def test_the_multitask_pair_reads_cvat_boxes_and_polygon_masks(tmp_path):
    from mnv2_vision.config import load_config
    from mnv2_vision.data.classes import multitask_seg_class_names
    from mnv2_vision.lit.multitask import build_mt_datamodule

    root = make_cvat(tmp_path / "cvat")
    cfg = load_config("multitask_shapes", ["data.synthetic=false", "data.format=cvat", f"data.root={root}",
                                           "data.masks=all", "data.seg_root=null", "data.train_split=train",
                                           "data.val_split=train", "data.num_workers=0"])
    assert multitask_seg_class_names(cfg) == ("background", "cat", "dog")
    dm = build_mt_datamodule(cfg)
    assert dm.category_names == ["cat", "dog"]
    image, target = dm.val_dataset[0]
    assert target["labels"].tolist() == [1, 2, 2]  # the turned cat box, the turned dog box, the dog polygon
    # every shape has a polygon here (turned boxes too); validation keeps the map at the image's own size.
    # (25, 48) is in the cat box turned 90° (x 20..40, y 10..50) and below the dog box turned 30° (whose lower-left
    # edge runs from (42.3, 48.7) to (7.7, 28.7): y = 38.7 at x = 25); (15, 10) is in the dog polygon only.
    mask = target["mask"]
    assert mask.shape == (50, 100) and mask[48, 25] == 1 and mask[10, 15] == 2 and mask[5, 80] == 0


def _unlabelled_and_orphan(fmt: str, root: Path) -> tuple[Path, str]:
    """Add an image without labels and a label without its image to a fixture: (the image, the label's name)."""
    if fmt == "voc_xml":
        _image(root / "JPEGImages/b.jpg")
        (root / "ImageSets/Main/train.txt").write_text("a\nb\nc\n")
        (root / "Annotations/c.xml").write_text("<annotation><filename>c.jpg</filename></annotation>")
        return root / "JPEGImages/b.jpg", "Annotations/c.xml"
    if fmt == "cvat":
        _image(root / "images/b.jpg")
        xml = (root / "annotations.xml").read_text()
        (root / "annotations.xml").write_text(xml.replace(
            "</annotations>", '<image id="1" name="c.jpg" width="10" height="10" subset="train"/></annotations>'))
        return root / "images/b.jpg", "image c.jpg"
    if fmt == "labelme":
        _image(root / "train/b.jpg")
        (root / "train/c.json").write_text(json.dumps({"shapes": [], "imagePath": "c.jpg"}))
        return root / "train/b.jpg", "train/c.json"
    _image(root / "images/b.jpg")
    tasks = json.loads((root / "train.json").read_text())
    tasks += [{"id": 2, "data": {"image": "/data/upload/1/b.jpg"}}, {"id": 3, "data": {"image": "s3://x/c.jpg"},
                                                                       "annotations": [{"result": []}]}]
    (root / "train.json").write_text(json.dumps(tasks))
    return root / "images/b.jpg", "task 3"


@pytest.mark.parametrize("fmt, make", [("voc_xml", make_voc), ("cvat", make_cvat), ("labelme", make_labelme),
                                       ("labelstudio", make_labelstudio)])
def test_check_data_names_images_without_labels_and_labels_without_images(tmp_path, capsys, fmt, make):
    root = make(tmp_path / fmt)
    image, label = _unlabelled_and_orphan(fmt, root)
    code, lines = _check(root, capsys)
    found = {}
    for file, line in zip(lines, lines[1:]):
        if line.startswith("  ["):
            found[line.strip().split("]")[0][1:]] = file
    assert code == 1
    assert found["unlabelled_image"] == str(image)
    assert label in found["orphan_label"]


def test_convert_voc_difficult_to_yolo_says_it_leaves_it_out_and_back_to_voc_keeps_it(tmp_path, capsys):
    src = make_voc(tmp_path / "voc")
    tool("convert_data").main([str(src), "--to", "yolo", "--out", str(tmp_path / "yolo")])
    assert "note: 1 crowd / difficult box(es) left out: yolo has no flag" in capsys.readouterr().out
    assert (tmp_path / "yolo/labels/train/a.txt").read_text().count("\n") == 1  # the dog only
    tool("convert_data").main([str(src), "--to", "voc_xml", "--out", str(tmp_path / "voc2")])
    assert _boxes(read_split("voc_xml", tmp_path / "voc2", "train")) == _boxes(read_split("voc_xml", src, "train"))


def test_check_data_with_a_config_reads_its_format_and_splits(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo")
    (root / "labels/train/a.txt").write_bytes(b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\r\n1 0.5 0.5 0.2 2.0\r\n")  # BOM, CRLF
    code = tool("check_data").main(["--cfg", "ssdlite_shapes", "--set", "data.synthetic=false", "--set",
                                    "data.format=yolo", "--set", f"data.root={root}", "--set", "data.train_split=train",
                                    "--set", "data.val_split=train"])
    out = capsys.readouterr().out.splitlines()
    # the second box is 100 px high (cy 25 ± 50) in a 50 px image: outside; the BOM-prefixed first line reads
    assert code == 1 and out[0] == f"{root}/labels/train/a.txt:2" and "[out_of_bounds_box]" in out[1]
    assert out[-1].startswith("1 problem(s) in 1 file(s)")


def test_a_voc2012_folder_with_annotations_is_found_as_the_segmentation_layout_only(tmp_path):
    from mnv2_vision.data.detect import detect_layouts

    root = make_voc(tmp_path / "VOC2012")  # Annotations/, JPEGImages/, ImageSets/Main/ as VOC2012 ships them
    assert [layout.format for layout in detect_layouts(root)] == ["voc_xml"]
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text()
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(ids)
    assert [layout.format for layout in detect_layouts(root)] == ["voc"]  # its segmentation layout, not both
