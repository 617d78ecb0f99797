"""Evaluate a classifier checkpoint: top-1, top-5, per-class accuracy and a confusion-matrix PNG.

The tool lives in ``mnv2_vision/commands/eval_cls.py``; installed, it is also the ``mnv2-eval-cls`` command.
"""
from mnv2_vision.commands.eval_cls import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
