"""The errors the runtime raises for what it is given, each one line naming the file (and the key).

``ModelError`` is a model file that cannot be used: unreadable, truncated, random bytes, a graph its runtime cannot
build, metadata that is missing or wrong (issue #23's rules, ``metadata``). ``MissingRuntime`` is a format whose
inference package is not installed: it names the package and the extra that installs it. An image that cannot be
read is a ``ValueError`` (``FileNotFoundError`` when it is missing) naming the file, as the training pipelines and
``mnv2_vision``'s predictor raise it.
"""
from __future__ import annotations

__all__ = ["ModelError", "MissingRuntime"]


class ModelError(ValueError):
    """An exported model (or a run folder's ``classes.json``) that cannot be used as it is: the message is one line
    naming the file, the metadata key where one is at fault, and what to do."""


class MissingRuntime(ImportError):
    """The package that runs a model format is not installed.

    Attributes:
        path: the model file.
        format: the format's name (``"onnx"``, ``"litert"``, ``"openvino"``).
        package: the import name that is missing.
        extra: the ``mnv2_runtime`` extra that installs it (``None``: a base dependency).
    """

    def __init__(self, path: str, format: str, package: str, extra: str | None) -> None:
        self.path, self.format, self.package, self.extra = str(path), format, package, extra
        install = f"pip install 'mnv2_runtime[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"running {path} needs {package}, which is not installed: {install}", name=package)
