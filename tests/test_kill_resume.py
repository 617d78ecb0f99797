"""Fault script (issue #15): a tiny detection run killed with SIGKILL at five moments — mid-step, while writing
``last.ckpt``, while writing a best checkpoint, while writing ``model.pt``, during validation — then resumed with
``--resume last``; and stopped with SIGTERM. Each must end exactly like the uninterrupted run: the same final
weights, the same best checkpoint and final metrics, the whole ``metrics.csv``, and no temporary file left behind.
A full disk (a small tmpfs) must stop the run with one line, leaving only complete files."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from mnv2_vision.files import load_torch

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "train_det.py"

# 8 images / batch 4 = 2 steps per epoch, 3 epochs, validated after each; last.ckpt after every step.
ARGS = ["--cfg", "ssdlite_shapes", "--set", "data.subset=8", "--set", "data.image_size=64",
        "--set", "model.width_mult=0.35", "--set", "data.num_workers=0", "--set", "data.batch_size=4",
        "--set", "data.val_batch_size=4", "--set", "trainer.max_epochs=3", "--set", "trainer.check_val_every_n_epoch=1",
        "--set", "trainer.log_every_n_steps=1", "--set", "trainer.ckpt_every_n_steps=1"]

# Runs the tool with one fault planted; deterministic (no timing). argv: tool, moment, argument, tool args...
#   step N        SIGKILL inside training_step at global step N (before its update)
#   validation E  SIGKILL inside the first validation batch of epoch E (while fitting)
#   write NAME K  SIGKILL while writing the K-th file called NAME (a prefix for "best-"): half the bytes are in the
#                 temporary file, the final name still holds the previous version
#   sigterm N     send SIGTERM to itself inside training_step at global step N
DRIVER = """
import contextlib, os, runpy, signal, sys
from pathlib import Path
import mnv2_vision.files as files
import mnv2_vision.lit.checkpointing as checkpointing
from mnv2_vision.lit.detection import DetectionModule

tool, moment, arg = sys.argv[1:4]
sys.argv = [tool, *sys.argv[4:]]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if moment in ("step", "sigterm"):
    real_step = DetectionModule.training_step
    def training_step(self, batch, batch_idx):
        if self.global_step == int(arg):
            os.kill(os.getpid(), signal.SIGKILL if moment == "step" else signal.SIGTERM)
        return real_step(self, batch, batch_idx)
    DetectionModule.training_step = training_step
elif moment == "validation":
    real_val = DetectionModule.validation_step
    def validation_step(self, batch, batch_idx):
        if self.trainer.state.fn == "fit" and self.current_epoch == int(arg) and batch_idx == 0:
            die()
        return real_val(self, batch, batch_idx)
    DetectionModule.validation_step = validation_step
