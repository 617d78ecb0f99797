"""Train DeepLabv3-MobileNetV2 on a VOC-layout dataset.

The tool lives in ``mnv2_vision/commands/train_seg.py``; installed, it is also the ``mnv2-train-seg`` command.
"""
from mnv2_vision.commands.train_seg import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
