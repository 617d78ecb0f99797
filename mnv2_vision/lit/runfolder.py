"""One training run per folder: a lock while it runs, and no silent mixing with another run.

Two runs started with the same ``--out`` used to interleave their checkpoints, ``config.yaml`` and ``metrics.csv``
rows and both exit 0. A ``RunFolder`` now

- holds an exclusive lock (``<out>/.lock``, ``flock``: released by the OS when the process dies, even by ``kill -9``)
  for the whole run; a second process is refused with a message naming the first one;
- is never the root of the file system or the home folder, and never a folder of other files that holds no run
  (unless ``--overwrite``: even then only ``RUN_FILES`` are ever replaced);
- refuses to start a fresh run in a folder that already holds one (a checkpoint or a result) unless the run is
  continued (``--resume``) or explicitly replaced (``--overwrite``). What a start that failed or was killed before its
  first checkpoint left (``config.yaml``, ``classes.json``, logs) is no run: it is replaced, and a start that fails
  removes what it wrote itself;
- deletes the temporary files that a killed process left in the run's own places (its top level and ``ckpt/``,
  never below: a subfolder may hold another run), and only those of processes that are gone.

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

from ..config import Config, save_config
from ..errors import RunFolderError
from ..files import is_temp_name, output_folder, remove_temp_files

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunFolder", "write_config", "launched_as_rank_zero", "RUN_FILES"]

# What a training run writes into its folder (files and folders). ``--overwrite`` removes exactly these.
RUN_FILES = ("config.yaml", "classes.json", "ckpt", "metrics.csv", "hparams.yaml", "tb", "model.pt",
             "final_metrics.json", "result.json", "curves.png", "finetune_report.json")
_FINISHED_MARKERS = ("final_metrics.json", "result.json", "model.pt")
# Where a run writes through ``files.atomic_write``: the folders whose leftovers a start removes.
_OWN_PLACES = (".", "ckpt")


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
        self._found: set[str] = set()  # the RUN_FILES the folder held when this process took it
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

    def holds_run(self) -> bool:
        """Whether the folder holds a run worth keeping: a checkpoint or a result. ``config.yaml``, ``classes.json``
        and logs alone are what a start left that never saved a checkpoint (failed, or killed early)."""
        ckpt = self.path / "ckpt"
        checkpoint = ckpt.is_dir() and any(ckpt.glob("*.ckpt"))
        return checkpoint or any((self.path / m).exists() for m in _FINISHED_MARKERS)

    def other_files(self) -> list[str]:
        """What the folder holds besides a run's files, its lock and temporary files."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in RUN_FILES and p.name != ".lock" and not is_temp_name(p.name))

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
        self._check_place()
        self._created = not self.path.exists()
        output_folder(self.path, "--out")
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
        self._found = {name for name in RUN_FILES if (self.path / name).exists()}
        self.removed_temp = [p for place in _OWN_PLACES for p in remove_temp_files(self.path / place)]
        return self

    def _check_place(self) -> None:
        """Refuse, before anything is written there, a folder that no run may use."""
        resolved = self.path.resolve()
        own = "choose a folder of its own (e.g. runs/NAME)"
        if resolved == Path(resolved.anchor):
            raise RunFolderError(f"--out {self.path} is the root of the file system: a run never writes there; {own}")
        if resolved == _home():
            raise RunFolderError(f"--out {self.path} is the home folder: a run never writes there; {own}")
        if self.existing_ok or self.overwrite:
            return
        other = self.other_files()
        if other and not self.existing_run_files():
            shown = ", ".join(other[:6]) + (", ..." if len(other) > 6 else "")
            raise RunFolderError(f"{self.path} is not empty and holds no run ({shown}): write the run to a new or "
                                 "empty folder, or pass --overwrite to write it here anyway (only a run's own files "
                                 "are ever replaced)")

    def _remove(self, names: tuple[str, ...]) -> None:
        for name in names:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _check_start(self) -> None:
        if self.resume_arg is not None or self.existing_ok:
            return  # continuing a run here is what --resume asks for (the checkpoint is checked by the tool)
        existing = self.existing_run_files()
        if not existing:
            return
        if self.overwrite:
            self._remove(RUN_FILES)
            print(f"--overwrite: removed the previous run's files from {self.path}: {', '.join(existing[:8])}",
                  flush=True)
            return
        if not self.holds_run():
            self._remove(RUN_FILES)
            print(f"replacing the leftovers of a start that never saved a checkpoint in {self.path}: "
                  f"{', '.join(existing[:8])}", flush=True)
            return
        state = "a finished run" if any(m in existing for m in _FINISHED_MARKERS) else "an unfinished run"
        shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
        raise RunFolderError(f"{self.path} already holds {state} ({shown}); continue it with --resume last, write "
                             "this run to another --out, or replace it with --overwrite")

    def close(self, failed: bool = False) -> None:
        """Release the lock. ``failed``: the run stopped with an error; if it never saved a checkpoint, the files it
        wrote (``config.yaml``, ``classes.json``, logs) are removed, so the next start is not refused for them."""
        if self._fd is None:
            return
        if failed and not self.existing_ok and not self.holds_run():
            with contextlib.suppress(OSError):
                self._remove(tuple(name for name in RUN_FILES if name not in self._found))
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

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no HOME and no password entry
        return None


def write_config(cfg: Config, folder: str | Path) -> Path:
    """``<folder>/config.yaml`` (the resolved config: ``--print-config`` shows the same), announced in one line."""
    path = save_config(cfg, Path(folder) / "config.yaml")
    print(f"config: {path}", flush=True)
    return path
