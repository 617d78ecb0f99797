"""CPU smoke tests of every detection tool on the built-in shapes data, cross-checked against each other and
against pycocotools run directly on the files they write."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mnv2_vision.checkpoint import load_checkpoint, load_model
from mnv2_vision.config import load_config, to_dict

from helpers import sets, tool as _tool, train

TINY = sets("data.subset=8", "data.image_size=96", "trainer.max_epochs=1", "data.num_workers=0",
            "data.batch_size=4", "data.val_batch_size=4", "model.width_mult=0.35",
            "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_root):
    return train(tmp_path_factory, "train_det", "ssdlite_shapes", TINY)


def test_train_det_writes_checkpoints_config_and_metrics(trained, capsys, shapes_root):
    out, result = trained
    assert (out / "ckpt" / "last.ckpt").is_file() and Path(result["checkpoint"]).is_file()
    assert "best-epoch=000-map=" in Path(result["checkpoint"]).name
    cfg, state, hparams = load_checkpoint(out / "ckpt" / "last.ckpt")
    assert cfg.task == "detection" and cfg.model.num_classes == 5  # 4 shapes + background, from the data
    assert hparams["category_ids"] == [1, 3, 4, 7] and hparams["category_names"][0] == "circle"
    assert torch.load(out / "model.pt", weights_only=True).keys() == state.keys()
    saved = load_config(out / "config.yaml")
    assert saved.model.num_classes == 5
    assert saved.data.synthetic and saved.data.root == str(shapes_root / "coco")  # where the images came from
    header = (out / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "val/map", "val/map50"):
        assert key in header
    saved = json.loads((out / "final_metrics.json").read_text())
    assert len(saved["stats"]) == 12 and saved["map"] == result["map"] and set(saved["per_class"]) == {
        "circle", "square", "star", "triangle"}


def test_eval_det_prints_what_pycocotools_gives_on_its_json(trained, tmp_path, capsys, shapes_root):
    out, result = trained
    ev = _tool("eval_det").main(["--ckpt", str(out / "ckpt" / "last.ckpt"), "--out", str(tmp_path),
                                 "--set", "data.num_workers=0", "--pr-plot"])
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "detections_val2017.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert {r["category_id"] for r in results} <= {1, 3, 4, 7}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shapes_root / "coco" / "annotations" / "instances_val2017.json"))
        e = COCOeval(gt, gt.loadRes(str(tmp_path / "detections_val2017.json")), "bbox")
        e.params.imgIds = sorted(gt.getImgIds())[:8]
        e.evaluate(), e.accumulate(), e.summarize()
    np.testing.assert_allclose(ev["stats"], e.stats, atol=1e-12)
    assert f"mAP@[.5:.95] = {e.stats[0]:.4f}" in printed and "AR@[.50:.95] large maxDets=100" in printed
    assert "triangle" in printed  # the per-class table
    # Same weights (last == best after one epoch), same images, same metric as the training run's final evaluation.
    assert ev["map"] == pytest.approx(result["map"], abs=1e-9)
    pr = Image.open(tmp_path / "pr_val2017.png")
    assert ev["pr_plot"] == str(tmp_path / "pr_val2017.png") and pr.format == "PNG" and pr.size[0] > 500
    written = [line for line in printed.splitlines() if line.startswith("wrote ")]
    assert written == ["wrote " + ", ".join(str(tmp_path / f) for f in ("config.yaml", "detections_val2017.json",
                                                                      "metrics_val2017.json", "pr_val2017.png"))]


def test_predict_detection_writes_images_and_json(trained, tmp_path, shapes_root):
    out, _ = trained
    images = sorted((shapes_root / "coco" / "val2017").glob("*.jpg"))[:2]
    records = _tool("predict").main(["--ckpt", str(out / "ckpt" / "last.ckpt"), *map(str, images),
                                     "--out", str(tmp_path), "--score-thresh", "0.0"])
    assert [Path(r["file"]).name for r in records] == [p.name for p in images]
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert saved == records
    for p, rec in zip(images, records):
        drawn = Image.open(tmp_path / f"{p.stem}.jpg")
        assert drawn.size == Image.open(p).size == (rec["width"], rec["height"])
        assert 0 < len(rec["detections"]) <= 100  # score threshold 0: every kept detection is listed
        d = rec["detections"][0]
        assert d["category_id"] == [1, 3, 4, 7][d["label"] - 1] and d["name"] in {"circle", "square", "star",
                                                                                   "triangle"}
        x0, y0, x1, y1 = d["bbox_xyxy"]
        assert 0 <= x0 <= x1 <= rec["width"] and 0 <= y0 <= y1 <= rec["height"]


def test_predict_segmentation_branch(tmp_path, shapes_root):
    """A segmentation checkpoint goes through the segmentation branch (labels written as palette PNGs)."""
    from mnv2_vision.checkpoint import build_from_config

    cfg = load_config("deeplabv3_shapes", ["model.num_classes=5"])
    model = build_from_config(cfg, pretrained=False)
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": {"config": to_dict(cfg), "class_names": ["background", "circle", "square",
                                                                              "star", "triangle"]},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    image = sorted((shapes_root / "VOC2012" / "JPEGImages").glob("*.jpg"))[0]
    records = _tool("predict").main(["--ckpt", str(ckpt), str(image), "--out", str(tmp_path / "pred")])
    label = np.array(Image.open(tmp_path / "pred" / f"{image.stem}.png"))
    assert Image.open(tmp_path / "pred" / f"{image.stem}.png").mode == "P"
    assert label.shape == (records[0]["height"], records[0]["width"]) and label.max() < 5
    assert sum(records[0]["pixels"].values()) == label.size
    assert (tmp_path / "pred" / f"{image.stem}_overlay.jpg").is_file()


def test_train_det_explains_a_missing_coco_layout(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a one-line message and exit status 2, not a traceback
        _tool("train_det").main(["--cfg", "ssdlite_coco", "--out", str(tmp_path / "run"),
                                 "--set", f"data.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "dataset not found" in err and "annotations/instances_train2017.json" in err
    assert f"python tools/prepare_data.py coco --root {tmp_path / 'nowhere'}" in err and "<root>" not in err
    assert not (tmp_path / "run").exists()  # nothing left behind: no run folder, no config.yaml


def test_eval_det_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as e:
        _tool("eval_det").main(["--ckpt", str(tmp_path / "missing.ckpt")])
    assert e.value.code == 2


def test_detection_checkpoint_rebuilds_without_the_dataset(trained):
    out, _ = trained
    cfg, model, hparams = load_model(out / "ckpt" / "last.ckpt")
    x = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    y = model(x)
    assert y["cls_logits"].shape[-1] == 5 and y["bbox_regression"].shape == (*y["cls_logits"].shape[:2], 4)
