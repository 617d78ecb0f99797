"""Train an image classifier (MobileNetV2 / MobileNetV1) on ImageFolder, CIFAR-10 or Flowers102 data.

    python tools/train_cls.py --cfg mobilenet_v2_shapes                   # built-in shapes, CPU, a few minutes
    python tools/train_cls.py --cfg mobilenet_v2_cifar10 --download       # fetches CIFAR-10 into data.root first
    python tools/train_cls.py --cfg mobilenet_v2_imagenet --set data.root=/data/imagenet
    python tools/train_cls.py --cfg mobilenet_v2_imagenet --resume last   # continue runs/mobilenet_v2_imagenet

Outputs in ``--out`` (default ``runs/<config>``): ``config.yaml``, ``ckpt/best-*.ckpt`` (best ``val/top1``) and
``ckpt/last.ckpt`` (full Lightning checkpoints carrying the config and class names), ``model.pt`` (plain state dict
of the best model), CSV/TensorBoard logs and ``result.json`` (best/final top-1, per-epoch history, wall time).
A checkpoint's backbone loads into the detection and segmentation builders with ``model.pretrained=<ckpt>``.
"""
from __future__ import annotations

from typing import Sequence

from mnv2_vision.commands.cli import base_parser, exit_status, guarded, run_training


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--download", action="store_true",
                        help="let torchvision download CIFAR-10 / Flowers102 into data.root (needs internet)")
    args = parser.parse_args(argv)
    return run_training(args, task="classification", download=args.download)


def console() -> int:
    """The ``mnv2-train-cls`` command and ``python tools/train_cls.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
