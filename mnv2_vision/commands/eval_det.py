"""Evaluate a detection checkpoint with pycocotools: the 12 COCO stats, per-class AP, and a COCO results JSON.

    python tools/eval_det.py --ckpt runs/ssdlite_coco/ckpt/last.ckpt
    python tools/eval_det.py --ckpt CKPT --set data.root=/data/coco --set data.val_split=val2017
    python tools/eval_det.py --ckpt CKPT --set eval.score_thresh=0.01 --out runs/eval

The model, label map and data settings come from the checkpoint; ``--set`` changes them for this evaluation (data
location, split, post-processing). Writes ``<out>/detections_<split>.json`` (COCO results format: image_id,
category_id, bbox xywh, score), ``<out>/metrics_<split>.json`` and ``<out>/config.yaml``; the printed mAP is
pycocotools' on exactly that JSON. An image that cannot be read is left out and listed; the others are scored, and
the command exits with status 1 (the rule of every tool that scores images, ``mnv2_vision/commands/cli.py``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from mnv2_vision.checkpoint import load_model
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import load_config, save_config
from mnv2_vision.errors import CheckpointError
from mnv2_vision.eval.coco import format_coco_stats, save_results
from mnv2_vision.files import output_folder, write_json
from mnv2_vision.lit.common import evaluation_trainer
from mnv2_vision.lit.detection import DetectionModule, build_det_datamodule, categories_from


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by tools/train_det.py or train_multitask.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the checkpoint's config (repeatable), e.g. data.val_split=val2017")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint's run folder>/eval)")
    p.add_argument("--pr-plot", action="store_true", help="also write <out>/pr_<split>.png (precision-recall curves)")
    p.add_argument("--fuse", action="store_true",
                   help="fused inference: BatchNorm folded into the convs, channels-last, inference mode")
    args = add_debug_flag(p).parse_args(argv)

    ckpt_cfg, model, hparams = load_model(args.ckpt)
    if args.fuse:
        from mnv2_vision.deploy.fuse import fuse_for_inference

        model = fuse_for_inference(model)
    if ckpt_cfg.task not in ("detection", "multitask"):  # the pair's boxes are evaluated as a detector's
        raise CheckpointError(f"{args.ckpt} holds a {ckpt_cfg.task!r} model; use the matching eval tool")
    ckpt_path = Path(args.ckpt)
    out_dir = output_folder(Path(args.out) if args.out else ckpt_path.resolve().parent.parent / "eval")
    save_config(ckpt_cfg, out_dir / "config.yaml")
    cfg = load_config(out_dir / "config.yaml", args.set)  # the checkpoint's config < --set
    save_config(cfg, out_dir / "config.yaml")
    category_ids, category_names = categories_from(hparams)

    dm = build_det_datamodule(cfg, category_ids=category_ids)
    dataset = dm.val_dataset
    print(f"evaluating {ckpt_path} on {dataset}", flush=True)
    module = DetectionModule(model, optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval, loss=cfg.loss,
                             category_ids=category_ids, category_names=category_names, config=hparams["config"])
    evaluation_trainer(cfg).validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    summary = module.coco_summary

    split = cfg.data.val_split
    results_path = save_results(module.coco_results, out_dir / f"detections_{split}.json")
    names = dict(zip(category_ids, category_names))
    print(f"COCO bbox evaluation on {split} ({len(module.val_image_ids)} images, {len(module.coco_results)} "
          f"detections{module.skipped_note()}):")
    print(format_coco_stats(summary, names))
    print(f"mAP@[.5:.95] = {summary['map']:.4f}  mAP@.5 = {summary['map50']:.4f}")
    per_class = {names[c]: (None if math.isnan(ap) else ap) for c, ap in summary["per_class"].items()}
    metrics = {"checkpoint": str(ckpt_path), "split": split, "results": str(results_path),
               "stats": summary["stats"], "map": summary["map"], "map50": summary["map50"], "per_class": per_class,
               "num_images": len(module.val_image_ids), "skipped_images": module.val_skipped}
    written = [out_dir / "config.yaml", results_path, out_dir / f"metrics_{split}.json"]
    if args.pr_plot:
        from mnv2_vision.viz import plot_pr_curves

        metrics["pr_plot"] = plot_pr_curves(summary["pr"], names, str(out_dir / f"pr_{split}.png"), title=split)
        written.append(Path(metrics["pr_plot"]))
    write_json(out_dir / f"metrics_{split}.json", metrics)
    print("wrote " + ", ".join(str(p) for p in written))
    return metrics


def console() -> int:
    """The ``mnv2-eval-det`` command and ``python tools/eval_det.py``: ``main`` with its exit status."""
    return exit_status(main(), scored=True)  # skipped images: 1 (commands/cli.py, the rule for every scoring tool)


if __name__ == "__main__":
    raise SystemExit(console())
