"""Train DeepLabv3-MobileNetV2 on a VOC-layout dataset.

The tool lives in ``mnv2_vision/commands/train_seg.py``; installed, it is also the ``mnv2-train-seg`` command.
"""
from mnv2_vision.commands.train_seg import main

if __name__ == "__main__":
    main()
