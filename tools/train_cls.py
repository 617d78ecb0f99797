"""Train an image classifier (MobileNetV2 / MobileNetV1) on ImageFolder, CIFAR-10 or Flowers102 data.

The tool lives in ``mnv2_vision/commands/train_cls.py``; installed, it is also the ``mnv2-train-cls`` command.
"""
from mnv2_vision.commands.train_cls import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
