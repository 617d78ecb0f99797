"""Train the multi-task pair (SSDLite boxes + DeepLab masks on one MobileNetV2 pass); evaluate the best checkpoint.

The tool lives in ``mnv2_vision/commands/train_multitask.py``; installed, it is also
the ``mnv2-train-multitask`` command.
"""
from mnv2_vision.commands.train_multitask import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
