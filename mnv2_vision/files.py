"""Every file the toolkit writes goes through one path: a hidden temporary file in the same folder, fsync, rename.

A crash, ``kill -9`` or a full disk in the middle of a write then leaves the previous version of the file (or no
file), never a truncated one: ``os.replace`` is atomic on POSIX and Windows. What a killed process leaves behind is a
temporary ``.<name>.tmp-<pid>`` file, which ``remove_temp_files`` deletes on the next start once that process is
gone (the run folder does it for its own places, ``lit/runfolder.py``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "write_text", "write_json", "save_torch", "save_image", "save_figure", "temp_name",
           "remove_temp_files", "is_disk_full", "load_torch", "plan_outputs", "output_folder",
           "is_temp_name"]

_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of an ``atomic_write`` temporary file (``.<name>.tmp-<pid>``)."""
    return _TEMP.match(name) is not None


def temp_name(path: Path) -> Path:
    """The temporary sibling that ``atomic_write`` writes ``path`` through."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears complete when the block ends, or not at all.

    On any error (a full disk included) the temporary file is removed and the error re-raised; the previous version
    of ``path``, if any, is untouched.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write writes whole files (mode 'w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and not isinstance(e, OSError) and _nearly_full(path.parent)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # name the file in the message of a full disk
        if full:
            # Writers that buffer (torch.save's zip writer) report a failed write as their own error
            # ("unexpected pos ..."): a write that fails on a full disk is a full disk.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    _fsync_dir(path.parent)


def _nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    return write_text(path, json.dumps(obj, **{"indent": 2, **dumps_kwargs}))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def save_image(image: Any, path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """Save a PIL image or an (H, W[, 3]) uint8 array; the format follows the suffix (``.jpg``, ``.png``, ...)."""
    from PIL import Image

    path = Path(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path} from its suffix")
    with atomic_write(path) as f:
        img.save(f, format=fmt, **save_kwargs)
    return path


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure, format from the suffix."""
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``atomic_write`` leftovers of processes that no longer exist from ``folder`` itself; returns what
    was removed.

    Never below ``folder`` (a subfolder may be another run's or another tool's, writing right now: a caller names
    each folder it writes into), and never a file of a live process (it may be writing it right now, in this folder
    or not: a lock on a folder says nothing about a process outside its run).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder ``path`` (with its parents) and check that files can be written in it, before any
    work: a file in the way, a read-only file system or a missing permission is a ``UserError`` naming ``option``,
    not a traceback at the first write. The check writes and removes an empty temporary file: the error of a real
    write names the cause, where ``os.access`` only says no (and says yes to root on a folder without write bits)."""
    from .errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder: give a folder (a missing one is created)")
    probe = temp_name(path / "write-check")  # a killed process leaves a temporary file like any other
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600))
        probe.unlink()
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write there ({e.strerror}); choose a folder you can write to") \
            from None
    return path


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (an explicit
    ``weights_only=True`` wins over it), with PyTorch's errors turned into one ``CheckpointError`` line naming the
    file: a truncated or foreign file, or one that holds code, is the user's file problem, not a PyTorch bug."""
    import pickle

    import torch

    from .errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # the unpickler warns about pickle protocols before it fails on them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported(?: global:)? GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if found:
            raise CheckpointError(f"refusing to load {what} {path}: it holds Python objects beyond tensors and "
                                  f"plain data ({found.group(1)}), which could run code. Checkpoints written by "
                                  "mnv2_vision never do; use a file from a source you trust") from None
        raise CheckpointError(f"{path} is not a readable {what}: truncated, damaged or not a PyTorch file") from None
    except PermissionError:
        raise
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, AttributeError, ImportError, OSError):
        raise CheckpointError(f"{path} is not a readable {what}: truncated, damaged or not a PyTorch file; was it "
                              "copied completely?") from None


def plan_outputs(inputs: list[Path], out_dir: Path, suffixes: tuple[str, ...],
                 replaceable: set[Path] = frozenset()) -> list[tuple[Path, ...]]:
    """Output paths ``out_dir/<stem><suffix>`` for each input (one per suffix), never the path of an input, of another
    planned output, or of an existing file, except those in ``replaceable`` (an earlier run's outputs). A taken name
    gets ``_1``, ``_2``, ... after the stem, the same number for all of one input's outputs (they stay a set).
    A symlink, even a broken or looping one, is an existing file."""
    def real(p: Path) -> Path:
        return Path(os.path.realpath(p))  # Path.resolve raises on a symlink loop

    taken = {real(p) for p in inputs}
    planned: list[tuple[Path, ...]] = []
    for f in inputs:
        for k in range(len(inputs) + len(taken) + 2):
            stem = f.stem if k == 0 else f"{f.stem}_{k}"
            outs = tuple(out_dir / f"{stem}{s}" for s in suffixes)
            free = all(real(o) not in taken and (not os.path.lexists(o) or real(o) in replaceable) for o in outs)
            if free:
                break
        taken.update(real(o) for o in outs)
        planned.append(outs)
    return planned
