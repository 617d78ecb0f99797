"""Convert detection labels between COCO and the labelling tools' formats (YOLO, VOC XML, CVAT, LabelMe, Label
Studio).

The tool lives in ``mnv2_vision/commands/convert_data.py``; installed, it is also the ``mnv2-convert-data`` command.
"""
from mnv2_vision.commands.convert_data import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
