"""tools/plot_logs.py renders a real (tiny) training run's CSV log to a PNG with loss, LR and validation panels."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from mnv2_vision.data.synthetic import generate_shapes

from helpers import tool as _tool


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("plot"), num_train=8, num_val=2, num_cls_train=0, num_cls_val=0)
    out = root / "run"
    _tool("train_det").main([
        "--cfg", "ssdlite_shapes", "--out", str(out), "--set", "data.synthetic=false",
        "--set", f"data.root={root / 'coco'}", "--set", "data.image_size=96", "--set", "data.batch_size=2",
        "--set", "data.num_workers=0", "--set", "model.width_mult=0.35", "--set", "trainer.max_epochs=2",
        "--set", "trainer.check_val_every_n_epoch=1", "--set", "trainer.log_every_n_steps=1",
        "--set", "trainer.accelerator=cpu"])
    return out


def test_smoke_run_writes_csv_and_tensorboard_logs(smoke_run):
    with open(smoke_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"train/loss", "val/map"} <= columns and any(c.startswith("lr-") for c in columns)
    assert sum(bool(r["train/loss"]) for r in rows) == 8  # 2 epochs × 4 steps, logged every step
    assert sum(bool(r["val/map"]) for r in rows) >= 2
    assert list((smoke_run / "tb").glob("events.out.tfevents.*"))


def test_plot_logs_renders_a_png_with_curves(smoke_run, tmp_path):
    out = _tool("plot_logs").main([str(smoke_run), "--out", str(tmp_path / "curves.png")])
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 3 * 400 and im.height >= 300  # three panels side by side
        rgb = np.asarray(im.convert("RGB"))
    non_white = (rgb < 250).any(axis=2).mean()
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert 0.02 < non_white < 0.6 and colours > 50  # axes, text and coloured curves, not a blank canvas


def test_plot_logs_without_a_log_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _tool("plot_logs").main([str(tmp_path)])
    assert e.value.code == 2 and "no metrics.csv" in capsys.readouterr().err


def test_validation_panel_holds_only_the_0_to_1_metrics():
    from mnv2_vision.commands.plot_logs import PANELS

    panels = dict(PANELS)
    columns = ["train/loss", "val/loss", "val/map", "val/miou", "val/num_images", "val/num_seg_images",
               "val/ap_circle", "lr-SGD"]
    assert [c for c in columns if panels["validation"](c)] == ["val/map", "val/miou"]  # 96 images would flatten mAP
    assert [c for c in columns if panels["loss"](c)] == ["train/loss", "val/loss"]


def test_multitask_validation_panel_plots_map_and_miou_without_the_image_count(tmp_path):
    """A multi-task run logs val/num_seg_images (16) beside val/map and val/miou: on the 0..1 axis it flattened both
    curves to a line, so the panel leaves out every count and every column with a value outside [0, 1]."""
    from mnv2_vision.commands.plot_logs import panel_columns, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/map", "val/miou", "val/num_seg_images", "val/score",
                    "val/odd"])
        w.writerow([0, 9, 5.0, "", "", "", "", ""])
        w.writerow([0, 9, "", 0.12, 0.31, 16, 0.215, 0.5])
        w.writerow([1, 19, 3.5, "", "", "", "", ""])
        w.writerow([1, 19, "", 0.25, 0.42, 16, 0.335, 1.5])  # a column leaving [0, 1] is not a 0..1 metric
    panels = dict(panel_columns(read_metrics(run / "metrics.csv")))
    assert panels == {"loss": ["train/loss"], "validation": ["val/map", "val/miou", "val/score"]}
    out = _tool("plot_logs").main([str(run)])
    assert out == run / "curves.png" and out.is_file()
