"""Run folders and output folders (issue #23): a start never deletes another process's files nor lands in the root,
the home folder or a folder of other files; a resume that cannot continue is refused before any file changes; an
unusable ``--out`` is one line; a start that fails leaves nothing that blocks the next one."""
from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, to_dict
from mnv2_vision.data.synthetic import generate_shapes
from mnv2_vision.errors import RunFolderError
from mnv2_vision.lit.runfolder import RunFolder

from helpers import fails as _fails, tool as _tool

SHAPE_NAMES = ["background", "circle", "square", "star", "triangle"]

# The quickest real detection run: 8 shapes scenes at 64 px, one step per epoch.
TINY_DET = ["--cfg", "ssdlite_shapes", "--set", "data.subset=8", "--set", "data.image_size=64",
            "--set", "model.width_mult=0.35", "--set", "data.num_workers=0", "--set", "data.batch_size=8",
            "--set", "data.val_batch_size=8", "--set", "trainer.log_every_n_steps=1",
            "--set", "trainer.check_val_every_n_epoch=1"]


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def writer():
    """Start live processes, each holding ``.<name>.tmp-<its pid>`` (an ``atomic_write`` in progress) in a folder."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path, name: str) -> Path:
        code = ("import os, sys, time; from pathlib import Path; d = Path(sys.argv[1]); d.mkdir(parents=True, "
                "exist_ok=True); (d / f'.{sys.argv[2]}.tmp-{os.getpid()}').write_bytes(b'half'); "
                "print('writing', flush=True); time.sleep(120)")
        p = subprocess.Popen([sys.executable, "-c", code, str(folder), name], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "writing"
        return folder / f".{name}.tmp-{p.pid}"

    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture(autouse=True)
def _never_sweep_outside(monkeypatch):
    """Safety net: should a regression let a run open ``/`` or the home folder, its sweep must not run there."""
    import mnv2_vision.lit.runfolder as runfolder

    real = runfolder.remove_temp_files

    def guarded_sweep(folder, *args, **kwargs):
        resolved = Path(folder).resolve()
        assert resolved != Path(resolved.anchor) and resolved != Path.home().resolve(), f"swept {resolved}"
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(runfolder, "remove_temp_files", guarded_sweep)


# ---------------------------------------------------------------------------------------------- 1: other files
def test_a_run_on_a_folder_of_other_files_leaves_a_live_writer_alone(tmp_path, writer, capsys):
    parent = tmp_path / "P"
    victim = writer(parent / "victim" / "ckpt", "last.ckpt")  # a live training run in a subfolder
    args = ["--cfg", "ssdlite_shapes", "--out", str(parent), "--set", f"data.root={tmp_path / 'nowhere'}",
            "--set", "data.synthetic=false"]
    line = _fails(capsys, "train_det", args)
    assert line == (f"error: {parent} is not empty and holds no run (victim): write the run to a new or empty folder, "
                    "or pass --overwrite to write it here anyway (only a run's own files are ever replaced)")
    assert victim.read_bytes() == b"half"
    assert sorted(p.name for p in parent.iterdir()) == ["victim"]  # no .lock, no config.yaml
    # --overwrite writes here, and still never touches a file of a live process nor anything below a subfolder
    dead = _dead_pid()
    mine_dead = [parent / f".model.pt.tmp-{dead}", parent / f".config.yaml.tmp-{dead}"]
    theirs_dead = parent / "victim" / f".result.json.tmp-{dead}"
    for p in [*mine_dead, theirs_dead]:
        p.write_bytes(b"old")
    live_top = writer(parent, "notes.txt")
    (parent / "notes.txt").write_text("mine")
    assert "dataset not found" in _fails(capsys, "train_det", [*args, "--overwrite"])
    assert victim.read_bytes() == b"half" and live_top.read_bytes() == b"half"
    assert theirs_dead.read_bytes() == b"old" and (parent / "notes.txt").read_text() == "mine"
    assert not any(p.exists() for p in mine_dead)  # a killed writer's leftovers in the run's own places go


def test_the_sweep_covers_the_run_s_own_places_and_only_dead_writers(tmp_path, writer):
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    (out / "ckpt" / "last.ckpt").write_bytes(b"kept")
    dead = _dead_pid()
    leftovers = [out / f".model.pt.tmp-{dead}", out / "ckpt" / f".last.ckpt.tmp-{dead}"]
    below = out / "eval" / f".metrics_val2017.json.tmp-{dead}"  # another tool's folder: not the run's to clean
    below.parent.mkdir()
    for p in [*leftovers, below]:
        p.write_bytes(b"half")
    live = [writer(out, "curves.png"), writer(out / "ckpt", "best.ckpt"), writer(out / "eval", "x.json")]
    for kwargs in ({"resume": "last"}, {"existing_ok": True}):
        with RunFolder(out, **kwargs):
            pass
        assert all(p.read_bytes() == b"half" for p in [*live, below]), kwargs
    assert not any(p.exists() for p in leftovers) and (out / "ckpt" / "last.ckpt").read_bytes() == b"kept"


def test_the_root_and_the_home_folder_are_never_run_folders(tmp_path, monkeypatch):
    listing = sorted(os.listdir("/"))
    for kwargs in ({}, {"overwrite": True}, {"existing_ok": True}, {"resume": "last"}):
        with pytest.raises(RunFolderError, match=r"^--out / is the root of the file system: a run never writes "
                                                 r"there; choose a folder of its own \(e\.g\. runs/NAME\)$"):
            RunFolder("/", **kwargs).open()
    assert sorted(os.listdir("/")) == listing
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for kwargs in ({}, {"overwrite": True}, {"existing_ok": True}):
        with pytest.raises(RunFolderError, match=r"is the home folder: a run never writes there"):
            RunFolder(home / "sub" / "..", **kwargs).open()
    assert list(home.iterdir()) == []


# ---------------------------------------------------------------------------------------------- 5, 10a: real runs
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-epoch run (one step per epoch)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _tool("train_det").main([*TINY_DET, "--set", "trainer.max_epochs=3", "--out", str(out)])
    return out


@pytest.mark.parametrize("limit, needle", [
    # Lightning's "You restored a checkpoint with current_epoch=2, but you have set Trainer(max_epochs=1)"
    ("trainer.max_epochs=1", "has trained 3 epoch(s) (step 3), more than trainer.max_epochs=1: a resume only trains "
                             "on. Resume with at least trainer.max_epochs=3 (its run was set to 3)"),
    # Lightning took this one for a finished run and rewrote config.yaml with max_epochs=2
    ("trainer.max_epochs=2", "has trained 3 epoch(s) (step 3), more than trainer.max_epochs=2"),
    ("trainer.max_steps=2", "has trained 3 epoch(s) (step 3), more than trainer.max_steps=2: a resume only trains "
                            "on. Resume with at least trainer.max_steps=3 (its run was set to -1)"),
])
def test_resuming_with_a_smaller_limit_is_refused_before_any_file_changes(finished, limit, needle, capsys):
    files = ["config.yaml", "hparams.yaml", "metrics.csv", "classes.json", "ckpt/last.ckpt", "final_metrics.json"]
    before = {name: (finished / name).read_bytes() for name in files}
    line = _fails(capsys, "train_det", [*TINY_DET, "--set", "trainer.max_epochs=3", "--set", limit,
                                        "--out", str(finished), "--resume", "last"])
    assert needle in line and line.endswith(f"--set model.pretrained={finished / 'ckpt' / 'last.ckpt'}"), line
    assert {name: (finished / name).read_bytes() for name in files} == before


def test_a_checkpoint_inside_an_epoch_needs_that_epoch_in_max_epochs(tmp_path):
    from mnv2_vision.lit.checkpointing import inspect_resume
    from mnv2_vision.errors import CheckpointError

    ckpt = tmp_path / "run" / "ckpt" / "last.ckpt"  # a step save in the 3rd epoch: 2 epochs done, the 3rd started
    ckpt.parent.mkdir(parents=True)
    cfg = load_config("ssdlite_shapes", ["model.num_classes=5", "trainer.max_epochs=2"])
    torch.save({"state_dict": {}, "hyper_parameters": {"config": to_dict(cfg)}, "global_step": 5, "epoch": 2,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 2, "processed": 2, "started": 3}}}}},
               ckpt)
    with pytest.raises(CheckpointError, match=r"has trained 2 epoch\(s\) and part of the next \(step 5\), more than "
                                              r"trainer.max_epochs=2: .* at least trainer.max_epochs=3 "):
        inspect_resume(ckpt, cfg, tmp_path / "run")
    longer = load_config("ssdlite_shapes", ["model.num_classes=5", "trainer.max_epochs=3"])
    info = inspect_resume(ckpt, longer, tmp_path / "run")
    assert (info.epochs_done, info.finished, info.global_step) == (2, False, 5)


def test_a_failed_start_leaves_nothing_and_leftovers_do_not_block_the_next_run(tmp_path, capsys):
    out = tmp_path / "run"
    line = _fails(capsys, "train_det", [*TINY_DET, "--set", f"model.pretrained={tmp_path / 'missing.pt'}",
                                        "--out", str(out)])
    assert "pretrained weights file not found" in line
    assert not out.exists()  # it created the folder: the whole folder goes
    out.mkdir()
    _fails(capsys, "train_det", [*TINY_DET, "--set", f"model.pretrained={tmp_path / 'missing.pt'}", "--out", str(out)])
    assert [p.name for p in out.iterdir()] == [".lock"]  # the user's folder stays, without config.yaml or classes.json
    # A start killed before its first checkpoint leaves these: they are not a run to protect.
    (out / "config.yaml").write_text("task: detection\n")
    (out / "classes.json").write_text("{}")
    (out / "metrics.csv").write_text("step\n")
    _tool("train_det").main([*TINY_DET, "--set", "trainer.max_epochs=1", "--out", str(out)])
    assert (f"replacing the leftovers of a start that never saved a checkpoint in {out}: config.yaml, classes.json, "
            "metrics.csv") in capsys.readouterr().out
    assert (out / "ckpt" / "last.ckpt").is_file() and (out / "final_metrics.json").is_file()
    assert "task: detection" in (out / "config.yaml").read_text() and "model:" in (out / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------------- 7: unusable --out
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("tiny"), num_train=4, num_val=3, num_cls_train=0, num_cls_val=0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny) -> dict[str, Path]:
    """Checkpoints as the training tools write them (random weights: these tests stop before any inference)."""
    tmp = tmp_path_factory.mktemp("ckpts")
    made = {}
    for kind, name, extra in (("det", "ssdlite_shapes", {"category_ids": [1, 3, 4, 7],
                                                          "category_names": SHAPE_NAMES[1:]}),
                              ("seg", "deeplabv3_shapes", {"class_names": SHAPE_NAMES}),
                              ("cls", "mobilenet_v2_shapes", {"classes": SHAPE_NAMES[1:]})):
        cfg = load_config(name, ["model.width_mult=0.35", f"model.num_classes={4 if kind == 'cls' else 5}"])
        model = build_from_config(cfg, pretrained=False)
        torch.save({"hyper_parameters": {"config": to_dict(cfg), **extra},
                    "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp / f"{kind}.ckpt")
        made[kind] = tmp / f"{kind}.ckpt"
    made["image"] = sorted((tiny / "coco" / "val2017").glob("*.jpg"))[0]
    return made


TOOL_ARGS = {
    "train_det": lambda c: ["--cfg", "ssdlite_shapes"],
    "train_seg": lambda c: ["--cfg", "deeplabv3_shapes"],
    "train_multitask": lambda c: ["--cfg", "multitask_shapes"],
    "train_cls": lambda c: ["--cfg", "mobilenet_v2_shapes"],
    "predict": lambda c: ["--ckpt", str(c["det"]), str(c["image"])],
    "eval_det": lambda c: ["--ckpt", str(c["det"])],
    "eval_seg": lambda c: ["--ckpt", str(c["seg"])],
    "eval_cls": lambda c: ["--ckpt", str(c["cls"])],
    "export": lambda c: ["--ckpt", str(c["det"])],
}


def _out_option(tool: str) -> str:
    return "--save-dir" if tool == "eval_seg" else "--out"  # eval_seg writes its label maps to --save-dir


@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_an_existing_file_as_out_is_one_line(tool, tmp_path, ckpts, capsys):
    target = tmp_path / "results.txt"
    target.write_text("the user's file")
    line = _fails(capsys, tool, [*TOOL_ARGS[tool](ckpts), _out_option(tool), str(target)])
    assert line == (f"error: {_out_option(tool)} {target} is a file, not a folder: give a folder (a missing one is "
                    "created)"), line
    assert target.read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder on a read-only file system: below it every way to create or write a file or folder fails with EROFS
    and ``access(W_OK)`` says no, as on a read-only mount (a folder without write permission is no test as root,
    and mounting needs privileges a test does not have)."""
    root = (tmp_path / "ro").resolve()
    (root / "existing").mkdir(parents=True)

    def below(path) -> bool:
        if isinstance(path, int):
            return False
        p = Path(os.fsdecode(path))
        return (p if p.is_absolute() else Path.cwd() / p).resolve().is_relative_to(root)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_os_open, real_open, real_access = os.mkdir, os.open, builtins.open, os.access
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def mkdir(path, *args, **kwargs):
        return refuse(path) if below(path) else real_mkdir(path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        return refuse(path) if below(path) and flags & writes else real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        return refuse(file) if below(file) and set(mode) & set("wax+") else real_open(file, mode, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if below(path) and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    for module, name, fn in ((os, "mkdir", mkdir), (os, "open", os_open), (builtins, "open", open_),
                             (io, "open", open_), (os, "access", access)):
        monkeypatch.setattr(module, name, fn)
    return root


@pytest.mark.parametrize("where", ["existing", "new/sub"])
@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_a_read_only_out_is_one_line(tool, where, read_only, ckpts, capsys):
    target = read_only / where
    line = _fails(capsys, tool, [*TOOL_ARGS[tool](ckpts), _out_option(tool), str(target)])
    expected = (f"error: {_out_option(tool)} {target}: cannot write there (Read-only file system); choose a folder "
                "you can write to")
    assert line == expected, line
    assert sorted(p.name for p in read_only.iterdir()) == ["existing"] and not any((read_only / "existing").iterdir())
