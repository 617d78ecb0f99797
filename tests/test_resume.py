"""Exact resume: the resumable sampler/loader (``data/resumable.py``), per-sample augmentation seeds, and runs of the
training tools killed with SIGKILL mid-epoch and resumed from ``last.ckpt`` against uninterrupted runs (issue #6)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from mnv2_vision.data.detection.datamodule import DetectionDataModule
from mnv2_vision.data.resumable import ResumableDataLoader, ResumableSampler, sample_seed, seed_sample
from mnv2_vision.data.segmentation.datamodule import SegmentationDataModule
from mnv2_vision.data.detection.transforms import detection_transform

from helpers import ROOT, TOOLS, tool as _tool


# A real process, really killed: run the tool, and SIGKILL it right after the N-th last.ckpt of global step STEP is
# on disk (argument "STEP" or "STEP:N"; deterministic, no timing). The patch only adds the kill; the tool is unchanged.
DRIVER = """
import os, runpy, signal, sys
from pathlib import Path
from mnv2_vision.lit import common

tool, (kill_step, _, nth) = sys.argv[1], sys.argv[2].partition(":")
kill_step, nth, seen = int(kill_step), int(nth or 1), []
save = common.AtomicCheckpointIO.save_checkpoint

def save_then_die(self, checkpoint, path, storage_options=None):
    save(self, checkpoint, path, storage_options)
    if Path(path).name == "last.ckpt" and checkpoint["global_step"] == kill_step:
        seen.append(path)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

common.AtomicCheckpointIO.save_checkpoint = save_then_die
sys.argv = [tool, *sys.argv[3:]]
runpy.run_path(tool, run_name="__main__")
"""


class Echo(Dataset):
    """Returns what the sampler gave it: ``(index, seed)``, or ``(index, -1)`` for a plain int."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        return tuple(item) if isinstance(item, tuple) else (item, -1)


def _loader(n: int = 10, batch_size: int = 3, seed: int = 7, **kw) -> ResumableDataLoader:
    ds = Echo(n)
    return ResumableDataLoader(ds, sampler=ResumableSampler(ds, seed=seed), batch_size=batch_size, drop_last=True,
                               collate_fn=list, **kw)


def _epoch(loader: ResumableDataLoader, epoch: int) -> list:
    loader.sampler.set_epoch(epoch)
    return list(loader)


# ---------------------------------------------------------------------------------------------- sampler and loader
def test_sampler_order_and_seeds_depend_only_on_seed_and_epoch():
    a, b = ResumableSampler(range(50), seed=3), ResumableSampler(range(50), seed=3)
    assert isinstance(a, DistributedSampler)  # Lightning keeps it under DDP instead of replacing it
    first = list(a)
    assert first == list(b) and first == list(a)  # repeatable, no state consumed
    assert sorted(i for i, _ in first) == list(range(50))
    assert all(s == sample_seed(3, 0, i) for i, s in first)
    a.set_epoch(1)
    second = list(a)
    assert [i for i, _ in second] != [i for i, _ in first]
    assert {i: s for i, s in second} != {i: s for i, s in first}  # new augmentation draws every epoch
    b.set_epoch(5), b.set_epoch(1)
    assert list(b) == second  # the history of set_epoch calls does not matter
    assert list(ResumableSampler(range(50), seed=4)) != first


def test_sampler_start_yields_exactly_the_tail_once():
    s = ResumableSampler(range(20), seed=1)
    s.set_epoch(2)
    full = list(s)
    s.start = 8
    s.set_epoch(2)  # Lightning sets the same epoch again after a mid-epoch resume: the offset stays
    assert list(s) == full[8:]
    assert list(s) == full  # the offset applies to one iteration only
    s.start = 8
    s.set_epoch(3)  # another epoch: the offset is dropped
    assert len(list(s)) == 20


