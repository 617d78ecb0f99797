"""The training driver (``lit/driver.py``) and the trainer set-up behind every train command: model.pt one way, the
report's last lines (checkpoint, model.pt, next commands), the multi-task per-class IoU, the COCO table without
categories that have no ground truth, ``limit_train_batches`` as Lightning reads it, and no Lightning noise."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, TensorDataset

from mnv2_vision.checkpoint import load_checkpoint
from mnv2_vision.config import load_config
from mnv2_vision.eval.coco import evaluate_coco, format_coco_stats
from mnv2_vision.lit.common import make_trainer
from mnv2_vision.lit.driver import train
from mnv2_vision.lit.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]
# 8 images in batches of 4: 2 steps per epoch.
TINY = ["data.subset=8", "data.image_size=96", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=4",
        "model.width_mult=0.35", "trainer.check_val_every_n_epoch=1"]
# What Lightning printed in a training run or eval_det before: adverts, a note that 100 % of the batches are used,
# its own deprecation warning, and a logging-interval warning for runs of many short epochs (ssdlite_coco128).
NOISE = ("💡 Tip", "was configured so", "LeafSpec", "smaller than the logging interval")


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run(tool: str, *argv: str) -> tuple[str, str]:
    """``python tools/<tool>.py ARGV`` in a fresh process (Lightning's warnings reach the console only there): its
    stdout and stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def test_a_tiny_run_is_quiet_and_ends_with_the_checkpoint_and_the_next_commands(tmp_path, shapes_root):
    # 2 epochs of 2 steps with a logging interval of 25: Lightning warned that one epoch (2 batches) is shorter than
    # the interval; the run is shorter than it too, so the interval is lowered to the run's 4 steps (LogWithinRun).
    out = tmp_path / "run"
    sets = [a for kv in [*TINY, "trainer.max_epochs=2", "trainer.log_every_n_steps=25"] for a in ("--set", kv)]
    printed, errors = _run("train_det", "--cfg", "ssdlite_shapes", "--out", str(out), *sets)
    assert not [n for n in NOISE if n in printed + errors], printed + errors
    best = next((out / "ckpt").glob("best-*.ckpt"))
    tail = printed.rstrip().splitlines()[-5:]
    assert tail[0] == f"checkpoint: {best} (best val/map; model.pt holds its weights)" and tail[1] == "next:"
    assert tail[2] == f"  python tools/eval_det.py --ckpt {best}"
    assert tail[3].startswith(f"  python tools/predict.py --ckpt {best} {shapes_root / 'coco' / 'val2017'}/")
    assert Path(tail[3].split()[-1]).is_file()  # a real validation image
    assert tail[4] == f"  python tools/export.py --ckpt {best}"
    assert f"wrote {out / 'model.pt'} and {out / 'final_metrics.json'}" in printed
    # model.pt: the best checkpoint's network, exactly
    assert _weights_equal(torch.load(out / "model.pt", weights_only=True), load_checkpoint(best)[1])
    with open(out / "metrics.csv", newline="") as f:
        train_rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [int(r["step"]) for r in train_rows] == [3]  # logged at the run's 4th (last) step

    printed, errors = _run("eval_det", "--ckpt", str(best), "--out", str(tmp_path / "eval"), "--set",
                           "data.num_workers=0")
    assert not [n for n in NOISE if n in printed + errors], printed + errors


def test_without_validation_model_pt_is_last_ckpt_and_the_report_says_so(tmp_path, shapes_root, capsys):
    # compare_multitask's budget: no validation while training, stopped inside the 2nd epoch by max_steps
    cfg = load_config("ssdlite_shapes", [*TINY, "trainer.max_epochs=2", "trainer.max_steps=3",
                                         f"trainer.check_val_every_n_epoch={10 ** 6}"])
    with RunFolder(tmp_path) as run:
        result = train(cfg, run.path)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert result["checkpoint"] == "" and not list((tmp_path / "ckpt").glob("best-*.ckpt"))
    assert _weights_equal(torch.load(tmp_path / "model.pt", weights_only=True), load_checkpoint(last)[1])
    out = capsys.readouterr().out
    assert "COCO bbox evaluation of the final model" in out
    assert f"checkpoint: {last} (the last one: no validation chose a best; model.pt holds its weights)" in out


def test_multitask_report_lists_per_class_iou_and_both_eval_commands(tmp_path, shapes_root, capsys):
    cfg = load_config("multitask_shapes", [*TINY, "trainer.max_epochs=1"])
    with RunFolder(tmp_path) as run:
        result = train(cfg, run.path)
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines.index(f"  {'class':<29s} {'IoU':>7s}")
    listed = {name: iou for name, iou in result["per_class_iou"].items() if iou is not None}
    rows = lines[header + 1:header + 1 + len(listed)]
    assert [row.split() for row in rows] == [[name, f"{iou:.4f}"] for name, iou in listed.items()]
    assert list(result["per_class_iou"]) == ["background", "circle", "square", "star", "triangle"]
    absent = len(result["per_class_iou"]) - len(listed)
    assert (lines[header + 1 + len(listed)].startswith(f"  ({absent} of 5 classes are in neither") if absent
            else lines[header + 1 + len(listed)].startswith("mAP@"))
    best = result["checkpoint"]
    for tool in ("eval_det", "eval_seg", "export"):
        assert f"  python tools/{tool}.py --ckpt {best}\n" in out
    assert f"  python tools/predict.py --ckpt {best} " in out


def test_the_coco_table_lists_only_categories_with_ground_truth():
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 40], "area": 1200,
                                   "iscrowd": 0}],
                  "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}, {"id": 9, "name": "boat"}]}
    gt.createIndex()
    text = format_coco_stats(evaluate_coco(gt, []), {3: "car", 7: "train", 9: "boat"})
    table = text.splitlines()[12:]
    assert table[1].split() == ["car", "3", "0.0000"]
    assert "train" not in text and "boat" not in text
    assert table[2] == "  (2 of 3 categories have no ground truth in these images and are not listed: AP n/a)"


def test_the_iou_table_counts_the_classes_without_a_number():
    from mnv2_vision.lit.driver import _format_iou

    assert _format_iou({"background": 0.875, "bird": float("nan"), "cat": 0.0}).splitlines()[1:] == [
        f"  {'background':<29s}  0.8750", f"  {'cat':<29s}  0.0000",
        "  (1 of 3 classes are in neither the label maps nor the predictions and are not listed: IoU n/a)"]


class _Steps(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        loss = self.lin(batch[0]).sum()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("limit, steps", [(1, 1), (2, 2), (0.5, 2), (1.0, 4)])
def test_limit_train_batches_an_int_is_batches_a_float_a_fraction(tmp_path, limit, steps):
    # 4 batches per epoch; an int 1 was dropped before (1 != 1.0 is False) and the whole epoch ran
    cfg = load_config(None, ["trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1",
                             f"trainer.limit_train_batches={limit}"])
    trainer = make_trainer(cfg, tmp_path, monitor="train/loss", mode="min")
    trainer.fit(_Steps(), DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=2))
    assert trainer.global_step == steps
