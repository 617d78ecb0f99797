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
from mnv2_vision.data.classes import multitask_seg_class_names
from mnv2_vision.lit.multitask import MultiTaskModule, build_mt_datamodule, resolve_mt_classes


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    t0 = time.time()
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg, run = setup_run(args, task="multitask")
    with run:
        pl.seed_everything(cfg.seed, workers=True)
        dm = build_mt_datamodule(cfg)
        seg_names = multitask_seg_class_names(cfg)
        cfg = pin_root(resolve_mt_classes(cfg, dm.num_classes, seg_names))  # the checkpoint rebuilds the same heads
        dm.setup("fit")  # a missing or empty dataset fails here, before anything is written
        resume = inspect_resume(run.resume_path, cfg, run.path) if args.resume else None
        write_config(cfg, run.path)
        write_json(run.path / "classes.json", {"category_ids": dm.category_ids, "category_names": dm.category_names,
                                               "class_names": list(seg_names)})
        print(f"data: {dm.train_dataset} / {dm.val_dataset}", flush=True)
        set_num_threads(cfg)

        model = build_from_config(cfg)
        module = MultiTaskModule(model, optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval, loss=cfg.loss,
                                 category_ids=dm.category_ids, category_names=dm.category_names,
                                 seg_class_names=seg_names, config=to_dict(cfg))
        trainer = make_trainer(cfg, run.path, monitor="val/score", mode="max",
                               resume_from=resume.log_step if resume else None)
        if resume and resume.finished:
            print(f"{resume.path} finished training: redoing the final evaluation and the result files", flush=True)
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume.path) if resume else None)

        # Final numbers from the best checkpoint over the whole validation split (both heads, one pass).
        best = trainer.checkpoint_callback.best_model_path
        trainer.validate(module, datamodule=dm, ckpt_path=best or None, verbose=False)
        coco, seg = module.coco_summary, module.seg_metrics
        names = dict(zip(dm.category_ids, dm.category_names))
        wall = time.time() - t0
        result = {"checkpoint": best, "map": coco["map"], "map50": coco["map50"], "stats": coco["stats"],
                  "per_class_ap": {names[c]: (None if math.isnan(ap) else ap) for c, ap in coco["per_class"].items()},
                  "miou": seg["miou"], "pixel_acc": seg["pixel_acc"],
                  "per_class_iou": {k: (None if math.isnan(v) else v) for k, v in seg["per_class"].items()},
                  "num_images": len(module.val_image_ids), "num_seg_images": module.val_num_seg_images,
                  "skipped_images": module.val_skipped, "wall_time_s": wall}
        if not trainer.is_global_zero:  # under DDP only rank 0 writes files and prints the report
            return result
        save_torch(module.model.state_dict(), run.path / "model.pt")
        print(f"\nevaluation of {best or 'the final model'} on {cfg.data.val_split} ({len(module.val_image_ids)} "
              f"images with boxes, {module.val_num_seg_images} with masks{module.skipped_note()}):")
        print(format_coco_stats(coco, names))
        print(f"mAP@[.5:.95] = {coco['map']:.4f}  mAP@.5 = {coco['map50']:.4f}  mIoU = {seg['miou']:.4f}  "
              f"pixel accuracy = {seg['pixel_acc']:.4f}  (wall time {wall:.0f} s)")
        write_json(run.path / "final_metrics.json", result)
        print(f"wrote {run.path / 'model.pt'} and {run.path / 'final_metrics.json'}")
        return result


def console() -> int:
    """The ``mnv2-train-multitask`` command and ``python tools/train_multitask.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