def test_sampler_replicas_partition_the_epoch():
    shards = [list(ResumableSampler(range(9), num_replicas=2, rank=r, seed=0)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5  # padded to 10 like DistributedSampler
    assert {i for shard in shards for i, _ in shard} == set(range(9))


def test_loader_state_round_trip_mid_epoch():
    ref = _loader()
    epoch0, epoch1 = _epoch(ref, 0), _epoch(ref, 1)
    assert len(epoch0) == len(ref) == 3  # 10 samples, batches of 3, last one dropped

    run = _loader()
    assert _epoch(run, 0) == epoch0
    run.sampler.set_epoch(1)
    it = iter(run)
    taken = [next(it) for _ in range(2)]
    state = run.state_dict()
    assert state == {"epoch": 1, "batches_done": 2} and taken == epoch1[:2]

    resumed = _loader()
    resumed.load_state_dict(state)
    it = iter(resumed)  # Lightning: iter() first, then set_epoch(current epoch), then the batches
    resumed.sampler.set_epoch(1)
    assert list(it) == epoch1[2:]
    assert resumed.state_dict() == {"epoch": 1, "batches_done": 3}
    assert _epoch(resumed, 2) == _epoch(ref, 2)  # and the following epochs are the same as well


def test_loader_state_at_epoch_end_continues_with_the_next_epoch():
    ref = _loader()
    resumed = _loader()
    resumed.load_state_dict({"epoch": 0, "batches_done": 3})  # saved after the last batch of epoch 0
    assert resumed.sampler.epoch == 1 and resumed.sampler.start == 0
    assert list(resumed) == _epoch(ref, 1)


@pytest.mark.parametrize("workers", [0, 1])
def test_set_epoch_after_iter_still_applies(workers):
    # Lightning creates the iterator before it calls set_epoch; a fresh loader resumed at an epoch end must not
    # replay epoch 0 (the underlying iterator and its workers, which prefetch at once, start at the first batch).
    ref, fresh = _loader(), _loader(num_workers=workers)
    it = iter(fresh)
    fresh.sampler.set_epoch(2)
    assert list(it) == _epoch(ref, 2)


def test_seed_sample_seeds_the_transform_and_plain_ints_do_not():
    class T:
        seed = None

        def set_random_seed(self, seed):
            self.seed = seed

    t = T()
    assert seed_sample(t, 4) == 4 and t.seed is None
    assert seed_sample(t, (4, 99)) == 4 and t.seed == 99
    with pytest.raises(TypeError, match="set_random_seed"):
        seed_sample(object(), (1, 2))


def test_reseeding_shares_one_stream_across_the_pipeline_steps():
    tf = detection_transform("ssdlite", train=True, image_size=32)
    tf.set_random_seed(3)
    steps = tf.compose.transforms
    assert all(t.py_random is tf.compose.py_random for t in steps)  # not one identically seeded stream per step
    assert all(t.random_generator is tf.compose.random_generator for t in steps)


# ---------------------------------------------------------------------------------------------- trainer set-up
def test_ckpt_every_n_steps_config_and_callbacks(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from mnv2_vision.config import ConfigError, load_config
    from mnv2_vision.lit.common import LastCheckpoint, make_trainer

    assert load_config(None).trainer.ckpt_every_n_steps is None
    with pytest.raises(ConfigError, match="ckpt_every_n_steps must be ≥ 1"):
        load_config(None, ["trainer.ckpt_every_n_steps=0"])
    trainer = make_trainer(load_config(None, ["trainer.ckpt_every_n_steps=5", "trainer.accelerator=cpu"]), tmp_path,
                           monitor="val/map")
    best = trainer.checkpoint_callback  # the tools read best_model_path from it
    assert isinstance(best, ModelCheckpoint) and best.monitor == "val/map" and not best.save_last
    last = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
    assert len(last) == 1 and last[0].every_n_train_steps == 5


def test_last_ckpt_follows_every_epoch_even_when_the_metric_gets_worse(tmp_path):
    # Lightning's own save_last (with a monitor) rewrites last.ckpt only when the monitored metric improves.
    from pytorch_lightning.demos.boring_classes import BoringModel

    from mnv2_vision.config import load_config
    from mnv2_vision.lit.common import make_trainer

    class Worse(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val/map", 1.0 / (self.current_epoch + 1))

    cfg = load_config(None, ["trainer.max_epochs=3", "trainer.accelerator=cpu", "trainer.limit_train_batches=2",
                             "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "data.batch_size=8"])
    make_trainer(cfg, tmp_path, monitor="val/map").fit(Worse())
    last = _load(tmp_path / "ckpt" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert [p.name.startswith("best-epoch=000") for p in (tmp_path / "ckpt").glob("best-*")] == [True]


# ---------------------------------------------------------------------------------------------- real data
def _det_module(shapes_root: Path, workers: int, seed: int = 1) -> DetectionDataModule:
    dm = DetectionDataModule(shapes_root / "coco", image_size=64, augment="ssdlite", batch_size=4, val_batch_size=4,
                             num_workers=workers, subset=8, seed=seed)
    dm.setup("fit")
    return dm


def test_augmentation_depends_on_seed_epoch_index_not_on_workers(shapes_root):
    batches = {}
    for workers in (0, 2):
        np.random.seed(workers), torch.manual_seed(workers)  # global RNG states must not matter
        loader = _det_module(shapes_root, workers).train_dataloader()
        assert isinstance(loader, ResumableDataLoader) and loader.drop_last
        loader.sampler.set_epoch(1)
        batches[workers] = next(iter(loader))
    (x0, t0), (x2, t2) = batches[0], batches[2]
    assert torch.equal(x0, x2)
    for a, b in zip(t0, t2):
        assert a["image_id"] == b["image_id"] and torch.equal(a["boxes"], b["boxes"])
    # the same image straight from the dataset with its (seed, epoch, index) seed
    dm = _det_module(shapes_root, 0)
    index = dm.train_dataloader().sampler.order(1)[0]
    seed = sample_seed(1, 1, index)
    image, target = dm.train_dataset[(index, seed)]
    assert target["image_id"] == t0[0]["image_id"] and torch.equal(image, x0[0])
    other, _ = dm.train_dataset[(index, seed + 1)]
    assert not torch.equal(other, image)
    assert not torch.equal(_det_module(shapes_root, 0, seed=2).train_dataset[(index, sample_seed(2, 1, index))][0],
                           image)


def test_segmentation_training_loader_is_resumable_and_seeded(shapes_root):
    dm = SegmentationDataModule(shapes_root / "VOC2012", num_classes=5, crop_size=48, batch_size=2,
                                num_workers=0, subset=4, seed=5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and loader.drop_last and len(loader) == 2
    first = next(iter(loader))
    index = loader.sampler.order(0)[0]
    item = dm.train_dataset()[(index, sample_seed(5, 0, index))]
    assert item["id"] == first["id"][0] and torch.equal(item["image"], first["image"][0])
    assert torch.equal(item["mask"], first["mask"][0])


# ---------------------------------------------------------------------------------------------- kill and resume
def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _start(tool: str, out: Path, args: list[str], *, kill_at: str | None = None, resume: bool = False):
    cmd = [sys.executable]
    if kill_at is not None:
        driver = out.parent / "kill_driver.py"
        driver.write_text(DRIVER)
        cmd += [str(driver), str(TOOLS / f"{tool}.py"), str(kill_at)]
    else:
        cmd += [str(TOOLS / f"{tool}.py")]
    cmd += ["--out", str(out), *args, *(["--resume", "last"] if resume else [])]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}{'-resume' if resume else ''}.log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT), log


def _wait(proc_log, expect: int) -> None:
    proc, log = proc_log
    rc = proc.wait(timeout=300)
    log.close()
    assert rc == expect, Path(log.name).read_text()[-4000:]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _killed_and_uninterrupted(tool: str, tmp: Path, args: list[str], kill_at: str,
                              killed_args: list[str] = ()) -> tuple[Path, Path, dict]:
    """Run the tool uninterrupted and, concurrently, killed at ``kill_at`` (DRIVER); then resume the killed one."""
    ref, run = tmp / "uninterrupted", tmp / "killed"
    procs = [_start(tool, ref, args), _start(tool, run, [*args, *killed_args], kill_at=kill_at)]
    _wait(procs[0], 0)
    _wait(procs[1], -signal.SIGKILL)
    at_kill = _load(run / "ckpt" / "last.ckpt")
    _wait(_start(tool, run, [*args, *killed_args], resume=True), 0)
    return ref / "ckpt" / "last.ckpt", run / "ckpt" / "last.ckpt", at_kill


def _assert_same_final_state(ref_path: Path, run_path: Path) -> None:
    ref, run = _load(ref_path), _load(run_path)
    assert (run["epoch"], run["global_step"]) == (ref["epoch"], ref["global_step"])
    lrs = [[g["lr"] for g in c["optimizer_states"][0]["param_groups"]] for c in (ref, run)]
    assert lrs[0] == lrs[1]
    sched = [{k: c["lr_schedulers"][0][k] for k in ("last_epoch", "_last_lr", "_step_count")} for c in (ref, run)]
    assert sched[0] == sched[1]
    loader_state = [c["loops"]["fit_loop"]["state_dict"]["combined_loader"] for c in (ref, run)]
    assert loader_state[0] == loader_state[1]
    assert ref["state_dict"].keys() == run["state_dict"].keys()
    for k, v in ref["state_dict"].items():
        torch.testing.assert_close(run["state_dict"][k], v, atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")
    for p, state in ref["optimizer_states"][0]["state"].items():  # momentum buffers too
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(run["optimizer_states"][0]["state"][p][k], v, atol=1e-6, rtol=0)


DET_ARGS = ["--cfg", "ssdlite_shapes", "--set", "data.subset=24", "--set", "data.image_size=96",
            "--set", "model.width_mult=0.35", "--set", "data.num_workers=0", "--set", "data.batch_size=4",
            "--set", "data.val_batch_size=8", "--set", "trainer.max_epochs=2",
            "--set", "trainer.check_val_every_n_epoch=1", "--set", "trainer.log_every_n_steps=1",
            "--set", "trainer.ckpt_every_n_steps=1"]  # 24 images / 4 = 6 steps per epoch, 12 in all


@pytest.fixture(scope="module")
def det_runs(tmp_path_factory, shapes_root):
    tmp = tmp_path_factory.mktemp("resume_det")
    return _killed_and_uninterrupted("train_det", tmp, DET_ARGS, kill_at="9")  # epoch 2, batch 3 of 6


def test_detection_killed_mid_epoch_resumes_exactly(det_runs):
    ref, run, at_kill = det_runs
    assert (at_kill["epoch"], at_kill["global_step"]) == (1, 9)  # really killed mid-way through the 2nd epoch
    assert at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 3}]
    _assert_same_final_state(ref, run)
    assert (_load(ref)["epoch"], _load(ref)["global_step"]) == (1, 12)


def test_resume_from_a_checkpoint_of_another_model_fails(det_runs, tmp_path, capsys):
    ref, _, _ = det_runs
    module = _tool("train_det")
    args = [a if a != "model.width_mult=0.35" else "model.width_mult=1.0" for a in DET_ARGS]  # other tensor shapes
    with pytest.raises(SystemExit) as e:  # one line naming the differing key, before Lightning loads anything
        module.main([*args, "--out", str(tmp_path / "wide"), "--resume", str(ref)])
    assert e.value.code == 2
    assert "model.width_mult: 0.35 in the checkpoint, 1.0 now" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a missing checkpoint is an error, never a fresh start
        module.main([*DET_ARGS, "--out", str(tmp_path / "none"), "--resume", str(tmp_path / "nope.ckpt")])
    assert e.value.code == 2


SEG_ARGS = ["--cfg", "deeplabv3_shapes", "--set", "data.subset=8", "--set", "data.image_size=64",
            "--set", "model.width_mult=0.35", "--set", "data.batch_size=2", "--set", "data.val_batch_size=4",
            "--set", "trainer.max_epochs=2", "--set", "trainer.log_every_n_steps=1",
            "--set", "trainer.ckpt_every_n_steps=1"]  # 8 images / 2 = 4 steps per epoch, 8 in all


def test_segmentation_killed_at_epoch_end_resumes_exactly_with_other_num_workers(tmp_path, shapes_root):
    # The other resume path: killed right after the end-of-epoch last.ckpt (after validation; Lightning then restarts
    # with a fresh loader and only calls set_epoch). DeepLab's head has dropout (per-batch seeding, StepSeed), and
    # the killed run loads its data in a worker process.
    ref, run, at_kill = _killed_and_uninterrupted(
        # kill at the epoch-end save (no step save on an epoch's last batch: LastCheckpoint)
        "train_seg", tmp_path, [*SEG_ARGS, "--set", "data.num_workers=0"], kill_at="4",
        killed_args=["--set", "data.num_workers=1"])
    assert (at_kill["epoch"], at_kill["global_step"]) == (0, 4)
    progress = at_kill["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert progress["processed"] == 1 and progress["completed"] == 0  # saved in on_train_epoch_end
    assert at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches_done": 4}]
    _assert_same_final_state(ref, run)
