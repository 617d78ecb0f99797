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

import math
import time
from typing import Sequence

import pytorch_lightning as pl

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.commands.cli import base_parser, exit_status, guarded, setup_run
from mnv2_vision.lit.checkpointing import inspect_resume
from mnv2_vision.lit.runfolder import write_config
from mnv2_vision.config import to_dict
from mnv2_vision.data import pin_root
from mnv2_vision.eval.coco import format_coco_stats
from mnv2_vision.files import save_torch, write_json
from mnv2_vision.lit.common import make_trainer, set_num_threads
from mnv2_vision.lit.detection import (DetectionModule, build_det_datamodule, check_annotations,
                                       resolve_det_classes)


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    t0 = time.time()
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg, run = setup_run(args, task="detection")
    with run:
        pl.seed_everything(cfg.seed, workers=True)
        dm = build_det_datamodule(cfg)
        cfg = pin_root(resolve_det_classes(cfg, dm.num_classes))  # the checkpoint must rebuild the same head
        check_annotations(dm)
        resume = inspect_resume(run.resume_path, cfg, run.path) if args.resume else None
        write_config(cfg, run.path)
        write_json(run.path / "classes.json", {"category_ids": dm.category_ids, "category_names": dm.category_names})
        print(f"data: {dm.train_dataset} / {dm.val_dataset}", flush=True)
        set_num_threads(cfg)

        model = build_from_config(cfg)
        module = DetectionModule(model, optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval, loss=cfg.loss,
                                 category_ids=dm.category_ids, category_names=dm.category_names, config=to_dict(cfg))
        trainer = make_trainer(cfg, run.path, monitor="val/map", mode="max",
                               resume_from=resume.log_step if resume else None)
        if resume and resume.finished:
            print(f"{resume.path} finished training: redoing the final evaluation and the result files", flush=True)
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume.path) if resume else None)

        # Final numbers from the best checkpoint over the whole validation set.
        best = trainer.checkpoint_callback.best_model_path
        trainer.validate(module, datamodule=dm, ckpt_path=best or None, verbose=False)
        summary = module.coco_summary  # the same on every rank: the evaluation gathers all ranks' detections
        names = dict(zip(dm.category_ids, dm.category_names))
        wall = time.time() - t0
        per_class = {names[c]: (None if math.isnan(ap) else ap) for c, ap in summary["per_class"].items()}
        result = {"checkpoint": best, "split": dm.val_split, "stats": summary["stats"], "map": summary["map"],
                  "map50": summary["map50"], "per_class": per_class, "num_images": len(module.val_image_ids),
                  "skipped_images": module.val_skipped, "wall_time_s": wall}
        if not trainer.is_global_zero:  # under DDP only rank 0 writes files and prints the report
            return result
        save_torch(module.model.state_dict(), run.path / "model.pt")
        print(f"\nCOCO bbox evaluation of {best or 'the final model'} on {dm.val_split} "
              f"({len(module.val_image_ids)} images{module.skipped_note()}):")
        print(format_coco_stats(summary, names))
        print(f"mAP@[.5:.95] = {summary['map']:.4f}  mAP@.5 = {summary['map50']:.4f}  (wall time {wall:.0f} s)")
        write_json(run.path / "final_metrics.json", result)
        print(f"wrote {run.path / 'model.pt'} and {run.path / 'final_metrics.json'}")
        return result


def console() -> int:
    """The ``mnv2-train-det`` command and ``python tools/train_det.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
