"""Train DeepLabv3-MobileNetV2 on a VOC-layout dataset.

    python tools/train_seg.py --cfg deeplabv3_voc                       # PASCAL VOC 2012 under data.root
    python tools/train_seg.py --cfg deeplabv3_shapes                    # built-in shapes data, CPU, minutes
    python tools/train_seg.py --cfg deeplabv3_voc --set optim.lr=0.005 --out runs/voc_lr005

Writes <out>/config.yaml, <out>/ckpt/{best-*.ckpt,last.ckpt} (best by val/miou), CSV + TensorBoard logs and
<out>/model.pt (the best checkpoint's network as a plain state dict).
"""
from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl

from mnv2_vision.checkpoint import build_from_config, load_checkpoint
from mnv2_vision.commands.cli import base_parser, exit_status, guarded, setup_run
from mnv2_vision.lit.checkpointing import inspect_resume
from mnv2_vision.lit.runfolder import write_config
from mnv2_vision.config import to_dict
from mnv2_vision.data import pin_root
from mnv2_vision.files import save_torch, write_json
from mnv2_vision.lit.common import make_trainer, set_num_threads
from mnv2_vision.data.classes import segmentation_class_names
from mnv2_vision.lit.segmentation import SegmentationModule, build_seg_datamodule, resolve_num_classes


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg, run = setup_run(args, task="segmentation")
    with run:
        cfg = resolve_num_classes(cfg)  # the checkpoint must rebuild the same head without the dataset
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_seg_datamodule(cfg)
        datamodule.setup("fit")  # a missing or empty dataset fails here, before anything is written
        cfg = pin_root(cfg)
        resume = inspect_resume(run.resume_path, cfg, run.path) if args.resume else None
        write_config(cfg, run.path)
        print(f"data: {datamodule.train_dataset()} / {datamodule.val_dataset()}", flush=True)
        set_num_threads(cfg)

        names = segmentation_class_names(cfg)
        write_json(run.path / "classes.json", {"class_names": list(names)})
        model = build_from_config(cfg)
        module = SegmentationModule(model, num_classes=len(names), optim=cfg.optim, sched=cfg.sched,
                                    class_names=names, label_smoothing=cfg.loss.label_smoothing, config=to_dict(cfg))
        trainer = make_trainer(cfg, run.path, monitor="val/miou", mode="max",
                               resume_from=resume.log_step if resume else None)
        if resume and resume.finished:
            print(f"{resume.path} finished training: redoing the result files", flush=True)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume.path) if resume else None)

        last = run.path / "ckpt" / "last.ckpt"
        best = trainer.checkpoint_callback.best_model_path or (str(last) if last.is_file() else "")
        score = trainer.checkpoint_callback.best_model_score
        miou = float(score) if score is not None else float("nan")
        result = {"best_ckpt": best, "val_miou": miou, "out_dir": str(run.path),
                  "num_images": module.val_num_images, "skipped_images": module.val_skipped}
        if not trainer.is_global_zero:  # under DDP only rank 0 writes files and prints
            return result
        if best:
            _, state, _ = load_checkpoint(best)
            save_torch(state, run.path / "model.pt")
        write_json(run.path / "final_metrics.json", result)
        print(f"best val/miou={miou:.4f} checkpoint={best} ({module.val_num_images} val images"
              f"{module.skipped_note()})")
        print(f"wrote {run.path / 'model.pt'} and {run.path / 'final_metrics.json'}")
        return result


def console() -> int:
    """The ``mnv2-train-seg`` command and ``python tools/train_seg.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
