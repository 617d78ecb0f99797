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
from mnv2_vision.commands.cli import training_command

# main(argv) → the result dict (Python callers, tests); console() → the mnv2-train-cls command's exit status
main, console = training_command("classification", __doc__.splitlines()[0], download=True)

if __name__ == "__main__":
    raise SystemExit(console())
