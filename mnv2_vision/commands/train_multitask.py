"""Train the multi-task pair (SSDLite boxes + DeepLab masks on one MobileNetV2 pass); evaluate the best checkpoint.

    python tools/train_multitask.py --cfg multitask_shapes              # built-in shapes, both labels per scene (CPU)
    python tools/train_multitask.py --cfg multitask_coco                # COCO 2017: boxes + masks in VOC classes
    python tools/train_multitask.py --cfg multitask_coco --set data.masks=null --set data.seg_root=/data/VOCdevkit
    python tools/train_multitask.py --cfg multitask_shapes --resume last

Outputs in ``--out`` (default ``runs/<config>``): ``config.yaml``, ``ckpt/best-*.ckpt`` (best ``val/score`` = (mAP +
mIoU) / 2) and ``ckpt/last.ckpt`` (carrying the config, the label map and the segmentation class names),
``model.pt`` (plain state dict of the best model), CSV/TensorBoard logs, and ``final_metrics.json`` (the 12 COCO
stats, per-class AP, mIoU and per-class IoU of the best checkpoint).
"""
from __future__ import annotations

from typing import Sequence

from mnv2_vision.commands.cli import base_parser, exit_status, guarded, run_training


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_training(args, task="multitask")


def console() -> int:
    """The ``mnv2-train-multitask`` command and ``python tools/train_multitask.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
