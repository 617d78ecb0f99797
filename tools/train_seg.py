"""Train DeepLabv3-MobileNetV2 on a VOC-layout dataset.

    python tools/train_seg.py --cfg deeplabv3_voc                       # PASCAL VOC 2012 under data.root
    python tools/train_seg.py --cfg deeplabv3_shapes                    # built-in shapes data, CPU, minutes
    python tools/train_seg.py --cfg deeplabv3_voc --set optim.lr=0.005 --out runs/voc_lr005

Writes <out>/config.yaml, <out>/ckpt/{best-*.ckpt,last.ckpt} (best by val/miou), CSV + TensorBoard logs and
<out>/model.pt (the best checkpoint's network as a plain state dict).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

# Python puts this script's folder first on sys.path; tools/profile.py would then shadow the standard library's
# `profile` (imported by torch via cProfile). Search the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from mnv2_vision.checkpoint import build_from_config, load_checkpoint  # noqa: E402
from mnv2_vision.cli import base_parser, guarded, setup_run  # noqa: E402
from mnv2_vision.config import ConfigError, save_config, to_dict  # noqa: E402
from mnv2_vision.lit.common import make_trainer  # noqa: E402
from mnv2_vision.lit.segmentation import (SegmentationModule, build_seg_datamodule, resolve_num_classes,  # noqa: E402
                                          segmentation_class_names)


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg, out_dir = setup_run(args)
    if cfg.task != "segmentation":
        raise ConfigError(f"config {args.cfg!r} has task={cfg.task!r}; train_seg.py needs task: segmentation")
    cfg = resolve_num_classes(cfg)  # the checkpoint must rebuild the same head without the dataset
    save_config(cfg, out_dir / "config.yaml")
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_seg_datamodule(cfg)
    names = segmentation_class_names(cfg)
    model = build_from_config(cfg)
    module = SegmentationModule(model, num_classes=len(names), optim=cfg.optim, sched=cfg.sched, class_names=names,
                                label_smoothing=cfg.loss.label_smoothing, config=to_dict(cfg))
    trainer = make_trainer(cfg, out_dir, monitor="val/miou", mode="max")
    resume = str(out_dir / "ckpt" / "last.ckpt") if args.resume == "last" else args.resume
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)

    last = out_dir / "ckpt" / "last.ckpt"
    best = trainer.checkpoint_callback.best_model_path or (str(last) if last.is_file() else "")
    score = trainer.checkpoint_callback.best_model_score
    miou = float(score) if score is not None else float("nan")
    result = {"best_ckpt": best, "val_miou": miou, "out_dir": str(out_dir)}
    if not trainer.is_global_zero:  # under DDP only rank 0 writes files and prints
        return result
    if best:
        _, state, _ = load_checkpoint(best)
        torch.save(state, out_dir / "model.pt")
    print(f"best val/miou={miou:.4f} checkpoint={best}")
    return result


if __name__ == "__main__":
    main()
