"""Evaluate a segmentation checkpoint on its validation split: mIoU, pixel accuracy and per-class IoU.

The tool lives in ``mnv2_vision/commands/eval_seg.py``; installed, it is also the ``mnv2-eval-seg`` command.
"""
from mnv2_vision.commands.eval_seg import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
