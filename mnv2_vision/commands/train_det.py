"""Train SSDLite-MobileNetV2 on a COCO-layout dataset; evaluate the best checkpoint with pycocotools at the end.

    python tools/train_det.py --cfg ssdlite_shapes                      # built-in shapes, CPU demo (make demo)
    python tools/train_det.py --cfg ssdlite_coco                        # COCO 2017 under data/coco
    python tools/train_det.py --cfg ssdlite_coco --set data.root=/data/coco optim.lr=0.1
    python tools/train_det.py --cfg ssdlite_coco --resume last          # continue runs/ssdlite_coco

Outputs in ``--out`` (default ``runs/<config>``): ``config.yaml``, ``ckpt/best-*.ckpt`` (best ``val/map``) and
``ckpt/last.ckpt`` (full Lightning checkpoints carrying the config and label map), ``model.pt`` (plain state dict of
the best model), CSV/TensorBoard logs, and ``final_metrics.json`` (the 12 COCO stats and per-class AP).
"""
from __future__ import annotations

from typing import Sequence

from mnv2_vision.commands.cli import base_parser, exit_status, guarded, run_training


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_training(args, task="detection")


def console() -> int:
    """The ``mnv2-train-det`` command and ``python tools/train_det.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
