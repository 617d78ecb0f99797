"""Bad input and faults (issue #15): nothing of the user's is lost, no number is wrong, every mistake is one line
with an exit status. The SIGKILL / SIGTERM / full-disk runs are in ``test_kill_resume.py``."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2_vision.config import ConfigError, load_config, to_dict
from mnv2_vision.data.io.images import load_rgb
from mnv2_vision.data.synthetic import generate_shapes
from mnv2_vision.errors import CheckpointError
from mnv2_vision.files import atomic_write, remove_temp_files
from mnv2_vision.lit.checkpointing import AtomicCheckpointIO, NonFiniteWeightsError, _AppendOnlyWriter
from mnv2_vision.lit.guards import FiniteLossGuard, NonFiniteLossError
from mnv2_vision.lit.runfolder import RunFolder

from helpers import (ROOT, SHAPE_NAMES, TOOLS, det_checkpoint as _det_ckpt, fails, seg_checkpoint as _seg_ckpt,
                     tool as _tool)

_fails = partial(fails, prefixes=("error:", "stopped:"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """8 train / 7 val shapes scenes in the COCO and VOC layouts."""
    return generate_shapes(tmp_path_factory.mktemp("tiny"), num_train=8, num_val=7, num_cls_train=0, num_cls_val=0)


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])  # a truncated JPEG


# ---------------------------------------------------------------------------------------------- 1, 11: predict
def test_predict_never_replaces_an_input_or_another_output(tmp_path, tiny):
    folder = tmp_path / "photos"
    folder.mkdir()
    src = sorted((tiny / "coco" / "val2017").glob("*.jpg"))
    shutil.copy(src[0], folder / "photo.jpg")
    Image.open(src[0]).save(folder / "photo.png")  # same stem, other format
    shutil.copy(src[1], folder / "photo_1.jpg")  # the user's own file that a naive suffix would hit
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    ckpt = _det_ckpt(tmp_path / "det.ckpt", tiny)
    records = _tool("predict").main(["--ckpt", str(ckpt), str(folder), "--out", str(folder), "--score-thresh", "0"])
    outputs = [o for r in records for o in r["outputs"]]
    assert len(records) == 3 and len(set(outputs)) == 3  # three inputs, three distinct outputs
    assert not {Path(o).name for o in outputs} & set(before)  # no output took an input's name
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before  # inputs untouched
    assert all(Path(o).is_file() for o in outputs)
    # Again into the same folder: the drawings of the first call are not read as inputs, and are replaced in place.
    again = _tool("predict").main(["--ckpt", str(ckpt), str(folder), "--out", str(folder), "--score-thresh", "0"])
    assert [r["file"] for r in again] == [r["file"] for r in records]
    assert [r["outputs"] for r in again] == [r["outputs"] for r in records]
    assert len(list(folder.glob("*.jpg"))) + len(list(folder.glob("*.png"))) == 6


def test_predict_skips_an_unreadable_image_finishes_the_rest_and_exits_1(tmp_path, tiny, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    src = sorted((tiny / "coco" / "val2017").glob("*.jpg"))
    for name, s in zip(("a.jpg", "b.jpg", "c.jpg"), src):
        shutil.copy(s, folder / name)
    _corrupt(folder / "b.jpg")
    out = tmp_path / "out"
    line = _fails(capsys, "predict", ["--ckpt", str(_det_ckpt(tmp_path / "det.ckpt", tiny)), str(folder),
                                      "--out", str(out)], code=1)
    assert "skipped 1 of 3" in line and "b.jpg" in line and "The other 2" in line
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in records] == ["a.jpg", "c.jpg"]
    assert (out / "a.jpg").is_file() and (out / "c.jpg").is_file() and not (out / "b.jpg").exists()


# ---------------------------------------------------------------------------------------------- 2: pickles
def test_cifar_verify_refuses_a_planted_pickle_payload(tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    base = tmp_path / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    (base / "data_batch_1").write_bytes(pickle.dumps({"labels": Payload(), "data": np.zeros((1, 3072))}, protocol=2))
    code = _tool("prepare_data").main(["cifar10", "--root", str(tmp_path / "cifar"), "--verify"])
    assert code == 1 and not marker.exists()
    assert "refusing to load posix.system" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- 3: run folders
def test_a_second_process_cannot_use_a_run_folder_in_use(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                               "from mnv2_vision.lit.runfolder import RunFolder; "
                               f"RunFolder({str(out)!r}).open(); print('locked', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _fails(capsys, "train_det", ["--cfg", "ssdlite_shapes", "--out", str(out)])
        assert f"{out} is in use by process {holder.pid}" in line and "choose another --out" in line
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(out):  # the lock ends with the process that held it, even a killed one
        pass


def test_a_fresh_run_never_lands_in_a_folder_holding_another_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    (out / "ckpt" / "last.ckpt").write_bytes(b"x")
    (out / "config.yaml").write_text("task: detection\n")
    args = ["--cfg", "ssdlite_shapes", "--out", str(out), "--set", f"data.root={tmp_path / 'nowhere'}",
            "--set", "data.synthetic=false"]
    line = _fails(capsys, "train_det", args)
    assert "already holds an unfinished run (config.yaml, ckpt/last.ckpt)" in line and "--resume last" in line
    (out / "final_metrics.json").write_text("{}")
    assert "already holds a finished run" in _fails(capsys, "train_det", args)
    assert (out / "ckpt" / "last.ckpt").read_bytes() == b"x"  # refused: nothing touched
    # --overwrite removes the earlier run's files (then this run stops at its missing dataset)
    assert "dataset not found" in _fails(capsys, "train_det", [*args, "--overwrite"])
    assert not (out / "ckpt").exists() and not (out / "config.yaml").exists()
    assert "give one of them" in _fails(capsys, "train_det", [*args, "--overwrite", "--resume", "last"])


def test_temporary_files_of_a_killed_run_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    gone = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]  # processes that have exited
    for p in gone:
        p.wait()
    leftovers = [out / f".model.pt.tmp-{gone[0].pid}", out / "ckpt" / f".last.ckpt.tmp-{gone[1].pid}"]
    for p in leftovers:
        p.write_bytes(b"half")
    (out / "ckpt" / "last.ckpt").write_bytes(b"kept")
    with RunFolder(out, resume="last") as run:
        assert sorted(run.removed_temp) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and (out / "ckpt" / "last.ckpt").read_bytes() == b"kept"
    # outside a locked run folder only the leftovers of processes that no longer exist go
    mine = tmp_path / f".x.tmp-{os.getpid()}"
    mine.write_bytes(b"being written")
    (tmp_path / ".y.tmp-999999").write_bytes(b"dead")
    assert remove_temp_files(tmp_path) == [tmp_path / ".y.tmp-999999"] and mine.exists()


# ---------------------------------------------------------------------------------------------- 4, 12: true counts
def _voc_copy(tiny: Path, dst: Path, keep: list[str] | None = None) -> Path:
    shutil.copytree(tiny / "VOC2012", dst)
    if keep is not None:
        (dst / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in keep))
    return dst


def test_segmentation_scores_each_usable_image_once_and_lists_the_skipped(tmp_path, tiny, capsys):
    ids = (tiny / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    bad_ids, good_ids = ids[1:4], [ids[0], *ids[4:]]
    damaged = _voc_copy(tiny, tmp_path / "damaged")
    for i in bad_ids:
        _corrupt(damaged / "JPEGImages" / f"{i}.jpg")
    clean = _voc_copy(tiny, tmp_path / "clean", keep=good_ids)
    ckpt = _seg_ckpt(tmp_path / "seg.ckpt", tiny)
    got = _tool("eval_seg").main(["--ckpt", str(ckpt), "--set", f"data.root={damaged}"])
    printed = capsys.readouterr().out
    ref = _tool("eval_seg").main(["--ckpt", str(ckpt), "--set", f"data.root={clean}"])
    assert got["num_images"] == ref["num_images"] == 4 and len(ids) == 7
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-12) and got["pixel_acc"] == ref["pixel_acc"]
    assert [s.split(" ")[0] for s in got["skipped_images"]] == bad_ids
    assert "4 images of split 'val'" in printed and "3 unusable file(s) skipped" in printed
    # validation during training counts the same way (val/num_images, val_skipped)
    import pytorch_lightning as pl

    from mnv2_vision.checkpoint import load_model
    from mnv2_vision.lit.segmentation import SegmentationModule, build_seg_datamodule

    cfg, model, _ = load_model(ckpt)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(damaged)))
    module = SegmentationModule(model, num_classes=5, optim=cfg.optim, sched=cfg.sched, class_names=SHAPE_NAMES)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    metrics = trainer.validate(module, datamodule=build_seg_datamodule(cfg), verbose=False)[0]
    assert metrics["val/num_images"] == 4 and metrics["val/miou"] == pytest.approx(ref["miou"], abs=1e-6)
    assert [s.split(" ")[0] for s in module.val_skipped] == bad_ids


def test_detection_evaluation_reports_the_true_image_count(tmp_path, tiny, capsys):
    root = tmp_path / "coco"
    shutil.copytree(tiny / "coco", root)
    bad = sorted((root / "val2017").glob("*.jpg"))[2:5]
    for p in bad:
        _corrupt(p)
    ckpt = _det_ckpt(tmp_path / "det.ckpt", tiny)
    m = _tool("eval_det").main(["--ckpt", str(ckpt), "--out", str(tmp_path / "eval"), "--set", f"data.root={root}"])
    printed = capsys.readouterr().out
    assert m["num_images"] == 4 and "on val2017 (4 images" in printed and "3 unusable file(s) skipped" in printed
    assert sorted(Path(s.split(" ")[0]).name for s in m["skipped_images"]) == [p.name for p in bad]
    assert json.loads((tmp_path / "eval" / "metrics_val2017.json").read_text())["num_images"] == 4


def test_annotations_without_boxes_are_a_data_error(tmp_path, tiny, capsys):
    root = tmp_path / "coco"
    shutil.copytree(tiny / "coco", root)
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    ann.write_text(json.dumps({**data, "annotations": []}))
    line = _fails(capsys, "train_det", ["--cfg", "ssdlite_shapes", "--out", str(tmp_path / "run"),
                                        "--set", "data.synthetic=false", "--set", f"data.root={root}"], code=1)
    assert "instances_train2017.json holds no boxes" in line
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder behind


def test_16_bit_brightness_does_not_depend_on_the_brightest_pixel(tmp_path):
    a = np.full((4, 4), 200, np.uint16)
    b = a.copy()
    b[0, 0] = 256  # one pixel past 8 bits used to switch the whole image to a different scale
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert load_rgb(tmp_path / "a.png")[2, 2, 0] == load_rgb(tmp_path / "b.png")[2, 2, 0] == 200 // 257
    c = np.array([[65535, 32896, 0]], np.uint16)
    Image.fromarray(c).save(tmp_path / "c.png")
    assert load_rgb(tmp_path / "c.png")[0, :, 0].tolist() == [255, 128, 0]


# ---------------------------------------------------------------------------------------------- 5: atomic writes
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [path]
    # a writer that reports a full disk its own way (torch.save: "unexpected pos") is a full disk, naming the file
    import mnv2_vision.files as files

    monkeypatch.setattr(files, "_nearly_full", lambda folder, margin=0: True)
    with pytest.raises(OSError) as e:
        with atomic_write(path) as f:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3805184 vs 3805072")
    assert files.is_disk_full(e.value) and e.value.filename == str(path) and path.read_bytes() == b"previous"


# ---------------------------------------------------------------------------------------------- 6: NaN
@pytest.mark.parametrize("override, key", [("optim.lr=.nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"),
                                           ("data.std=[0, 0, 0]", "data.std"), ("data.mean=[.nan, 0, 0]", "data.mean"),
                                           ("model.width_mult=0", "model.width_mult"),
                                           ("trainer.max_epochs=-5", "trainer.max_epochs")])
def test_non_finite_and_zero_config_values_are_rejected(override, key, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("ssdlite_shapes", [override])
    assert key in _fails(capsys, "train_det", ["--cfg", "ssdlite_shapes", "--set", override])


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the previous, good one")
    state = {"model.w": torch.tensor([1.0, float("nan")]), "model.b": torch.zeros(2)}
    with pytest.raises(NonFiniteWeightsError, match="1 of 2 weight tensors are NaN/inf"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": state, "global_step": 7}, path)
    assert path.read_bytes() == b"the previous, good one"


def _guard_message(model: torch.nn.Module, lr: float, batch) -> str:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    trainer = SimpleNamespace(optimizers=[opt], global_step=3, current_epoch=0)
    guard = FiniteLossGuard()
    guard.on_train_batch_start(trainer, model, batch, 1)
    with pytest.raises(NonFiniteLossError) as e:
        guard.on_before_backward(trainer, model, torch.tensor(float("nan")))
    return str(e.value)


def test_a_nan_loss_names_its_cause():
    model = torch.nn.Linear(2, 2)
    images = torch.zeros(2, 2)
    assert "cause: the data" in _guard_message(model, 0.1, (images.log(), []))  # -inf pixels
    assert "cause: the learning rate is not finite" in _guard_message(model, float("nan"), (images, []))
    assert "cause: the loss overflowed" in _guard_message(model, 0.1, (images, []))
    # What optim.lr=.nan used to do: the first update turns the weights NaN, the next loss is NaN. Blame the weights.
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    msg = _guard_message(model, 0.1, (images, []))
    assert "cause: the weights" in msg and "1 of 2 tensors" in msg and "lower optim.lr" in msg


# ---------------------------------------------------------------------------------------------- 7: metrics.csv
def test_metrics_log_keeps_the_history_before_the_resume_point(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.9\n0,2,0.8\n0,3,0.7\n1,4,0.")  # last row cut by a kill
    w = _AppendOnlyWriter(str(tmp_path), resume_from=3)
    assert path.read_text().splitlines() == ["epoch,step,train/loss", "0,0,1.0", "0,1,0.9", "0,2,0.8"]
    w.log_metrics({"train/loss": 0.5, "epoch": 0}, step=3)
    w.log_metrics({"val/map": 0.1, "epoch": 0}, step=3)  # a new column rewrites the whole file, atomically
    w.save()
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,step,train/loss,val/map" and rows[1] == "0,0,1.0," and len(rows) == 6
    _AppendOnlyWriter(str(tmp_path), resume_from=None)  # a fresh run starts a fresh log
    assert not path.exists()


# ---------------------------------------------------------------------------------------------- 9, 10: checkpoints
def _payload_ckpt(path: Path, marker: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"state_dict": Payload(), "loops": {}}, protocol=2))
    return path


def test_resume_never_runs_a_checkpoints_payload_even_when_torch_is_told_to(tmp_path, monkeypatch):
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = _payload_ckpt(tmp_path / "evil.ckpt", marker)
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(TOOLS / "train_det.py"), "--cfg", "ssdlite_shapes", "--out",
                        str(tmp_path / "run"), "--set", "data.subset=8", "--resume", str(ckpt)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and not marker.exists(), r.stderr[-2000:]
    assert "refusing to load checkpoint" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # Lightning's own load path (trainer.fit ckpt_path)
    with pytest.raises(CheckpointError, match="posix.system"):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert not marker.exists()


def test_user_mistakes_are_one_line_with_exit_status_2(tmp_path, tiny, capsys):
    det = _det_ckpt(tmp_path / "det.ckpt", tiny)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(det.read_bytes()[:5000])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    plain = tmp_path / "model.pt"
    torch.save(torch.load(det, weights_only=True)["state_dict"], plain)
    seg = _seg_ckpt(tmp_path / "seg.ckpt", tiny, loops=True)
    train = ["--cfg", "ssdlite_shapes", "--set", "data.subset=8", "--set", "model.width_mult=0.35"]
    cases = [
        ("eval_det", ["--ckpt", str(truncated)], "truncated.ckpt is not a readable checkpoint: truncated"),
        ("eval_det", ["--ckpt", str(noise)], "noise.ckpt is not a readable checkpoint: truncated"),
        ("eval_det", ["--ckpt", str(plain)], "is a plain state dict"),
        ("train_det", [*train, "--out", str(tmp_path / "r1"), "--resume", str(plain)], "is a plain state dict"),
        ("train_det", [*train, "--out", str(tmp_path / "r2"), "--resume", str(seg)], "is a segmentation checkpoint"),
        ("train_det", [*train, "--out", str(tmp_path / "r3"), "--resume", str(truncated)],
         "is not a readable checkpoint"),
        ("train_seg", ["--cfg", "deeplabv3_shapes", "--set", "data.subset=4", "--set", "model.width_mult=0.35",
                       "--set", f"model.pretrained={det}", "--out", str(tmp_path / "r4")], "holds another kind"),
    ]
    for tool, argv, needle in cases:
        line = _fails(capsys, tool, argv)
        assert needle in line and "file an issue" not in line, (tool, line)
    with pytest.raises(CheckpointError):  # --debug: the traceback instead of the line
        _tool("eval_det").main(["--ckpt", str(truncated), "--debug"])


def test_resuming_another_runs_finished_checkpoint_is_refused(tmp_path, capsys):
    cfg = load_config("ssdlite_shapes", ["model.num_classes=5", "trainer.max_epochs=2"])
    other = tmp_path / "other" / "ckpt" / "last.ckpt"
    other.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": to_dict(cfg)}, "global_step": 8, "epoch": 1,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 2}}}}}, other)
    line = _fails(capsys, "train_det", ["--cfg", "ssdlite_shapes", "--set", "trainer.max_epochs=2", "--set",
                                        "data.subset=8", "--out", str(tmp_path / "new"), "--resume", str(other)])
    assert "finished its training (2 epoch(s)" in line and "another run's results" in line
    assert not (tmp_path / "new" / "final_metrics.json").exists()


# ---------------------------------------------------------------------------------------------- 14: threads, progress
def test_threads_follow_the_cores_this_process_can_use(monkeypatch):
    import mnv2_vision.lit.threads as cpu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(cpu, "_running", lambda: 1)  # only ourselves
    assert cpu.choose_num_threads(None, 0)[0] == 4
    assert cpu.choose_num_threads(None, 2)[0] == 2  # the data workers need cores too
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 2.5)  # a container allowed 2.5 CPUs
    assert cpu.choose_num_threads(None, 0)[0] == 2
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(cpu, "_running", lambda: 4)  # three other busy processes
    threads, why = cpu.choose_num_threads(None, 0)
    assert threads == 1 and "3 busy with other processes" in why
    assert cpu.choose_num_threads(3, 0) == (3, "trainer.num_threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu.choose_num_threads(None, 0) == (2, "OMP_NUM_THREADS")
    with pytest.raises(ConfigError, match="trainer.num_threads"):
        load_config(None, ["trainer.num_threads=0"])


def test_progress_lines_without_a_terminal(tmp_path, capsys):
    from pytorch_lightning.demos.boring_classes import BoringModel

    from mnv2_vision.lit.common import make_trainer, set_num_threads

    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("val/map", 0.5)

    cfg = load_config(None, ["trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.limit_train_batches=3",
                             "trainer.limit_val_batches=1", "data.batch_size=8", "trainer.progress_interval_s=0.01",
                             "trainer.num_threads=1"])
    threads = torch.get_num_threads()
    try:
        assert set_num_threads(cfg) == 1 and torch.get_num_threads() == 1
        make_trainer(cfg, tmp_path, monitor="val/map").fit(Slow())
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("  step ")]
    assert len(steps) == 6 and steps[0].startswith("  step 1/6 (epoch 1, batch 1/3)") and "steps/s" in steps[0]
    assert "threads: 1 (trainer.num_threads)" in out and "epoch 2/2 step 6" in out


@pytest.mark.parametrize("name", ["export", "benchmark"])
def test_a_missing_deploy_extra_is_one_line_naming_the_install(name, monkeypatch, capsys):
    """A plain `pip install mnv2_vision` has no onnx / onnxruntime: the commands that need them say how to get them
    (the wheel check imports every console command without the extra)."""
    import importlib

    module = importlib.import_module(f"mnv2_vision.commands.{name}")
    missing = ImportError("No module named 'onnxruntime'", name="onnxruntime")
    monkeypatch.setattr(module, "_NO_DEPLOY", missing)
    argv = ["--ckpt", "x.ckpt"] if name == "export" else []
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip() == (f"error: tools/{name}.py needs the optional 'deploy' dependencies (onnxruntime is not "
                           'installed): pip install "mnv2_vision[deploy]"')
