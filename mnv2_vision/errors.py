"""The errors a user can cause, each with the exit status the tools report for it.

The tools (``cli.guarded``) print such an error as one line naming the file or key, without a traceback (``--debug``
shows it). Anything else is a bug and keeps its traceback. The classes also derive from the built-in type a caller
would catch without knowing ours (``ValueError``, ``RuntimeError``).
"""
from __future__ import annotations

import signal

__all__ = ["UserError", "CheckpointError", "DataError", "RunFolderError", "RunInterrupted"]


class UserError(Exception):
    """A mistake in what the user gave (config, file, folder): exit status 2."""

    exit_code = 2


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be used as asked: unreadable, truncated, of another task or model."""


class DataError(UserError, ValueError):
    """The data itself is unusable (no usable image, no annotations): exit status 1, as ``check_data`` uses."""

    exit_code = 1


class RunFolderError(UserError):
    """The run folder is in use by another process, or holds another run that would be mixed with this one."""


class RunInterrupted(Exception):
    """Training was stopped by a signal after saving ``last.ckpt``; exit status 128 + the signal's number (143 for
    SIGTERM, 130 for SIGINT), the shell's convention, so scripts and CI never count a stopped run as passed."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name
