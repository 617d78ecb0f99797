"""Train DeepLabv3-MobileNetV2 on a VOC-layout dataset.

    python tools/train_seg.py --cfg deeplabv3_voc                       # PASCAL VOC 2012 under data.root
    python tools/train_seg.py --cfg deeplabv3_shapes                    # built-in shapes data, CPU, minutes
    python tools/train_seg.py --cfg deeplabv3_voc --set optim.lr=0.005 --out runs/voc_lr005

Writes <out>/config.yaml, <out>/ckpt/{best-*.ckpt,last.ckpt} (best by val/miou), CSV + TensorBoard logs and
<out>/model.pt (the best checkpoint's network as a plain state dict).
"""
from __future__ import annotations

from typing import Sequence

from mnv2_vision.commands.cli import base_parser, exit_status, guarded, run_training


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_training(args, task="segmentation")


def console() -> int:
    """The ``mnv2-train-seg`` command and ``python tools/train_seg.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
