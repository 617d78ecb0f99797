"""The Makefile's first-hour targets: ``make demo`` twice in a row works (the second run replaces the first), and
``make clean`` keeps the venv (``make distclean`` removes it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnv2_vision.data.synthetic import generate_shapes

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # -o: the venv counts as installed (this interpreter runs the demo instead of a fresh .venv)
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_make_demo_twice_in_a_row_replaces_the_first_run(tmp_path):
    root = generate_shapes(tmp_path / "data", num_train=4, num_val=2, num_cls_train=0, num_cls_val=0)
    out = tmp_path / "demo"
    tiny = " ".join(f"--set {s}" for s in (
        "data.synthetic=false", f"data.root={root / 'coco'}", "data.image_size=64", "data.batch_size=2",
        "model.width_mult=0.35", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
        "trainer.accelerator=cpu"))
    runs = [_make("demo", f"PY={sys.executable}", f"DEMO_OUT={out}", f"DEMO_ARGS={tiny}") for _ in range(2)]
    for i, r in enumerate(runs):
        assert r.returncode == 0, f"make demo #{i + 1} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert f"make demo: training into {out}, replacing an earlier demo run there" in r.stdout
    assert "--overwrite: removed the previous run's files" not in runs[0].stdout
    assert f"--overwrite: removed the previous run's files from {out}" in runs[1].stdout
    assert (out / "final_metrics.json").is_file() and (out / "ckpt" / "last.ckpt").is_file()


def test_make_clean_keeps_the_venv_and_distclean_removes_it():
    clean = _make("-n", "clean")
    distclean = _make("-n", "distclean")
    assert clean.returncode == 0 and distclean.returncode == 0, clean.stderr + distclean.stderr
    assert "runs" in clean.stdout and ".venv" not in clean.stdout
    assert "rm -rf .venv" in distclean.stdout and "runs" in distclean.stdout


def test_a_cpu_only_machine_can_install_the_cpu_build_of_torch_first():
    """``make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu``: torch's CPU build before the package (dry run:
    nothing is installed here)."""
    cpu = "https://download.pytorch.org/whl/cpu"
    lines = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-n", "-B", ".venv/.installed",
                            f"TORCH_INDEX={cpu}"], capture_output=True, text=True, timeout=60).stdout.splitlines()
    torch_line = f".venv/bin/pip install torch torchvision --index-url {cpu}"
    assert torch_line in lines and lines.index(torch_line) < lines.index('.venv/bin/pip install -e ".[dev]"')
    plain = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-n", "-B", ".venv/.installed"],
                           capture_output=True, text=True, timeout=60).stdout
    assert "--index-url" not in plain and '.venv/bin/pip install -e ".[dev]"' in plain
