"""The class list of the formats whose files do not carry one (VOC XML, LabelMe, Label Studio): ``labels.txt`` in
the dataset folder, one name a line (labelme2coco's ``__ignore__`` and ``_background_`` lines are skipped), fixes
the names and their order; without it, the names used anywhere in the dataset (every split, so that training and
validation share one label map), sorted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["LABELS_FILE", "read_label_list", "class_names", "write_label_list"]

LABELS_FILE = "labels.txt"
_SKIP = ("__ignore__", "_background_")


def read_label_list(root: Path) -> list[str] | None:
    """The names in ``<root>/labels.txt``, or None when there is no such file."""
    path = root / LABELS_FILE
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [n for n in names if n and n not in _SKIP]


def class_names(root: Path, used: Iterable[str]) -> list[str]:
    """``labels.txt``'s names, or the ``used`` ones sorted."""
    listed = read_label_list(root)
    return listed if listed is not None else sorted(set(used))


def write_label_list(root: Path, names: Iterable[str]) -> None:
    (root / LABELS_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
