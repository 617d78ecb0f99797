"""Round trips: real coco128 val written to every format and read back (directly and through ``convert_data --to
coco``) keeps its boxes and class names; the shapes data written as YOLO and VOC XML gives the same training
targets as from COCO, and the same mAP after a few training steps (~9 s)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mnv2_vision.data.formats import LABEL_TOOL_FORMATS, read_split

from helpers import real_data, tool

# each format's rounding: YOLO 8 decimals of the image side, VOC whole 1-based pixels, the others 2 decimals
TOLERANCE = {"yolo": 0.5, "voc_xml": 1.5, "cvat": 0.5, "labelme": 0.5, "labelstudio": 0.5}


def _by_file(data: dict) -> dict[str, list[tuple[str, np.ndarray]]]:
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in data["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        out[files[a["image_id"]]].append((names[a["category_id"]], np.array([x, y, x + w, y + h])))
    return out


def _max_error(ref: dict, got: dict) -> float:
    """The largest distance (px) from a reference box to the nearest box of its class in the same image; the
    images, box counts and class counts must agree."""
    assert ref.keys() == got.keys()
    worst = 0.0
    for f, boxes in ref.items():
        assert sorted(n for n, _ in boxes) == sorted(n for n, _ in got[f]), f
        for name, box in boxes:
            worst = max(worst, min(np.abs(box - b).max() for n, b in got[f] if n == name))
    return worst


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    root = real_data("coco128", "annotations/instances_val2017.json")
    return root, json.loads((root / "annotations/instances_val2017.json").read_text())


@pytest.mark.parametrize("fmt", LABEL_TOOL_FORMATS)
def test_coco128_val_written_to_each_format_reads_back(coco128, tmp_path, fmt):
    root, ref = coco128
    out = tmp_path / fmt
    assert tool("convert_data").main([str(root), "--split", "val2017", "--to", fmt, "--out", str(out)])[
        "problems"] == 0
    back = read_split(fmt, out, "val2017")
    names = [c["name"] for c in sorted(ref["categories"], key=lambda c: c["id"])]
    assert [c["name"] for c in back.data["categories"]] == names and back.problems == []
    assert _max_error(_by_file(ref), _by_file(back.data)) <= TOLERANCE[fmt]
    # through convert_data --to coco: the same boxes in a COCO file
    coco = tmp_path / f"{fmt}-coco"
    tool("convert_data").main([str(out), "--to", "coco", "--out", str(coco)])
    again = json.loads((coco / "annotations/instances_val2017.json").read_text())
    assert [c["name"] for c in again["categories"]] == names
    assert _max_error(_by_file(ref), _by_file(again)) <= TOLERANCE[fmt]
    assert len(again["annotations"]) == len(ref["annotations"]) == 898


@pytest.fixture(scope="module")
def shapes_formats(tmp_path_factory):
    """A small shapes dataset (COCO layout) and its YOLO and VOC XML copies."""
    from mnv2_vision.data.synthetic import generate_shapes

    base = tmp_path_factory.mktemp("shapes")
    generate_shapes(base / "src", seed=0, num_train=24, num_val=8, num_cls_train=0, num_cls_val=0)
    coco = base / "src" / "coco"
    for fmt in ("yolo", "voc_xml"):
        tool("convert_data").main([str(coco), "--to", fmt, "--out", str(base / fmt)])
    return {"coco": coco, "yolo": base / "yolo", "voc_xml": base / "voc_xml"}


def _targets(fmt: str, root: Path) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    from mnv2_vision.data.detection.datamodule import DetectionDataModule

    dm = DetectionDataModule(root, "train2017", "val2017", image_size=96, num_workers=0, batch_size=4, fmt=fmt)
    items = []
    for dataset in (dm.train_dataset, dm.val_dataset):
        for i in range(len(dataset)):
            image, target = dataset[(i, 7)]  # the same augmentation seed for every format
            items.append((image, target["boxes"], target["labels"]))
    assert dm.category_names == ["circle", "square", "star", "triangle"]
    return items


def test_shapes_as_yolo_and_voc_xml_give_the_same_training_targets_as_coco(shapes_formats):
    ref = _targets("coco", shapes_formats["coco"])
    for fmt in ("yolo", "voc_xml"):
        got = _targets(fmt, shapes_formats[fmt])
        assert len(got) == len(ref) == 32
        for (ri, rb, rl), (gi, gb, gl) in zip(ref, got):
            assert torch.equal(ri, gi) and torch.equal(rl, gl)
            # shapes boxes are whole pixels: VOC's 1-based integers are exact, YOLO's 8 decimals within 1e-4 px
            assert torch.allclose(rb, gb, atol=1e-4), fmt


def test_shapes_as_yolo_and_voc_xml_train_to_the_same_map_as_coco(shapes_formats, tmp_path):
    common = ["data.image_size=96", "trainer.max_epochs=1", "data.num_workers=0", "data.batch_size=4",
              "data.val_batch_size=4", "model.width_mult=0.35", "data.synthetic=false", "data.subset=null"]
    maps, ckpts = {}, {}
    for fmt in ("coco", "yolo", "voc_xml"):
        args = ["--cfg", "ssdlite_shapes", "--out", str(tmp_path / fmt)]
        for s in [*common, f"data.format={fmt}", f"data.root={shapes_formats[fmt]}"]:
            args += ["--set", s]
        result = tool("train_det").main(args)
        maps[fmt], ckpts[fmt] = result["map"], result["checkpoint"]
    # predict's class names come from the checkpoint: the format's own class list
    from mnv2_vision.checkpoint import load_checkpoint

    assert load_checkpoint(ckpts["yolo"])[2]["category_names"] == ["circle", "square", "star", "triangle"]
    # eval_det reads the checkpoint's data.format and scores what training scored
    evaluated = tool("eval_det").main(["--ckpt", ckpts["voc_xml"], "--out", str(tmp_path / "eval")])
    assert evaluated["map"] == pytest.approx(maps["voc_xml"], abs=1e-9)
    assert maps["coco"] > 0, maps  # six steps score little, but a score, which moved boxes would change
    assert maps["yolo"] == pytest.approx(maps["coco"], abs=1e-6)
    assert maps["voc_xml"] == pytest.approx(maps["coco"], abs=1e-6)


@pytest.mark.parametrize("fmt", ["yolo", "voc_xml"])
def test_coco128_as_yolo_and_voc_read_as_supervision_reads_them(coco128, tmp_path, fmt):
    """A reference reader: supervision's YOLO and Pascal VOC loaders (right on these two, ``docs/datasets.md``)
    give the same boxes and classes as ours on the converted coco128 val."""
    sv = pytest.importorskip("supervision")
    root, _ = coco128
    out = tmp_path / fmt
    tool("convert_data").main([str(root), "--split", "val2017", "--to", fmt, "--out", str(out)])
    if fmt == "yolo":
        ref = sv.DetectionDataset.from_yolo(str(out / "images/val2017"), str(out / "labels/val2017"),
                                            str(out / "data.yaml"))
    else:
        ref = sv.DetectionDataset.from_pascal_voc(str(out / "JPEGImages"), str(out / "Annotations"))
    ours = _by_file(read_split(fmt, out, "val2017").data)
    theirs = {}
    for path, _, det in ref:
        theirs[Path(path).name] = [(ref.classes[c], box) for c, box in zip(det.class_id.tolist(), det.xyxy)]
    assert sum(len(v) for v in theirs.values()) == 898
    assert _max_error(theirs, ours) <= 1e-3
