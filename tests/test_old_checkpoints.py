"""Old checkpoints keep working: tiny runs written by the code of commit cda1d21 (main before the restructure of
issue #24; ``tests/fixtures/old_runs/README.md`` says how they were made) load with today's code for evaluation (the
numbers the old code printed), prediction, export and ``--resume last``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mnv2_vision

from helpers import sets, tool as _tool

OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "old_runs"
TASKS = ("detection", "segmentation", "multitask", "classification")
PREDICTED = ("detection", "segmentation", "multitask")  # the tasks the predictor and the ONNX export serve
TRAIN = {"detection": "train_det", "segmentation": "train_seg", "multitask": "train_multitask",
         "classification": "train_cls"}


def _expected(task: str) -> dict:
    return json.loads((OLD_RUNS / task / "expected.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes_root) -> Path:
    """A copy of the old runs: whatever a tool writes next to its checkpoint never lands in the repository."""
    return Path(shutil.copytree(OLD_RUNS, tmp_path_factory.mktemp("old") / "runs"))


def _evaluate(kind: str, ckpt: Path, out: Path) -> dict:
    if kind == "det":  # on the CPU, as the numbers were recorded (trainer.accelerator is "auto")
        return _tool("eval_det").main(["--ckpt", str(ckpt), "--out", str(out), *sets("trainer.accelerator=cpu")])
    if kind == "seg":
        return _tool("eval_seg").main(["--ckpt", str(ckpt), "--device", "cpu"])
    return _tool("eval_cls").main(["--ckpt", str(ckpt), "--out", str(out)])


def _assert_same(new, old, where: str = "") -> None:
    """``new`` holds ``old``: numbers as the old tools printed them (4 decimals), everything else equal."""
    if isinstance(old, dict):
        for key, value in old.items():
            _assert_same(new[key], value, f"{where}.{key}")
    elif isinstance(old, list):
        assert len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(old, float):
        assert new == pytest.approx(old, abs=5e-5), where
    else:
        assert new == old, where


@pytest.mark.parametrize("task", TASKS)
def test_eval_gives_the_numbers_of_the_old_code(runs, tmp_path, task):
    for kind, old in _expected(task)["eval"].items():
        _assert_same(_evaluate(kind, runs / task / "ckpt" / "last.ckpt", tmp_path / kind), old, f"{task} {kind}")


@pytest.mark.parametrize("task", PREDICTED)
def test_predict_gives_the_results_of_the_old_code(runs, shapes_root, tmp_path, task):
    old = _expected(task)["predict"]
    image, ckpt = shapes_root / old["image"], runs / task / "ckpt" / "last.ckpt"
    (r,) = mnv2_vision.load(ckpt, device="cpu").predict(str(image), probs=True)
    assert list(r["size"]) == old["size"]
    if "num_boxes" in old:
        top = r["scores"].argsort(descending=True)[:10]
        assert len(r["scores"]) == old["num_boxes"] and r["labels"][top].tolist() == old["labels"]
        assert r["scores"][top].tolist() == pytest.approx(old["scores"], abs=1e-5)
        assert r["boxes"][top].flatten().tolist() == pytest.approx(torch.tensor(old["boxes"]).flatten().tolist(),
                                                                   abs=1e-3)
    if "mask_counts" in old:
        assert r["mask"].flatten().bincount().tolist() == old["mask_counts"]
        assert r["probs"].flatten(1).mean(1).tolist() == pytest.approx(old["mean_probs"], abs=1e-6)
    # tools/predict.py: the same model through the command line (every box the predictor keeps, written out)
    (record,) = _tool("predict").main(["--ckpt", str(ckpt), str(image), "--out", str(tmp_path), "--device", "cpu",
                                       "--score-thresh", "0.001"])
    if "num_boxes" in old:
        assert len(record["detections"]) == old["num_boxes"]
    if "mask_counts" in old:
        assert sorted(record["pixels"].values()) == sorted(c for c in old["mask_counts"] if c)


def test_an_old_model_pt_in_its_run_folder_predicts_like_its_checkpoint(runs, shapes_root):
    """``model.pt`` (a plain state dict) with the run's old ``config.yaml`` and ``classes.json``."""
    image = str(shapes_root / _expected("segmentation")["predict"]["image"])
    (plain,) = mnv2_vision.load(runs / "segmentation" / "model.pt", device="cpu").predict(image, probs=True)
    (ckpt,) = mnv2_vision.load(runs / "segmentation" / "ckpt" / "last.ckpt", device="cpu").predict(image, probs=True)
    assert torch.equal(plain["mask"], ckpt["mask"]) and torch.equal(plain["probs"], ckpt["probs"])


@pytest.mark.parametrize("task", TASKS)
def test_export(runs, tmp_path, task):
    """ONNX with tools/export.py's own parity check against PyTorch (it raises on a mismatch); a classifier, which
    the ONNX export does not serve, as a state dict."""
    ckpt = runs / task / "ckpt" / "last.ckpt"
    if task == "classification":
        _tool("export").main(["--ckpt", str(ckpt), "--out", str(tmp_path), "--format", "state_dict"])
        state = torch.load(tmp_path / "model.pt", weights_only=True)
        old = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.equal(v, old[f"model.{k}"]) for k, v in state.items()) and len(state) == len(old)
        return
    report = _tool("export").main(["--ckpt", str(ckpt), "--out", str(tmp_path), "--check-images", "1",
                                   "--threads", "1"])
    assert Path(report["onnx"]).is_file() and report["parity"]


@pytest.mark.parametrize("task", TASKS)
def test_resume_last_trains_one_more_epoch(tmp_path, shapes_root, task):
    """``--resume last`` in a copy of the run folder (moved, as a user's would be), with one epoch more."""
    run = Path(shutil.copytree(OLD_RUNS / task, tmp_path / task))
    _tool(TRAIN[task]).main(["--cfg", str(run / "config.yaml"), "--out", str(run), "--resume", "last",
                             *sets("trainer.max_epochs=2")])
    last = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 2)
