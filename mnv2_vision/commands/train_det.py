"""Train SSDLite-MobileNetV2 on a COCO-layout dataset; evaluate the best checkpoint with pycocotools at the end.

    python tools/train_det.py --cfg ssdlite_shapes                      # built-in shapes, CPU demo (make demo)
    python tools/train_det.py --cfg ssdlite_coco                        # COCO 2017 under data/coco
    python tools/train_det.py --cfg ssdlite_coco --set data.root=/data/coco optim.lr=0.1
    python tools/train_det.py --cfg ssdlite_coco --resume last          # continue runs/ssdlite_coco

Outputs in ``--out`` (default ``runs/<config>``): ``config.yaml``, ``ckpt/best-*.ckpt`` (best ``val/map``) and
``ckpt/last.ckpt`` (full Lightning checkpoints carrying the config and label map), ``model.pt`` (plain state dict of
the best model), CSV/TensorBoard logs, and ``final_metrics.json`` (the 12 COCO stats and per-class AP).
"""
from mnv2_vision.commands.cli import training_command

# main(argv) → the result dict (Python callers, tests); console() → the mnv2-train-det command's exit status
main, console = training_command("detection", __doc__.splitlines()[0])

if __name__ == "__main__":
    raise SystemExit(console())
