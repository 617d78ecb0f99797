"""One training run per folder: a lock while it runs, and no silent mixing with another run.

Two runs started with the same ``--out`` used to interleave their checkpoints, ``config.yaml`` and ``metrics.csv``
rows and both exit 0. A ``RunFolder`` now

- holds an exclusive lock (``<out>/.lock``, ``flock``: released by the OS when the process dies, even by ``kill -9``)
  for the whole run; a second process is refused with a message naming the first one;
- refuses to start a fresh run in a folder that already holds one (checkpoints, ``config.yaml``, metrics, results)
  unless the run is continued (``--resume``) or explicitly replaced (``--overwrite``);
- deletes the temporary files that a killed process left (``files.remove_temp_files``).

Under DDP only the launching process (global rank 0) takes the lock; the ranks it starts share its folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .errors import RunFolderError
from .files import remove_temp_files

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunFolder", "launched_as_rank_zero", "RUN_FILES"]

# What a training run writes into its folder (files and folders). ``--overwrite`` removes exactly these.
RUN_FILES = ("config.yaml", "classes.json", "ckpt", "metrics.csv", "hparams.yaml", "tb", "model.pt", "final_metrics.json",
             "result.json", "curves.png")
_FINISHED_MARKERS = ("final_metrics.json", "result.json", "model.pt")


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0 of a (possibly distributed) launch, from the launchers' variables
    (torchrun: RANK; Lightning's own launcher: LOCAL_RANK / NODE_RANK; SLURM: SLURM_PROCID)."""
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


class RunFolder:
    """The folder of one training run, locked while this process uses it (a context manager).

    Args:
        path: the run folder (``--out``).
        resume: the ``--resume`` value: a checkpoint path, ``"last"`` (``<path>/ckpt/last.ckpt``) or ``None``.
        overwrite: remove a previous run's files (``RUN_FILES``) instead of refusing to start.
        lock: take the lock and run the checks (default: only in the launching process, ``launched_as_rank_zero``).
        existing_ok: only lock; a folder with earlier results is fine (an ablation study continues its variants).
    """

    def __init__(self, path: str | os.PathLike, *, resume: str | None = None, overwrite: bool = False,
                 lock: bool | None = None, existing_ok: bool = False) -> None:
        self.path = Path(path)
        self.resume_arg = resume
        self.overwrite = overwrite
        self.locking = launched_as_rank_zero() if lock is None else lock
        self.existing_ok = existing_ok
        self._fd: int | None = None
        self._created = False
        self.removed_temp: list[Path] = []

    # ------------------------------------------------------------------ state of the folder
    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def last_ckpt(self) -> Path:
        return self.path / "ckpt" / "last.ckpt"

    def existing_run_files(self) -> list[str]:
        """The run files already in the folder (checkpoints by name)."""
        found = [name for name in RUN_FILES if name != "ckpt" and (self.path / name).exists()]
        ckpt = self.path / "ckpt"
        if ckpt.is_dir():
            found += [f"ckpt/{p.name}" for p in sorted(ckpt.glob("*.ckpt"))]
        return found

    @property
    def resume_path(self) -> Path | None:
        """The checkpoint ``--resume`` names (``last`` → ``<out>/ckpt/last.ckpt``); a missing one is an error."""
        if self.resume_arg is None:
            return None
        path = self.last_ckpt if self.resume_arg == "last" else Path(self.resume_arg)
        if not path.is_file():
            hint = " (this folder has no last.ckpt: was the run started here?)" if self.resume_arg == "last" else ""
            raise FileNotFoundError(f"--resume {self.resume_arg}: no checkpoint at {path}{hint}")
        return path

    def holds(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` lies inside this run folder."""
        try:
            Path(path).resolve().relative_to(self.path.resolve())
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------ lock
    def _holder(self) -> str:
        try:
            info = json.loads(self.lock_file.read_text())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
            return f"process {info['pid']} on {info['host']} ({info['command']}, started {started})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def open(self) -> "RunFolder":
        if not self.locking or self._fd is not None:
            return self
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock(fd):
            os.close(fd)
            raise RunFolderError(f"run folder {self.path} is in use by {self._holder()}; wait for it to finish or "
                                 "choose another --out")
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            self._check_start()
        except BaseException:
            self.close()
            raise
        self.removed_temp = remove_temp_files(self.path, all_pids=True)  # we hold the lock: nobody else writes
        return self

    def _check_start(self) -> None:
        if self.resume_arg is not None or self.existing_ok:
            return  # continuing a run here is what --resume asks for (the checkpoint is checked by the tool)
        existing = self.existing_run_files()
        if not existing:
            return
        if self.overwrite:
            for name in RUN_FILES:
                p = self.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            print(f"--overwrite: removed the previous run's files from {self.path}: {', '.join(existing[:8])}",
                  flush=True)
            return
        state = "a finished run" if any(m in existing for m in _FINISHED_MARKERS) else "an unfinished run"
        shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
        raise RunFolderError(f"{self.path} already holds {state} ({shown}); continue it with --resume last, write "
                             "this run to another --out, or replace it with --overwrite")

    def close(self) -> None:
        if self._fd is None:
            return
        # The lock file stays: deleting it while another process waits on it would let two processes lock two
        # different files. Only a folder this process created and left empty is removed again.
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                if [p.name for p in self.path.iterdir()] == [".lock"]:
                    self.lock_file.unlink()
                    self.path.rmdir()

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()
