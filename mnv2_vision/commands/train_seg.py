"""Train DeepLabv3-MobileNetV2 on a VOC-layout dataset.

    python tools/train_seg.py --cfg deeplabv3_voc                       # PASCAL VOC 2012 under data.root
    python tools/train_seg.py --cfg deeplabv3_shapes                    # built-in shapes data, CPU, minutes
    python tools/train_seg.py --cfg deeplabv3_voc --set optim.lr=0.005 --out runs/voc_lr005

Writes <out>/config.yaml, <out>/ckpt/{best-*.ckpt,last.ckpt} (best by val/miou), CSV + TensorBoard logs and
<out>/model.pt (the best checkpoint's network as a plain state dict).
"""
from mnv2_vision.commands.cli import training_command

# main(argv) → the result dict (Python callers, tests); console() → the mnv2-train-seg command's exit status
main, console = training_command("segmentation", __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(console())
