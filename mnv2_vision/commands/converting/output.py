"""The converted dataset is built in a temporary folder beside ``--out`` and renamed into place at the end, so an
interrupted or failed conversion leaves ``--out`` as it was (a rename within one file system is atomic)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mnv2_vision.errors import UserError

__all__ = ["staged_output", "placer"]


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder to write the dataset into; on success it becomes ``out``. A non-empty ``out`` is refused
    unless ``overwrite`` (then it is replaced, after the new one is complete)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; give an empty or new folder, or --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def placer(copy: bool):
    """``place(src, dst)``: a symbolic link to the absolute ``src`` (default), or a copy."""

    def place(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not src.is_file():
            raise UserError(f"{src}: image not found (the labels name it)")
        if copy:
            shutil.copy2(src, dst)
        else:
            os.symlink(src.resolve(), dst)

    return place
