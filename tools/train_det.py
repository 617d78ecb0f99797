"""Train SSDLite-MobileNetV2 on a COCO-layout dataset; evaluate the best checkpoint with pycocotools at the end.

The tool lives in ``mnv2_vision/commands/train_det.py``; installed, it is also the ``mnv2-train-det`` command.
"""
from mnv2_vision.commands.train_det import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
