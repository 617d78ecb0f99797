"""Thin wrapper around pycocotools' COCOeval: the only place where boxes become COCO ``xywh``.

Detections arrive as the package's per-image dicts (``boxes`` xyxy in original pixels, ``scores``, contiguous
``labels`` 1..C); ``to_coco_results`` turns them into COCO results (``image_id``, ``category_id``, ``bbox`` xywh,
``score``) and ``evaluate_coco`` runs the standard bbox evaluation over all given images at once.

pycocotools is the reference and the default. ``evaluator="faster_coco_eval"`` runs the same evaluation through
faster-coco-eval (a C++ re-implementation of COCOeval, optional: ``pip install faster-coco-eval``), whose 12 stats
equal pycocotools' to 1e-6 on the real subsets, crowd regions included (``tests/test_coco_eval.py``); it pays off
on large validation sets (``tools/benchmark.py --data`` times both on the same results).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import weakref
from pathlib import Path
from typing import Any, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.ops import box_convert

__all__ = ["STAT_NAMES", "COCO_EVALUATORS", "to_coco_results", "evaluate_coco", "format_coco_stats", "save_results",
           "load_results"]

COCO_EVALUATORS = ("pycocotools", "faster_coco_eval")

# The 12 numbers of ``COCOeval.summarize()`` for bbox evaluation, in order.
STAT_NAMES: tuple[str, ...] = (
    "AP@[.50:.95] all maxDets=100",
    "AP@.50 all maxDets=100",
    "AP@.75 all maxDets=100",
    "AP@[.50:.95] small maxDets=100",
    "AP@[.50:.95] medium maxDets=100",
    "AP@[.50:.95] large maxDets=100",
    "AR@[.50:.95] all maxDets=1",
    "AR@[.50:.95] all maxDets=10",
    "AR@[.50:.95] all maxDets=100",
    "AR@[.50:.95] small maxDets=100",
    "AR@[.50:.95] medium maxDets=100",
    "AR@[.50:.95] large maxDets=100",
)


def to_coco_results(
    detections: Sequence[dict[str, Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO results from per-image detections; label ``l`` (1..C) becomes ``category_ids[l - 1]``.

    Args:
        detections: per image, ``boxes`` ``(D, 4)`` xyxy original pixels, ``scores`` ``(D,)``, ``labels`` ``(D,)``.
        image_ids: the COCO image id of each entry of ``detections``.
        category_ids: the label map (contiguous label → COCO category id).
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"got {len(detections)} detection sets for {len(image_ids)} image ids")
    lut = torch.tensor([-1, *category_ids], dtype=torch.int64)
    results: list[dict[str, Any]] = []
    for det, img_id in zip(detections, image_ids):
        labels = det["labels"].detach().cpu().to(torch.int64).reshape(-1)
        if labels.numel() == 0:
            continue
        if int(labels.min()) < 1 or int(labels.max()) > len(category_ids):
            raise ValueError(f"image {img_id}: detection labels must be in 1..{len(category_ids)}, "
                             f"got {sorted(set(labels.tolist()))[:8]}")
        xywh = box_convert(det["boxes"].detach().cpu().to(torch.float64).reshape(-1, 4), "xyxy", "xywh")
        scores = det["scores"].detach().cpu().to(torch.float64).reshape(-1)
        for box, score, cat in zip(xywh.tolist(), scores.tolist(), lut[labels].tolist()):
            results.append({"image_id": int(img_id), "category_id": int(cat),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 6)})
    return results


def _per_class_ap(cocoeval: COCOeval) -> dict[int, float]:
    """AP@[.5:.95] (area all, 100 dets) per category id; NaN for a category with no ground truth in these images."""
    precision = cocoeval.eval["precision"]  # (T IoUs, R recall points, K cats, A areas, M maxDets)
    out: dict[int, float] = {}
    for k, cat_id in enumerate(cocoeval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[int(cat_id)] = float(p.mean()) if p.size else float("nan")
    return out


_FASTER_GT: "weakref.WeakKeyDictionary[COCO, Any]" = weakref.WeakKeyDictionary()


def _faster_cocoeval(coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int]) -> Any:
    """faster-coco-eval's COCOeval on the same ground truth (its own index of ``coco_gt.dataset``, built once per
    ground truth) and results, evaluated, accumulated and summarised."""
    try:
        import faster_coco_eval
    except ImportError as e:
        raise ImportError("eval.coco_evaluator=faster_coco_eval needs the faster-coco-eval package: "
                          "pip install faster-coco-eval (or use the default, pycocotools)") from e
    gt = _FASTER_GT.get(coco_gt)
    if gt is None:
        gt = _FASTER_GT[coco_gt] = faster_coco_eval.COCO(copy.deepcopy(coco_gt.dataset))
    cocoeval = faster_coco_eval.COCOeval_faster(gt, gt.loadRes(copy.deepcopy(results)), iouType="bbox")
    cocoeval.params.imgIds = image_ids
    cocoeval.evaluate()
    cocoeval.accumulate()
    cocoeval.summarize()
    return cocoeval


def evaluate_coco(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
    evaluator: str = "pycocotools",
) -> dict[str, Any]:
    """Standard COCO bbox evaluation of ``results`` against ``coco_gt`` on ``image_ids`` (default: all), by
    ``evaluator`` (``COCO_EVALUATORS``: pycocotools, the reference, or faster-coco-eval, same numbers).

    Returns a dict with ``stats`` (the 12 ``COCOeval.stats``, named by ``STAT_NAMES``; -1 where pycocotools has no
    ground truth for a row), ``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``per_class`` ``{category_id: AP}`` and
    ``pr`` (precision–recall curves at IoU 0.5 / 0.75 per category, ``{"recall": [...], "iou50": {id: [...]}, ...}``;
    empty when there are no results).
    An empty ``results`` list is a valid outcome (a model that finds nothing) and scores 0.
    """
    if evaluator not in COCO_EVALUATORS:
        raise ValueError(f"unknown COCO evaluator {evaluator!r}; choose from {list(COCO_EVALUATORS)}")
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
    cat_ids = sorted(coco_gt.getCatIds())
    if not results:
        has_gt = len(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False)) > 0
        stats = [0.0 if has_gt else -1.0] * len(STAT_NAMES)
        per_class = {}
        for c in cat_ids:
            per_class[c] = 0.0 if coco_gt.getAnnIds(imgIds=image_ids, catIds=[c], iscrowd=False) else float("nan")
        return _summary(stats, per_class)
    known = set(coco_gt.getImgIds())
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:8]}")
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    if evaluator == "faster_coco_eval":
        with sink:
            cocoeval = _faster_cocoeval(coco_gt, results, image_ids)
        return _summary([float(s) for s in cocoeval.stats[:12]], _per_class_ap(cocoeval), _pr_curves(cocoeval))
    with sink:
        # loadRes adds to the COCO object it is given; a copy keeps repeated calls independent.
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        cocoeval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        cocoeval.params.imgIds = image_ids
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return _summary([float(s) for s in cocoeval.stats], _per_class_ap(cocoeval), _pr_curves(cocoeval))


def _pr_curves(cocoeval: COCOeval) -> dict[str, Any]:
    """Precision at pycocotools' 101 recall points (area all, 100 detections) at IoU 0.5 and 0.75, per category id
    (NaN where a category has no ground truth) — the curves behind AP50 / AP75, for plotting."""
    precision = cocoeval.eval["precision"]
    ious = [round(float(t), 2) for t in cocoeval.params.iouThrs]
    out: dict[str, Any] = {"recall": [float(r) for r in cocoeval.params.recThrs]}
    for iou in (0.5, 0.75):
        t = ious.index(iou)
        out[f"iou{int(iou * 100)}"] = {
            int(c): [float("nan") if v < 0 else float(v) for v in precision[t, :, k, 0, -1]]
            for k, c in enumerate(cocoeval.params.catIds)}
    return out


def _summary(stats: list[float], per_class: dict[int, float], pr: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"stats": stats, "map": stats[0], "map50": stats[1], "map75": stats[2], "per_class": per_class,
            "pr": pr or {}}


def format_coco_stats(summary: dict[str, Any], category_names: dict[int, str] | None = None) -> str:
    """The 12 named stats and a per-class AP table, as text. The table lists the categories with ground truth in the
    evaluated images; the others (AP n/a: 59 of COCO's 80 in coco128's first 16 images) are counted in one line."""
    lines = [f"  {name:<34s} {value:7.4f}" for name, value in zip(STAT_NAMES, summary["stats"])]
    names = category_names or {}
    lines.append(f"  {'category':<24s} {'id':>4s} {'AP':>7s}")
    absent = [cat_id for cat_id, ap in summary["per_class"].items() if math.isnan(ap)]
    for cat_id, ap in summary["per_class"].items():
        if not math.isnan(ap):
            lines.append(f"  {names.get(cat_id, str(cat_id)):<24s} {cat_id:>4d} {ap:7.4f}")
    if absent:
        lines.append(f"  ({len(absent)} of {len(summary['per_class'])} categories have no ground truth in these images "
                     "and are not listed: AP n/a)")
    return "\n".join(lines)


def save_results(results: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write COCO results JSON (the format pycocotools' ``loadRes`` and the COCO server read)."""
    from ..files import write_text

    return write_text(path, json.dumps(results))


def load_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: COCO results must be a JSON list, got {type(data).__name__}")
    return data
