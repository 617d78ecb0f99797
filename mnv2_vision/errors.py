"""The errors a user can cause, each with the exit status the tools report for it.

The tools (``cli.guarded``) print such an error as one line naming the file or key, without a traceback (``--debug``
shows it). Anything else is a bug and keeps its traceback. The classes also derive from the built-in type a caller
would catch without knowing ours (``ValueError``, ``RuntimeError``).

An exported model runs through ``mnv2_runtime`` (which imports nothing of this package): its ``ModelError`` for a bad
model file is what ``CheckpointError`` derives from, and ``load`` gives it to the caller as a ``CheckpointError``.
"""
from __future__ import annotations

import os

from mnv2_runtime.errors import ModelError

__all__ = ["UserError", "ModelError", "CheckpointError", "DataError", "DatasetError", "ChecksumError", "RunFolderError"]


class UserError(Exception):
    """A mistake in what the user gave (config, file, folder): exit status 2."""

    exit_code = 2


class CheckpointError(UserError, ModelError):
    """A checkpoint, weights or exported model file that cannot be used as asked: unreadable, truncated, of another
    task or model, bad metadata (a ``ValueError``, and ``mnv2_runtime``'s ``ModelError``)."""


class DataError(UserError, ValueError):
    """The data itself is unusable (no usable image, no annotations): exit status 1, as ``check_data`` uses."""

    exit_code = 1


class DatasetError(DataError):
    """A dataset's download, archive or source file (``tools/prepare_data.py``) is missing or not what it should be;
    the message names it, and the tool adds where the archives come from."""


class ChecksumError(DatasetError):
    """An archive whose md5 is not the published one: damaged, truncated or another file."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, hint: str = ""):
        super().__init__(f"checksum mismatch for {path}: expected md5 {expected}, got {actual}{hint}")
        self.path, self.expected, self.actual = path, expected, actual


class RunFolderError(UserError):
    """The run folder is in use by another process, or holds another run that would be mixed with this one."""
