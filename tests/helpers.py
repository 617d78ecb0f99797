"""What many test files share: the tools run in-process, their one-line errors, tiny runs and checkpoints, real data.

pytest puts ``tests/`` on ``sys.path`` (its default ``prepend`` import mode; ``tests/`` is no package), so a test
file imports these as ``from helpers import tool``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, to_dict
from mnv2_vision.data.synthetic import SHAPE_CLASSES

__all__ = ["LogRecords", "ROOT", "SHAPE_NAMES", "TOOLS", "det_checkpoint", "fails", "real_data",
           "seg_checkpoint", "sets", "tool", "train"]

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
SHAPE_NAMES = ["background", *SHAPE_CLASSES]  # the shapes data's labels (segmentation's 0 .. 4)


def tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module, loaded by path as ``python tools/<name>.py`` runs it (``tools/`` is no
    package); its ``main(argv)`` runs the command in this process."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fails(capsys: pytest.CaptureFixture, name: str, argv: list[str], code: int = 2, *,
          prefixes: tuple[str, ...] = ("error:",), alone: bool = False) -> str:
    """Run ``tools/<name>.py`` in-process: it must exit with ``code`` and print exactly one line starting with one of
    ``prefixes`` on stderr, and no traceback. Returns that line.

    Args:
        alone: that line must be all stderr holds (blank lines aside), not just the only one with a prefix.
    """
    with pytest.raises(SystemExit) as e:
        tool(name).main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if (line.strip() if alone else line.startswith(prefixes))]
    assert e.value.code == code and len(lines) == 1 and "Traceback" not in err, (e.value.code, err[-2000:])
    assert lines[0].startswith(prefixes), lines
    return lines[0]


def sets(*pairs: str) -> list[str]:
    """``--set`` arguments of a tool's command line: ``sets("a=1", "b=2")`` is ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for pair in pairs for arg in ("--set", pair)]


def train(factory: pytest.TempPathFactory, name: str, cfg: str, args: list[str]) -> tuple[Path, dict]:
    """A training run of ``tools/<name>.py --cfg <cfg> <args>`` in a fresh folder: (the folder, what ``main``
    returned). For module-scoped fixtures: one tiny run that a test file's tests all read."""
    out = factory.mktemp(name)
    return out, tool(name).main(["--cfg", cfg, "--out", str(out), *args])


def real_data(name: str, marker: str) -> Path:
    """``$MNV2_REAL_DATA/<name>``, the real-data fixture ``name``; the test is skipped without the variable or when
    ``marker`` (a path inside the folder) is missing."""
    base = os.environ.get("MNV2_REAL_DATA")
    if not base:
        pytest.skip(f"MNV2_REAL_DATA is not set (folder holding {name})")
    root = Path(base) / name
    if not (root / marker).exists():
        pytest.skip(f"{root} does not hold the {name} fixture ({marker} is missing)")
    return root


class LogRecords(logging.Handler):
    """The messages of the warnings (and worse) logged while it is attached to a logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def det_checkpoint(path: Path, root: Path) -> Path:
    """A detection checkpoint as train_det writes it, for the shapes scenes of ``root/coco`` at 64 px (random
    weights: for tests of files, counts and messages)."""
    cfg = load_config("ssdlite_shapes", ["data.synthetic=false", f"data.root={root / 'coco'}", "data.image_size=64",
                                         "model.width_mult=0.35", "model.num_classes=5", "data.num_workers=0"])
    model = build_from_config(cfg, pretrained=False)
    torch.save({"hyper_parameters": {"config": to_dict(cfg), "category_ids": [1, 3, 4, 7],
                                     "category_names": SHAPE_NAMES[1:]},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def seg_checkpoint(path: Path, root: Path, loops: bool = False) -> Path:
    """A segmentation checkpoint as train_seg writes it, for the shapes scenes of ``root/VOC2012`` (random weights,
    with a class layer that does not tie); ``loops``: with the (empty) training-loop state of a resumable one."""
    cfg = load_config("deeplabv3_shapes", ["data.synthetic=false", f"data.root={root / 'VOC2012'}",
                                           "model.width_mult=0.35", "model.num_classes=5", "data.num_workers=0",
                                           "data.val_batch_size=3"])
    model = build_from_config(cfg, pretrained=False)
    for m in model.modules():  # logits of a fresh head are ~1e-8: their softmax ties; give them a real spread
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 5:
            torch.nn.init.normal_(m.weight, std=1e3)
    ckpt = {"hyper_parameters": {"config": to_dict(cfg), "class_names": SHAPE_NAMES},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    if loops:
        ckpt.update(loops={"fit_loop": {}}, global_step=0, epoch=0)
    torch.save(ckpt, path)
    return path
