"""DDP on CPU (gloo, 2 processes): training runs, and distributed validation reports exactly what a single-process
evaluation of the same checkpoint on the same images reports, with every validation image counted once.

Lightning's ``ddp`` strategy re-launches the training script once per extra rank, so the train tools run as
subprocesses here. 7 training images with batch 2 on 2 ranks = 2 optimiser steps; 7 validation images on 2 ranks is
the case where Lightning's default (padding) sampler would evaluate one image twice.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mnv2_vision.data.distributed import distributed_eval_loader, eval_sampler

from helpers import tool as _tool

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this build")

REPO = Path(__file__).resolve().parents[1]
N = 7  # images per split (data.subset): odd, so a padding sampler would repeat one on 2 ranks
DDP = ["--set", "trainer.devices=2", "--set", "trainer.strategy=ddp", "--set", "trainer.accelerator=cpu"]
COMMON = ["--set", f"data.subset={N}", "--set", "trainer.max_epochs=1", "--set", "data.num_workers=0",
          "--set", "data.batch_size=2", "--set", "data.val_batch_size=2", "--set", "trainer.log_every_n_steps=1",
          "--set", "trainer.check_val_every_n_epoch=1"]
# Launcher / cluster variables of an outer job would make Lightning join that job instead of launching its own.
_FOREIGN_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE", "GROUP_RANK",
                "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_TRAINER_GPUS")


def _run_ddp(tool: str, cfg: str, out: Path, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "tools" / f"{tool}.py"), "--cfg", cfg, "--out", str(out), *COMMON, *extra, *DDP]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-6000:]}"
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log, log[-3000:]
    # Parameters must not change memory layout under DDP's gradient buckets (DetectionModule.setup).
    assert "Grad strides do not match bucket view strides" not in log
    return proc.stdout


def _val_rows(out: Path, key: str) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get(key)]


def _best(out: Path) -> Path:
    (best,) = sorted((out / "ckpt").glob("best-*.ckpt"))
    return best


# ---------------------------------------------------------------------------------------------- the sampler itself
@pytest.mark.parametrize("n, replicas", [(7, 2), (8, 2), (10, 3), (3, 3)])
def test_eval_sampler_gives_every_index_to_exactly_one_rank(n, replicas):
    seen: list[int] = []
    counts = []
    for rank in range(replicas):
        trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": replicas, "rank": rank})
        loader = distributed_eval_loader(DataLoader(list(range(n)), batch_size=2), trainer)
        assert isinstance(loader.sampler, DistributedSampler)  # what makes Lightning keep it instead of padding
        assert not loader.sampler.shuffle
        batches = [b.tolist() for b in loader]
        assert len(batches) == len(loader)
        mine = [i for b in batches for i in b]
        assert len(mine) >= 1 and len(mine) == len(loader.sampler)
        seen += mine
        counts.append(len(mine))
    assert sorted(seen) == list(range(n))  # disjoint and complete: no padding, no repeats
    assert max(counts) - min(counts) <= 1


def test_eval_sampler_is_off_without_ddp_and_for_splits_smaller_than_the_world():
    loader = DataLoader(list(range(5)), batch_size=2)
    assert distributed_eval_loader(loader, None) is loader
    assert distributed_eval_loader(loader, SimpleNamespace(distributed_sampler_kwargs=None)) is loader
    assert distributed_eval_loader(loader, SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 1,
                                                                                       "rank": 0})) is loader
    # A rank without a single batch would hang DDP's first-batch buffer broadcast: Lightning's padding sampler then.
    assert eval_sampler(list(range(1)), SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2,
                                                                                    "rank": 1})) is None


def test_datamodule_val_loaders_split_without_repeats(shapes_root):
    from mnv2_vision.data.detection.datamodule import DetectionDataModule
    from mnv2_vision.data.segmentation.datamodule import SegmentationDataModule

    det = DetectionDataModule(shapes_root / "coco", image_size=96, subset=N, val_batch_size=2, num_workers=0)
    seg = SegmentationDataModule(shapes_root, num_classes=5, subset=N, val_batch_size=2, num_workers=0)
    for dm, dataset in ((det, lambda: det.val_dataset), (seg, seg.val_dataset)):
        assert dm.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"  # no trainer: plain order
        shares = []
        for rank in range(2):
            dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
            loader = dm.val_dataloader()
            assert loader.batch_size == 2 and loader.collate_fn is not None and not loader.drop_last
            shares.append(list(loader.sampler))
        dm.trainer = None
        assert sorted(shares[0] + shares[1]) == list(range(len(dataset()))) == list(range(N))


# ---------------------------------------------------------------------------------------------- end to end
def test_ddp_detection_map_equals_single_process_eval(tmp_path, shapes_root):
    out = tmp_path / "det"
    stdout = _run_ddp("train_det", "ssdlite_shapes", out, "--set", "data.image_size=96",
                      "--set", "model.width_mult=0.35", "--set", "data.augment=none")
    assert stdout.count("COCO bbox evaluation of") == 1  # the report is printed by rank 0 only
    ddp = json.loads((out / "final_metrics.json").read_text())
    assert ddp["num_images"] == N  # gathered from both ranks, each image once
    assert (out / "model.pt").is_file()
    # The validation inside fit (DDP-wrapped model) logged the same numbers as the final DDP evaluation.
    row = _val_rows(out, "val/map")[0]  # then a second row: the final trainer.validate of the best checkpoint
    assert float(row["val/num_images"]) == N
    assert float(row["val/map"]) == pytest.approx(ddp["map"], abs=1e-6)
    assert float(_val_rows(out, "train/loss")[-1]["step"]) == 1  # two optimiser steps: 0 and 1

    ev = _tool("eval_det").main(["--ckpt", str(_best(out)), "--out", str(tmp_path / "eval"),
                                 "--set", "data.num_workers=0"])
    print(f"DDP val/map {ddp['map']:.6f}  single-process {ev['map']:.6f}")
    assert abs(ev["map"] - ddp["map"]) <= 1e-6
    np.testing.assert_allclose(ev["stats"], ddp["stats"], atol=1e-6)


def test_ddp_segmentation_miou_equals_single_process_eval(tmp_path, shapes_root):
    out = tmp_path / "seg"
    stdout = _run_ddp("train_seg", "deeplabv3_shapes", out, "--set", "data.image_size=64")
    assert stdout.count("best val/miou=") == 1  # printed by rank 0 only
    assert (out / "model.pt").is_file()
    (row,) = _val_rows(out, "val/miou")
    assert float(row["val/num_images"]) == N  # the ranks' matrices summed, no image counted twice
    assert float(_val_rows(out, "train/loss")[-1]["step"]) == 1  # two optimiser steps: 0 and 1
    ddp_miou = float(row["val/miou"])

    ev = _tool("eval_seg").main(["--ckpt", str(_best(out)), "--set", "data.num_workers=0", "--device", "cpu"])
    print(f"DDP val/miou {ddp_miou:.6f}  single-process {ev['miou']:.6f}")
    assert abs(ev["miou"] - ddp_miou) <= 1e-6
    assert float(row["val/pixel_acc"]) == pytest.approx(ev["pixel_acc"], abs=1e-6)
