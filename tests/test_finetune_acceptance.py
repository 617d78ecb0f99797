"""Issue #26 acceptance: a shapes detector trained on circles and squares, fine-tuned on 50 images of stars and
triangles with ``configs/ssdlite_finetune_few.yaml``, reaches ≥ 0.9× the mAP of the same model trained from scratch
(``ssdlite_shapes``, 32 epochs) on 500 such images, in ≤ 1/5 of the steps. Slow (13 minutes on a partly loaded 2-core
machine); the figures, and a longer from-scratch run that fine-tuning does not match, are in docs/finetune.md."""
from __future__ import annotations

import json

import pytest

from mnv2_vision.data.shapes_subset import write_shapes_subset

from helpers import tool

pytestmark = pytest.mark.slow

# The CPU scale of the shapes demo, smaller: width 0.5, 128 px, one thread (the same on any machine).
SMALL = ["model.width_mult=0.5", "data.image_size=128", "trainer.num_threads=1", "data.synthetic=false",
         "data.num_workers=0"]
OLD, NEW = ["circle", "square"], ["star", "triangle"]


def _train(cfg: str, out, sets: list[str]) -> dict:
    sets = [a for s in [*SMALL, *sets] for a in ("--set", s)]
    result = tool("train_det").main(["--cfg", cfg, "--out", str(out), *sets])
    result["steps"] = _steps(out)
    return result


def _steps(out) -> int:
    import torch

    return int(torch.load(out / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune_acceptance")
    old = write_shapes_subset(tmp / "old", OLD, num_train=1000, num_val=100)
    many = write_shapes_subset(tmp / "new500", NEW, num_train=500, num_val=100)
    few = write_shapes_subset(tmp / "new50", NEW, num_train=50, num_val=100)  # the first 50 of the 500, same val
    # 48 epochs (2,976 steps): the source checkpoint's quality is what fine-tuning draws on. From a 24-epoch one
    # (mAP 0.32 on its classes instead of 0.45) the fine-tuned mAP is 0.242: 1.05x the baseline, 0.97x with seed 1.
    pre = _train("ssdlite_shapes", tmp / "pretrain", [f"data.root={old}", "trainer.max_epochs=48",
                                                       "trainer.check_val_every_n_epoch=16"])
    scratch = _train("ssdlite_shapes", tmp / "scratch", [f"data.root={many}", "trainer.max_epochs=32",
                                                         "trainer.check_val_every_n_epoch=8"])
    fine = _train("ssdlite_finetune_few", tmp / "finetune", [f"data.root={few}",
                                                             f"model.pretrained={tmp / 'pretrain' / 'model.pt'}"])
    figures = {name: {"map": r["map"], "map50": r["map50"], "steps": r["steps"]}
               for name, r in (("pretrain", pre), ("scratch", scratch), ("finetune", fine))}
    print("fine-tuning acceptance:", json.dumps(figures))
    return figures, tmp


def test_fine_tuning_50_images_matches_training_on_500_in_a_fifth_of_the_steps(runs):
    figures, _ = runs
    scratch, fine = figures["scratch"], figures["finetune"]
    assert fine["steps"] * 5 <= scratch["steps"]
    assert fine["map"] >= 0.9 * scratch["map"], figures


def test_the_run_reports_its_start(runs):
    _, tmp = runs
    report = json.loads((tmp / "finetune" / "finetune_report.json").read_text())
    # circle/square → star/triangle: the same class count, so only the class names tell the layers apart
    assert len(report["reinitialised"]) == 12 and all("classes ['circle', 'square']" in r for r in
                                                       report["reinitialised"])
    assert set(map(tuple, report["class_rows_kept"].values())) == {("background",)}
    assert report["freeze"] == "stages:4" and report["frozen_stages"] == [0, 1, 2, 3]
