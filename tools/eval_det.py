"""Evaluate a detection checkpoint with pycocotools: the 12 COCO stats, per-class AP, and a COCO results JSON.

The tool lives in ``mnv2_vision/commands/eval_det.py``; installed, it is also the ``mnv2-eval-det`` command.
"""
from mnv2_vision.commands.eval_det import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