elif moment == "write":
    name, nth = arg.split(":")
    seen = []
    real_write = files.atomic_write
    @contextlib.contextmanager
    def atomic_write(path, mode="wb", **kw):
        with real_write(path, mode, **kw) as f:
            yield f
            if Path(path).name.startswith(name):
                seen.append(path)
                if len(seen) == int(nth):
                    f.flush()
                    f.truncate(f.tell() // 2)
                    die()
    files.atomic_write = checkpointing.atomic_write = atomic_write
runpy.run_path(tool, run_name="__main__")
"""


def _run(out: Path, *extra: str, fault: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable]
    if fault is not None:
        driver = out.parent / "fault_driver.py"
        driver.write_text(DRIVER)
        cmd += [str(driver), str(TOOL), *fault]
    else:
        cmd += [str(TOOL)]
    cmd += ["--out", str(out), *ARGS, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_rows(ref: list[dict], run: list[dict]) -> None:
    assert len(run) == len(ref), (len(run), len(ref))
    for a, b in zip(ref, run):
        assert a.keys() == b.keys()
        for k in a:
            if a[k] == "" or b[k] == "":
                assert a[k] == b[k], (k, a, b)
            else:
                assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-5, abs=1e-6), (k, a, b)


def _assert_same_run(ref: Path, run: Path) -> None:
    # final weights
    ref_w, run_w = torch.load(ref / "model.pt", weights_only=True), torch.load(run / "model.pt", weights_only=True)
    assert ref_w.keys() == run_w.keys()
    for k in ref_w:
        torch.testing.assert_close(run_w[k], ref_w[k], atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")
    # the same best checkpoint, holding the same weights
    best = sorted(p.name for p in (ref / "ckpt").glob("best-*.ckpt"))
    assert sorted(p.name for p in (run / "ckpt").glob("best-*.ckpt")) == best and len(best) == 1
    a, b = load_torch(ref / "ckpt" / best[0]), load_torch(run / "ckpt" / best[0])
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], atol=1e-6, rtol=0)
    step = load_torch(run / "ckpt" / "last.ckpt")["global_step"]
    assert step == load_torch(ref / "ckpt" / "last.ckpt")["global_step"]
    # the same final metrics
    fa, fb = json.loads((ref / "final_metrics.json").read_text()), json.loads((run / "final_metrics.json").read_text())
    assert Path(fb["checkpoint"]).name == Path(fa["checkpoint"]).name
    assert fb["stats"] == pytest.approx(fa["stats"], abs=1e-9) and fb["num_images"] == fa["num_images"] == 8
    # the whole metrics.csv history, each step once
    _assert_same_rows(_rows(ref / "metrics.csv"), _rows(run / "metrics.csv"))
    # no temporary file left
    assert not [p for p in run.rglob(".*.tmp-*")]


MOMENTS = {
    "mid_step": ("step", "3"),                    # the last batch of epoch 2; last.ckpt from step 3
    "during_last_ckpt": ("write", "last.ckpt:2"),  # the end-of-epoch-1 last.ckpt (after the step-1 one)
    "during_best_ckpt": ("write", "best-:1"),      # the best checkpoint of epoch 1
    "during_model_pt": ("write", "model.pt:1"),    # after training, while writing the final weights
    "during_validation": ("validation", "2"),      # the last epoch's validation
    "sigterm": ("sigterm", "4"),                   # SIGTERM in the first batch of epoch 3
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes_root) -> dict:
    """The uninterrupted run and every faulty run, then their resumes; two processes at a time (one thread each)."""
    tmp = tmp_path_factory.mktemp("faults")
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = {"reference": pool.submit(_run, tmp / "uninterrupted")}
        first.update({m: pool.submit(_run, tmp / m, fault=fault) for m, fault in MOMENTS.items()})
        first = {k: f.result() for k, f in first.items()}
        temps = {m: list((tmp / m).rglob(".*.tmp-*")) for m in MOMENTS}
        resumed = {m: pool.submit(_run, tmp / m, "--resume", "last") for m in MOMENTS}
        resumed = {k: f.result() for k, f in resumed.items()}
    return {"tmp": tmp, "first": first, "temps": temps, "resumed": resumed}


def _check_resumed(runs: dict, moment: str) -> None:
    r = runs["resumed"][moment]
    assert r.returncode == 0, r.stderr[-3000:]
    assert not re.search(r"^epoch (\d+)/(\d+) ", r.stdout, re.M) or all(
        int(a) <= int(b) for a, b in re.findall(r"^epoch (\d+)/(\d+) ", r.stdout, re.M))  # never "epoch 4/3"
    ref = runs["first"]["reference"]
    assert ref.returncode == 0, ref.stderr[-3000:]
    for noise in ("💡 Tip", "LeafSpec", "exists and is not empty", "was configured so 100%", "Traceback"):
        assert noise not in ref.stdout + ref.stderr + r.stdout + r.stderr, noise  # first-run noise, in a real run
    _assert_same_run(runs["tmp"] / "uninterrupted", runs["tmp"] / moment)


@pytest.mark.parametrize("moment", [m for m in MOMENTS if m != "sigterm"])
def test_sigkill_then_resume_matches_the_uninterrupted_run(moment, runs):
    killed = runs["first"][moment]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    if MOMENTS[moment][0] == "write":
        assert runs["temps"][moment], "the fault must leave a half-written temporary file"
    _check_resumed(runs, moment)


def test_sigterm_saves_last_ckpt_exits_143_and_resumes_exactly(runs):
    stopped = runs["first"]["sigterm"]
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line.startswith("stopped: SIGTERM at global step 5") and "--resume last" in last_line
    _check_resumed(runs, "sigterm")


# ---------------------------------------------------------------------------------------------- full disk
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("size", ["12m", "21m"])  # full at the first best checkpoint / at a later last.ckpt
def test_full_disk_stops_with_one_line_and_leaves_only_complete_files(size, tmp_path, shapes_root):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, size):
        pytest.skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        r = _run(disk / "run")
        assert r.returncode == 2, r.stderr[-3000:]
        err = r.stderr.strip().splitlines()
        assert err[-1].startswith("error: the disk is full while writing ") and "--resume last" in err[-1]
        assert "Traceback" not in r.stderr
        files = [p for p in (disk / "run").rglob("*") if p.is_file()]
        assert not [p for p in files if ".tmp-" in p.name]
        for p in files:  # complete or absent: each one reads back whole
            if p.suffix == ".ckpt":
                assert "state_dict" in load_torch(p)
            elif p.name == "metrics.csv":
                rows = _rows(p)
                assert rows and all(None not in row.values() for row in rows)
            elif p.suffix == ".yaml":
                import yaml

                assert yaml.safe_load(p.read_text())
            elif p.suffix == ".json":
                json.loads(p.read_text())
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
