"""CPU smoke tests of the segmentation tools on the built-in shapes data, with cross-checks between the tools."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2_vision.checkpoint import load_checkpoint, load_model
from mnv2_vision.config import load_config
from mnv2_vision.data.io.labels import read_label
from mnv2_vision.eval.miou import ConfusionMatrix
from mnv2_vision.lit.segmentation import predict_probs, predict_segmentation

from helpers import sets, tool as _tool, train

TINY = sets("data.subset=2", "data.image_size=64", "trainer.max_epochs=1", "data.num_workers=0", "data.batch_size=2",
            "data.val_batch_size=2", "trainer.log_every_n_steps=1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_root):
    return train(tmp_path_factory, "train_seg", "deeplabv3_shapes", TINY)


def test_train_seg_writes_checkpoints_config_and_weights(trained):
    out, result = trained
    assert (out / "ckpt" / "last.ckpt").is_file() and Path(result["best_ckpt"]).is_file()
    assert 0.0 <= result["val_miou"] <= 1.0
    cfg, state, hparams = load_checkpoint(out / "ckpt" / "last.ckpt")
    assert cfg.task == "segmentation" and cfg.model.num_classes == 5  # resolved from the data, stored in the ckpt
    assert hparams["class_names"] == ["background", "circle", "square", "star", "triangle"]
    plain = torch.load(out / "model.pt", weights_only=True)
    assert plain.keys() == state.keys()
    assert load_config(out / "config.yaml").model.num_classes == 5
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "val/miou" in header and "val/iou_circle" in header and "train/loss" in header


def test_eval_seg_reproduces_the_validation_miou(trained):
    out, result = trained
    ev = _tool("eval_seg").main(["--ckpt", result["best_ckpt"], "--set", "data.num_workers=0"])
    assert ev["miou"] == pytest.approx(result["val_miou"], abs=1e-6)  # same weights, same split, same metric
    assert set(ev["per_class_iou"]) == {"background", "circle", "square", "star", "triangle"}


def test_eval_seg_ms_flip_saves_palette_pngs_that_score_the_same(trained, tmp_path, shapes_root):
    out, result = trained
    save = tmp_path / "preds"
    ev = _tool("eval_seg").main(["--ckpt", result["best_ckpt"], "--ms-flip", "--save-dir", str(save),
                                 "--set", "data.num_workers=0", "--set", "eval.ms_scales=[0.5,1.0]"])
    assert ev["scales"] == [0.5, 1.0] and ev["flip"] is True
    pngs = sorted(save.glob("*.png"))
    assert len(pngs) == 2 and json.loads((save / "metrics.json").read_text())["miou"] == ev["miou"]
    cm = ConfusionMatrix(5)
    for png in pngs:  # recompute mIoU from the written files: palette indices survive the round trip
        assert Image.open(png).mode == "P"
        gt = read_label(shapes_root / "VOC2012" / "SegmentationClass" / png.name, 5)
        cm.update(torch.from_numpy(read_label(png, 5)), torch.from_numpy(gt))
    assert cm.compute().miou == pytest.approx(ev["miou"], abs=1e-9)


def test_predict_writes_label_maps_and_overlays(trained, tmp_path, shapes_root):
    out, result = trained
    image = shapes_root / "VOC2012" / "JPEGImages" / "000000000481.jpg"
    records = _tool("predict").main(["--ckpt", result["best_ckpt"], str(image), "--out", str(tmp_path)])
    label = np.array(Image.open(tmp_path / "000000000481.png"))
    overlay = np.array(Image.open(tmp_path / "000000000481_overlay.jpg"))
    w, h = Image.open(image).size
    assert label.shape == (h, w) and overlay.shape == (h, w, 3)
    assert sum(records[0]["pixels"].values()) == h * w
    cfg, model, _ = load_model(result["best_ckpt"])
    from mnv2_vision.data.io.images import load_rgb

    assert np.array_equal(label, predict_segmentation(model, load_rgb(image), cfg))


def test_multi_scale_flip_probabilities_are_full_resolution_and_normalised(trained):
    _, result = trained
    cfg, model, _ = load_model(result["best_ckpt"])
    x = torch.randn(2, 3, 45, 61)
    probs = predict_probs(model, x, scales=(0.5, 0.75, 1.0, 1.25), flip=True)
    assert probs.shape == (2, 5, 45, 61)
    assert torch.allclose(probs.sum(1), torch.ones(2, 45, 61), atol=1e-5)
    # With a single scale of 1.0 and flip, the result is the mean of the plain and the flipped-back passes.
    with torch.no_grad():
        plain = model(x)["out"].softmax(1)
        flipped = model(x.flip(-1))["out"].flip(-1).softmax(1)
    assert torch.allclose(predict_probs(model, x, (1.0,), True), (plain + flipped) / 2, atol=1e-6)


def test_missing_voc_is_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool("train_seg").main(["--cfg", "deeplabv3_voc", "--out", str(tmp_path),
                                 "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "JPEGImages" in err and "SegmentationClass" in err


def test_eval_seg_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool("eval_seg").main(["--ckpt", str(tmp_path / "nope.ckpt")])
    assert exc.value.code == 2 and "nope.ckpt" in capsys.readouterr().err
