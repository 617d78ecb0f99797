"""COCO evaluation time: pycocotools (the reference) vs faster-coco-eval on the same realistic results.

Validation on COCO val (5,000 images) every few epochs is part of the training bill. ``realistic_results`` makes a
results file shaped like a detector's at the standard settings (score threshold 0.001, up to 100 detections per
image): every ground-truth box found a few times with jittered coordinates and scores, plus background detections
of random size, position and class, most with low scores.
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO

from ..eval.coco import evaluate_coco

__all__ = ["realistic_results", "coco_eval_benchmark", "format_coco_eval_benchmark"]


def realistic_results(coco_gt: COCO, per_image: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``per_image`` detections per image of ``coco_gt`` (COCO results format, xywh)."""
    rng = np.random.default_rng(seed)
    cats = sorted(coco_gt.getCatIds())
    results: list[dict[str, Any]] = []
    for img_id in sorted(coco_gt.getImgIds()):
        info = coco_gt.imgs[img_id]
        w, h = float(info["width"]), float(info["height"])
        dets = []
        for ann in coco_gt.imgToAnns.get(img_id, []):
            x, y, bw, bh = ann["bbox"]
            for _ in range(int(rng.integers(1, 4))):  # found, plus near duplicates
                jit = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(cats))
                dets.append((cat, [x + jit[0], y + jit[1], max(1.0, bw + jit[2]), max(1.0, bh + jit[3])],
                             float(rng.beta(5, 2))))
        while len(dets) < per_image:  # background
            bw, bh = rng.uniform(0.02, 0.6) * w, rng.uniform(0.02, 0.6) * h
            dets.append((int(rng.choice(cats)), [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh],
                         float(rng.beta(1, 12))))
        dets.sort(key=lambda d: -d[2])
        results += [{"image_id": img_id, "category_id": c, "bbox": [round(float(v), 2) for v in b],
                     "score": round(s, 5)} for c, b, s in dets[:per_image]]
    return results


def coco_eval_benchmark(ann_files: Sequence[str | Path], rounds: int = 3,
                        per_image: int = 100) -> dict[str, dict[str, Any]]:
    """Seconds per evaluation (median of ``rounds``, the two evaluators taking turns) and the largest difference
    between their 12 stats, per annotation file."""
    out: dict[str, dict[str, Any]] = {}
    for ann in ann_files:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(ann))
        res = realistic_results(gt, per_image)
        times: dict[str, list[float]] = {"pycocotools": [], "faster_coco_eval": []}
        stats: dict[str, list[float]] = {}
        evaluate_coco(gt, res[:10], evaluator="faster_coco_eval")  # warm-up: its index of the ground truth
        for _ in range(rounds):
            for name in times:
                t0 = time.perf_counter()
                stats[name] = evaluate_coco(gt, res, evaluator=name)["stats"]
                times[name].append(time.perf_counter() - t0)
        ref, fast = float(np.median(times["pycocotools"])), float(np.median(times["faster_coco_eval"]))
        out[str(ann)] = {"images": len(gt.getImgIds()), "detections": len(res), "pycocotools_s": ref,
                         "faster_coco_eval_s": fast, "speedup": ref / fast,
                         "max_stat_diff": float(np.max(np.abs(np.subtract(stats["pycocotools"],
                                                                          stats["faster_coco_eval"]))))}
    return out


def format_coco_eval_benchmark(table: dict[str, dict[str, Any]]) -> str:
    """``coco_eval_benchmark``'s seconds as printed by ``tools/benchmark.py``."""
    return "COCO bbox evaluation of realistic results (100 detections per image), seconds:\n" + "\n".join(
        f"  {ann}: {r['images']} images, {r['detections']} detections: pycocotools {r['pycocotools_s']:.2f}, "
        f"faster-coco-eval {r['faster_coco_eval_s']:.2f} ({r['speedup']:.1f}×); "
        f"largest difference of the 12 stats {r['max_stat_diff']:.1e}" for ann, r in table.items())
