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
from mnv2_vision.commands.cli import training_command

# main(argv) → the result dict (Python callers, tests); console() → the mnv2-train-multitask command's exit status
main, console = training_command("multitask", __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(console())
