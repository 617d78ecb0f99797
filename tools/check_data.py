"""Scan a dataset folder (COCO, VOC, ImageFolder or CIFAR-10, detected) or a config's dataset; list every problem
by file.

The tool lives in ``mnv2_vision/commands/check_data.py``; installed, it is also
the ``mnv2-check-data`` command.
"""
from mnv2_vision.commands.check_data import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
