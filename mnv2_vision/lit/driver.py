"""One training run of any task: ``train(cfg, run_dir)``, what every train command, ``ablate`` and
``compare_multitask`` call.

The steps, the same for every task:

1. seed; the data module, the classes taken from the data, ``data.root`` pinned, the data checked;
2. the ``--resume`` checkpoint checked. Nothing is written before this point: a start that fails leaves the folder
   as it was (and ``RunFolder`` removes what a failed start wrote later, ``tests/test_faults_runfolder.py``);
3. ``config.yaml``, ``classes.json``, the ``data:`` and ``threads:`` lines;
4. the network (``model.pretrained`` loaded, ``finetune.freeze`` applied, ``finetune_report.json`` written:
   ``lit/finetune.py``), its Lightning module, the Trainer (``make_trainer``); fit;
5. detection and multi-task: the final evaluation of the best checkpoint over the whole validation split;
6. ``model.pt`` (the best checkpoint's weights; else ``last.ckpt``'s; else the final ones), ``final_metrics.json``
   (classification: ``result.json``), the report, and the commands to run next with this run's paths.

What differs between the tasks (data module, class resolution, ``classes.json``, Lightning module, the metric the
best checkpoint follows, the final evaluation, result keys and report lines) is in ``TaskParts`` and the
``_<task>_result`` functions, chosen with a plain if/elif on ``cfg.task``.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
from torch import nn

from ..checkpoint import build_from_config, load_checkpoint
from ..config import Config, ConfigError, to_dict
from ..data import pin_root
from ..data.classes import multitask_seg_class_names, segmentation_class_names
from ..eval.coco import format_coco_stats
from ..files import save_torch, write_json
from ..models.weights import collect_reports
from .checkpointing import inspect_resume
from .classification import ClassificationModule, build_cls_datamodule, resolve_cls_classes
from .common import make_trainer, set_num_threads
from .detection import DetectionModule, build_det_datamodule, check_annotations, resolve_det_classes
from .finetune import format_report, start_report
from .multitask import MultiTaskModule, build_mt_datamodule, resolve_mt_classes
from .runfolder import write_config
from .segmentation import SegmentationModule, build_seg_datamodule, resolve_num_classes

__all__ = ["train", "TaskParts", "task_parts"]


@dataclasses.dataclass
class TaskParts:
    """What one task's training run needs besides the steps every run shares.

    Attributes:
        cfg: the config with the classes taken from the data and ``data.root`` pinned (what ``config.yaml`` and the
            checkpoints store, so they rebuild the same heads without the dataset).
        datamodule: the task's data module, its data already checked.
        data_line: the ``data: ...`` line printed once the data is known.
        classes: the content of ``classes.json`` (``None``: the task writes none).
        module: builds the Lightning module around the network.
        monitor: the validation metric the best checkpoint follows (higher is better).
        validate_best: run the final evaluation of the best checkpoint after training (the result then holds its
            full numbers, not only the monitored one).
        result_file: the summary written into the run folder.
        next_tools: the commands that take the checkpoint next, in the order the report suggests them.
        example_image: a validation image, for the ``predict`` example (``None`` when the dataset names no file).
    """

    cfg: Config
    datamodule: pl.LightningDataModule
    data_line: str
    classes: dict[str, Any] | None
    module: Callable[[nn.Module], pl.LightningModule]
    monitor: str
    validate_best: bool
    result_file: str = "final_metrics.json"
    next_tools: tuple[str, ...] = ()
    example_image: Path | None = None


def task_parts(cfg: Config, download: bool = False) -> TaskParts:
    """The parts of ``cfg.task``'s run; the data is read and checked here (a missing or empty dataset fails now).
    ``download``: let torchvision fetch CIFAR-10 / Flowers102 (classification)."""
    if cfg.task == "detection":
        return _detection_parts(cfg)
    if cfg.task == "segmentation":
        return _segmentation_parts(cfg)
    if cfg.task == "multitask":
        return _multitask_parts(cfg)
    if cfg.task == "classification":
        return _classification_parts(cfg, download)
    raise ConfigError(f"task {cfg.task!r}: training knows detection, segmentation, multitask and classification")


def _detection_parts(cfg: Config) -> TaskParts:
    dm = build_det_datamodule(cfg)
    cfg = pin_root(resolve_det_classes(cfg, dm.num_classes))
    check_annotations(dm)
    return TaskParts(
        cfg, dm, f"data: {dm.train_dataset} / {dm.val_dataset}",
        {"category_ids": dm.category_ids, "category_names": dm.category_names},
        lambda model: DetectionModule(model, optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval, loss=cfg.loss,
                                      category_ids=dm.category_ids, category_names=dm.category_names,
                                      config=to_dict(cfg)),
        monitor="val/map", validate_best=True, next_tools=("eval_det", "predict", "export"),
        example_image=_first_image(dm.val_dataset))


def _segmentation_parts(cfg: Config) -> TaskParts:
    cfg = resolve_num_classes(cfg)
    dm = build_seg_datamodule(cfg)
    dm.setup("fit")
    cfg = pin_root(cfg)
    names = segmentation_class_names(cfg)
    return TaskParts(
        cfg, dm, f"data: {dm.train_dataset()} / {dm.val_dataset()}", {"class_names": list(names)},
        lambda model: SegmentationModule(model, num_classes=len(names), optim=cfg.optim, sched=cfg.sched,
                                         class_names=names, label_smoothing=cfg.loss.label_smoothing,
                                         config=to_dict(cfg)),
        monitor="val/miou", validate_best=False, next_tools=("eval_seg", "predict", "export"),
        example_image=_first_image(dm.val_dataset()))


def _multitask_parts(cfg: Config) -> TaskParts:
    dm = build_mt_datamodule(cfg)
    seg_names = multitask_seg_class_names(cfg)
    cfg = pin_root(resolve_mt_classes(cfg, dm.num_classes, seg_names))
    dm.setup("fit")
    return TaskParts(
        cfg, dm, f"data: {dm.train_dataset} / {dm.val_dataset}",
        {"category_ids": dm.category_ids, "category_names": dm.category_names, "class_names": list(seg_names)},
        lambda model: MultiTaskModule(model, optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval, loss=cfg.loss,
                                      category_ids=dm.category_ids, category_names=dm.category_names,
                                      seg_class_names=seg_names, config=to_dict(cfg)),
        monitor="val/score", validate_best=True, next_tools=("eval_det", "eval_seg", "predict", "export"),
        example_image=_first_image(dm.val_dataset))


def _classification_parts(cfg: Config, download: bool) -> TaskParts:
    dm = build_cls_datamodule(cfg, download)
    cfg = pin_root(resolve_cls_classes(cfg, dm.num_classes))
    return TaskParts(
        cfg, dm, f"data: {len(dm.train_dataset)} train / {len(dm.val_dataset)} val images, {dm.num_classes} classes",
        None,  # the class names travel in the checkpoint (hyper_parameters["classes"]) and result.json
        lambda model: ClassificationModule(model, num_classes=dm.num_classes, optim=cfg.optim, sched=cfg.sched,
                                           label_smoothing=cfg.loss.label_smoothing, classes=dm.classes,
                                           config=to_dict(cfg)),
        monitor="val/top1", validate_best=False, result_file="result.json", next_tools=("eval_cls",))


def _first_image(dataset: Any) -> Path | None:
    """The file of a validation set's first image, looking through the multi-task wrappers (a concatenation's first
    part, a wrapped dataset); ``None`` when no dataset on the way names its files."""
    while dataset is not None:
        if hasattr(dataset, "image_path"):
            return Path(dataset.image_path(0)) if len(dataset) else None
        parts = getattr(dataset, "datasets", None)
        dataset = parts[0] if parts else getattr(dataset, "dataset", getattr(dataset, "source", None))
    return None


# ---------------------------------------------------------------------------------------------- the run
def train(cfg: Config, run_dir: str | Path, *, resume: str | Path | None = None, download: bool = False,
          next_steps: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the run's result (also written to ``final_metrics.json``, for
    classification ``result.json``).

    Args:
        cfg: a resolved config of any task.
        run_dir: the run folder; the caller owns it (``RunFolder``: lock, refusal of another run's folder).
        resume: a checkpoint to continue (checked with ``inspect_resume`` before anything is written).
        download: let torchvision download CIFAR-10 / Flowers102 into ``data.root``.
        next_steps: end the report with the commands that take the checkpoint next (eval, predict, export).

    Under DDP every rank trains and evaluates; only global rank 0 writes ``model.pt`` and the result and prints the
    report.
    """
    t0 = time.time()
    run_dir = Path(run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    parts = task_parts(cfg, download)
    cfg, dm = parts.cfg, parts.datamodule
    info = inspect_resume(resume, cfg, run_dir) if resume is not None else None
    write_config(cfg, run_dir)
    if parts.classes is not None:
        write_json(run_dir / "classes.json", parts.classes)
    print(parts.data_line, flush=True)
    set_num_threads(cfg)

    module = parts.module(_finetune_start(cfg, parts, run_dir))
    trainer = make_trainer(cfg, run_dir, monitor=parts.monitor, mode="max",
                           resume_from=info.log_step if info else None)
    if info and info.finished:
        redo = "the final evaluation and the result files" if parts.validate_best else "the result files"
        print(f"{info.path} finished training: redoing {redo}", flush=True)
    trainer.fit(module, datamodule=dm, ckpt_path=str(info.path) if info else None)

    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    if parts.validate_best:  # the best checkpoint's numbers over the whole validation set (without one: the final)
        trainer.validate(module, datamodule=dm, ckpt_path=best or None, verbose=False)
    # model.pt holds the best checkpoint's weights; without validation no best exists: last.ckpt's, else the final.
    last = run_dir / "ckpt" / "last.ckpt"
    weights_from = best or (str(last) if last.is_file() else "")
    result, report = _result(parts, trainer, module, best, weights_from, run_dir, time.time() - t0)
    if not trainer.is_global_zero:  # under DDP only rank 0 writes files and prints the report
        return result
    model_pt = run_dir / "model.pt"
    save_torch(load_checkpoint(weights_from)[1] if weights_from else module.model.state_dict(), model_pt)
    print("\n".join(report))
    write_json(run_dir / parts.result_file, result)
    print(f"wrote {model_pt} and {run_dir / parts.result_file}")
    if next_steps:
        print("\n".join(_next_steps(parts, weights_from, model_pt)), flush=True)
    return result


def _finetune_start(cfg: Config, parts: TaskParts, run_dir: Path) -> nn.Module:
    """The network, loaded from ``model.pretrained`` and frozen as ``finetune`` says (``lit/finetune.py``); with
    either set, the report is printed and written to ``finetune_report.json``."""
    with collect_reports() as loads:
        model = build_from_config(cfg)
    names = (parts.classes or {}).get("category_names")
    report = start_report(model, loads, source=cfg.model.pretrained, freeze=cfg.finetune.freeze,
                          keep_rows=cfg.finetune.keep_class_rows, new_names=names)
    if cfg.model.pretrained is not None or cfg.finetune.freeze != "none":
        print("\n".join(format_report(report)), flush=True)
        report.write(run_dir / "finetune_report.json")
    return model


def _result(parts: TaskParts, trainer: pl.Trainer, module: Any, best: str, weights_from: str, run_dir: Path,
            wall: float) -> tuple[dict[str, Any], list[str]]:
    """The task's result dict and report lines."""
    task = parts.cfg.task
    if task == "detection":
        return _detection_result(module, parts.datamodule, best, wall)
    if task == "multitask":
        return _multitask_result(module, parts.cfg, best, wall)
    if task == "segmentation":
        return _segmentation_result(trainer, module, weights_from, run_dir)
    return _classification_result(trainer, module, parts.datamodule, best, wall)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _detection_result(module: DetectionModule, dm: Any, best: str, wall: float) -> tuple[dict, list[str]]:
    summary = module.coco_summary  # the same on every rank: the evaluation gathers all ranks' detections
    names = dict(zip(dm.category_ids, dm.category_names))
    result = {"checkpoint": best, "split": dm.val_split, "stats": summary["stats"], "map": summary["map"],
              "map50": summary["map50"],
              "per_class": {names[c]: _nan_to_none(ap) for c, ap in summary["per_class"].items()},
              "num_images": len(module.val_image_ids), "skipped_images": module.val_skipped, "wall_time_s": wall}
    report = [f"\nCOCO bbox evaluation of {best or 'the final model'} on {dm.val_split} "
              f"({len(module.val_image_ids)} images{module.skipped_note()}):",
              format_coco_stats(summary, names),
              f"mAP@[.5:.95] = {summary['map']:.4f}  mAP@.5 = {summary['map50']:.4f}  (wall time {wall:.0f} s)"]
    return result, report


def _multitask_result(module: MultiTaskModule, cfg: Config, best: str, wall: float) -> tuple[dict, list[str]]:
    coco, seg = module.coco_summary, module.seg_metrics
    names = dict(zip(module.category_ids, module.category_names))
    result = {"checkpoint": best, "map": coco["map"], "map50": coco["map50"], "stats": coco["stats"],
              "per_class_ap": {names[c]: _nan_to_none(ap) for c, ap in coco["per_class"].items()},
              "miou": seg["miou"], "pixel_acc": seg["pixel_acc"],
              "per_class_iou": {k: _nan_to_none(v) for k, v in seg["per_class"].items()},
              "num_images": len(module.val_image_ids), "num_seg_images": module.val_num_seg_images,
              "skipped_images": module.val_skipped, "wall_time_s": wall}
    report = [f"\nevaluation of {best or 'the final model'} on {cfg.data.val_split} ({len(module.val_image_ids)} "
              f"images with boxes, {module.val_num_seg_images} with masks{module.skipped_note()}):",
              format_coco_stats(coco, names), _format_iou(seg["per_class"]),
              f"mAP@[.5:.95] = {coco['map']:.4f}  mAP@.5 = {coco['map50']:.4f}  mIoU = {seg['miou']:.4f}  "
              f"pixel accuracy = {seg['pixel_acc']:.4f}  (wall time {wall:.0f} s)"]
    return result, report


def _format_iou(per_class: dict[str, float]) -> str:
    """The per-class IoU table under the COCO one. As there, a class without a number (in neither the label maps
    nor the predictions: IoU n/a) is only counted."""
    rows = [f"  {'class':<29s} {'IoU':>7s}"]
    rows += [f"  {name:<29s} {iou:7.4f}" for name, iou in per_class.items() if not math.isnan(iou)]
    absent = sum(math.isnan(iou) for iou in per_class.values())
    if absent:
        rows.append(f"  ({absent} of {len(per_class)} classes are in neither the label maps nor the predictions and "
                    "are not listed: IoU n/a)")
    return "\n".join(rows)


def _segmentation_result(trainer: pl.Trainer, module: SegmentationModule, checkpoint: str,
                         run_dir: Path) -> tuple[dict, list[str]]:
    score = trainer.checkpoint_callback.best_model_score
    miou = float(score) if score is not None else float("nan")
    result = {"best_ckpt": checkpoint, "val_miou": miou, "out_dir": str(run_dir),
              "num_images": module.val_num_images, "skipped_images": module.val_skipped}
    return result, [f"best val/miou={miou:.4f} checkpoint={checkpoint} ({module.val_num_images} val images"
                    f"{module.skipped_note()})"]


def _classification_result(trainer: pl.Trainer, module: ClassificationModule, dm: Any, best: str,
                           wall: float) -> tuple[dict, list[str]]:
    history = module.history
    result = {
        "best_top1": max((h["top1"] for h in history), default=float("nan")),
        "final_top1": history[-1]["top1"] if history else float("nan"),
        "final_top5": history[-1]["top5"] if history else float("nan"),
        "epochs": trainer.current_epoch, "steps": trainer.global_step, "history": history,
        "params": sum(p.numel() for p in module.model.parameters()), "checkpoint": best, "classes": dm.classes,
        "wall_time_s": wall,
    }
    return result, [f"best val top-1 {result['best_top1']:.4f}, final top-1 {result['final_top1']:.4f} / top-5 "
                    f"{result['final_top5']:.4f} after {result['epochs']} epochs ({wall:.0f} s); "
                    f"best checkpoint {best}"]


def _next_steps(parts: TaskParts, checkpoint: str, model_pt: Path) -> list[str]:
    """Where the weights are and the commands that use them next, spelled as this run was started (the
    ``mnv2-*`` console commands or ``python tools/*.py``), with this run's paths."""
    if not checkpoint:
        return [f"no checkpoint was saved: {model_pt} holds the final weights"]
    last = Path(checkpoint).name == "last.ckpt"
    which = "the last one: no validation chose a best" if last else f"best {parts.monitor}"
    lines = [f"checkpoint: {checkpoint} ({which}; {model_pt.name} holds its weights)", "next:"]
    console = Path(sys.argv[0]).name.startswith("mnv2-")
    for tool in parts.next_tools:
        command = f"mnv2-{tool.replace('_', '-')}" if console else f"python tools/{tool}.py"
        images = f" {shlex.quote(str(parts.example_image or 'IMAGES...'))}" if tool == "predict" else ""
        lines.append(f"  {command} --ckpt {shlex.quote(checkpoint)}{images}")
    return lines
