"""Data-pipeline throughput per loader worker: what one CPU core feeds the GPU (docs/design.md#input-pipeline).

For each pipeline (detection, segmentation and classification training, and each evaluation preset) the candidates
are timed on the same images in one process and one thread (a DataLoader worker), taking turns image by image,
so load from other processes hits them alike and their ratios hold on a shared machine:

- ``ours``: what the data modules run (``data/detection/pipeline.py``, ``FastSegTrainTransform``, ``decode_rgb``);
- ``before``: the albumentations pipelines with Pillow decoding (``load_rgb``, and label PNGs through Pillow), as the
  data modules ran them before the fast pipelines (the distribution reference of ``tests/test_fast_pipeline.py``);
- ``torchvision v2 ssdlite`` / ``torchvision v2 ssd``: torchvision's detection reference recipes
  (``references/detection/presets.py``) in ``transforms.v2`` on tensors decoded by ``torchvision.io.decode_jpeg``
  (its faster backend): "ssdlite" = ``RandomIoUCrop`` → flip → resize → ``SanitizeBoundingBoxes``; "ssd" (the
  same policy as ours) adds ``RandomPhotometricDistort`` and ``RandomZoomOut`` in front.

Times are CPU seconds of the calling thread (``time.thread_time``): per-core cost, not inflated by time slices
that other processes take. Every candidate also runs as a chain of prefixes (read; + decode; + geometry; ...); the
difference between consecutive prefixes is the stage's cost (the per-stage breakdown; prefixes re-draw the same
random choices, seeded per image).
"""
from __future__ import annotations

import os
import random
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["time_pipelines", "data_benchmark", "format_data_benchmark", "STAGES"]

STAGES = ("read", "decode", "annotations", "geometry", "resample", "photometric", "targets", "to-tensor")

# A candidate: ordered (stage, runner) pairs; runner(i) processes image i up to and including that stage (the last
# runner is the whole pipeline). Each runner seeds its own randomness from i.
Candidate = list[tuple[str, Callable[[int], Any]]]


def _seed(i: int) -> int:
    return 7919 * i + 1


def time_pipelines(candidates: dict[str, Candidate], n: int, rounds: int = 3,
                   breakdown: bool = True) -> dict[str, dict[str, Any]]:
    """Images/s (CPU time of this thread) of each candidate over images ``0..n-1``, taking turns image by image,
    ``rounds`` times after one warm-up pass; the median round counts. With ``breakdown``, per-stage ms per image
    from the prefixes (one more interleaved pass per round)."""
    for cand in candidates.values():  # warm-up: lazy imports, annotation indices, caches
        cand[-1][1](0)
    totals: dict[str, list[float]] = {k: [] for k in candidates}
    prefix: dict[str, list[list[float]]] = {k: [[] for _ in c] for k, c in candidates.items()}
    for _ in range(rounds):
        spent = dict.fromkeys(candidates, 0.0)
        for i in range(n):
            for name, cand in candidates.items():
                t0 = time.thread_time()
                cand[-1][1](i)
                spent[name] += time.thread_time() - t0
                if breakdown:
                    for j, (_, run) in enumerate(cand[:-1]):
                        t0 = time.thread_time()
                        run(i)
                        prefix[name][j].append(time.thread_time() - t0)
        for name in candidates:
            totals[name].append(spent[name])
    out: dict[str, dict[str, Any]] = {}
    for name, cand in candidates.items():
        per_image = statistics.median(totals[name]) / n
        row: dict[str, Any] = {"images_per_s": 1.0 / per_image, "ms_per_image": per_image * 1e3}
        if breakdown:
            cum = [statistics.median(v) * 1e3 for v in prefix[name][:-1]] + [per_image * 1e3]
            row["stages_ms"] = {stage: max(0.0, c - (cum[j - 1] if j else 0.0))
                                for j, ((stage, _), c) in enumerate(zip(cand, cum))}
        out[name] = row
    return out


# ---------------------------------------------------------------------------------------------- detection
def _det_fast(ds, train: bool) -> Candidate:
    from ..data.detection.pipeline import FastDetectionTransform

    tf: FastDetectionTransform = ds.transform

    def run(i: int, upto: int) -> Any:
        tf.set_random_seed(_seed(i))
        enc = ds.open_image(i)
        if upto == 0:
            return enc
        boxes, labels = ds.load_annotations(i, enc.size)
        if upto == 1:
            return boxes
        b, lab = boxes.astype(np.float64), labels
        plan = tf.plan(*enc.size, b)
        out_boxes = tf.boxes(plan, b, lab)
        if upto == 2:
            return out_boxes
        k = tf.decode_factor(enc, plan)
        image = enc.decode(k, 4 if tf.warps(plan, k) else 3)
        if upto == 3:
            return image
        out, image, rows, cols = tf.resample(enc, plan, image)
        if upto == 4:
            return out
        out = tf.photometric(out, image, rows, cols, plan)
        if upto == 5:
            return out
        return tf.normalize(out), out_boxes

    stages = ["read", "annotations", "geometry", "decode", "resample", "photometric", "to-tensor"]
    if not train:
        stages.remove("photometric")
    cand = [(s, (lambda i, u=u: run(i, u))) for u, s in enumerate(stages)]
    if not train:  # no photometric step: the last prefix is the whole pipeline
        cand[-1] = ("to-tensor", lambda i: run(i, 6))
    return cand


def _det_before(ds, steps: list[tuple[str, int]]) -> Candidate:
    """``ds``: CocoDetection with an albumentations ``DetectionTransform``; ``steps``: (stage, number of compose
    steps it ends with)."""
    from ..data.detection.transforms import DetectionTransform

    full: DetectionTransform = ds.transform
    parts = {n: DetectionTransform(list(full.compose.transforms[:n])) for _, n in steps}

    def run(i: int, n: int | None) -> Any:
        if n is None:
            return ds.image_path(i).read_bytes()
        image = ds.load_image(i)
        if n < 0:
            return image
        boxes, labels = ds.load_annotations(i, image.shape[:2])
        if n == 0:
            return boxes
        tf = parts[n]
        tf.set_random_seed(_seed(i))
        return tf(image, boxes, labels)

    return [("read", lambda i: run(i, None)), ("decode", lambda i: run(i, -1)), ("annotations", lambda i: run(i, 0))] \
        + [(s, (lambda i, n=n: run(i, n))) for s, n in steps]


def _det_torchvision(ds, size: int, mean: Sequence[float], std: Sequence[float], policy: str) -> Candidate:
    from torchvision import tv_tensors
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import v2

    steps: list[tuple[str, list]] = []
    if policy == "ssd":
        fill = {tv_tensors.Image: [round(255 * m) for m in mean], "others": 0}
        steps.append(("photometric", [v2.RandomPhotometricDistort(p=0.5)]))
        geometry = [v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5)]
    else:
        geometry = []
    steps += [("geometry", geometry + [v2.RandomIoUCrop(), v2.RandomHorizontalFlip(p=0.5)]),
              ("resample", [v2.Resize((size, size), antialias=True)]),
              ("targets", [v2.SanitizeBoundingBoxes()]),
              ("to-tensor", [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])]
    prefixes, acc = [], []
    for stage, ts in steps:
        acc = acc + ts
        prefixes.append((stage, v2.Compose(list(acc))))

    def run(i: int, upto: int) -> Any:
        data = read_file(str(ds.image_path(i)))
        if upto == 0:
            return data
        img = decode_jpeg(data, mode=ImageReadMode.RGB)
        if upto == 1:
            return img
        h, w = img.shape[-2:]
        boxes, labels = ds.load_annotations(i, (h, w))
        if upto == 2:
            return boxes
        torch.manual_seed(_seed(i))
        target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(h, w)),
                  "labels": torch.from_numpy(labels)}
        return prefixes[upto - 3][1](tv_tensors.Image(img), target)

    names = ["read", "decode", "annotations"] + [s for s, _ in steps]
    return [(s, (lambda i, u=u: run(i, u))) for u, s in enumerate(names)]


def detection_candidates(root: Path, split: str, size: int, train: bool, torchvision_refs: bool = True,
                         mean: Sequence[float] = (0.485, 0.456, 0.406),
                         std: Sequence[float] = (0.229, 0.224, 0.225)) -> tuple[dict[str, Candidate], int]:
    from ..data.coco import CocoDetection
    from ..data.detection.pipeline import fast_detection_transform
    from ..data.detection.transforms import detection_transform

    # Training: uint8 out of the worker, as the data module runs it (normalised per batch on the device); the float
    # variant is timed too.
    fast = CocoDetection(root, split, fast_detection_transform("ssdlite", train, size, mean, std, normalize=not train))
    before = CocoDetection(root, split, detection_transform("ssdlite", train, size, mean, std))
    steps = ([("photometric", 1), ("geometry", 4), ("resample", 5), ("to-tensor", 7)] if train
             else [("resample", 1), ("to-tensor", 3)])
    cands = {"ours": _det_fast(fast, train), "before": _det_before(before, steps)}
    if train:
        floats = CocoDetection(root, split, fast_detection_transform("ssdlite", train, size, mean, std))
        cands["ours, float out of the worker"] = _det_fast(floats, train)
    if train and torchvision_refs:
        cands["torchvision v2 ssdlite"] = _det_torchvision(before, size, mean, std, "ssdlite")
        cands["torchvision v2 ssd"] = _det_torchvision(before, size, mean, std, "ssd")
    return cands, len(fast)


# ---------------------------------------------------------------------------------------------- segmentation
def segmentation_candidates(root: Path, split: str, crop: int, num_classes: int,
                            train: bool) -> tuple[dict[str, Candidate], int]:
    import albumentations as A

    from ..data.io.decode import EncodedImage
    from ..data.io.images import load_rgb
    from ..data.segmentation.transforms import (FastSegEvalTransform, FastSegTrainTransform, SegEvalTransform,
                                       SegTrainTransform)
    from ..data.voc import VOCSegmentation

    ref_tf = SegTrainTransform(crop) if train else SegEvalTransform()
    ds = VOCSegmentation(root, split, ref_tf, num_classes=num_classes)
    label = lambda i, size: ds._label(i, size)  # noqa: E731
    pillow_label = lambda i, size: ds._label(i, size, pillow=True)  # noqa: E731  (before png_indices)

    def fast_candidate(fast_tf: Any) -> Candidate:
        return [(s, (lambda i, u=u: fast(fast_tf, i, u))) for u, s in enumerate(stages)] if train else \
            [(s, (lambda i, u=u: fast(fast_tf, i, u))) for u, s in enumerate(stages[:-1])] + \
            [("to-tensor", lambda i: fast(fast_tf, i, 9))]

    def fast(fast_tf: Any, i: int, upto: int) -> Any:
        enc = EncodedImage(ds.image_path(i))
        if upto == 0:
            return enc
        mask = label(i, enc.size)
        if upto == 1:
            return mask
        image = enc.decode(1, 4 if train else 3)
        if upto == 2 or not train:
            return image if upto == 2 else fast_tf(image, mask)
        fast_tf.set_random_seed(_seed(i))
        plan = fast_tf.plan(*image.shape[:2])
        if upto == 3:
            return plan
        out = fast_tf.resample(image, mask, plan)
        return out if upto == 4 else fast_tf.to_tensors(*out)

    ref_steps = [("resample", 1), ("geometry", 4), ("to-tensor", 6)] if train else [("to-tensor", 2)]
    parts = {n: A.Compose(list(ref_tf.pipeline.transforms[:n])) for _, n in ref_steps}

    def before(i: int, upto: int | None) -> Any:
        if upto is None:
            return ds.image_path(i).read_bytes()
        image = load_rgb(ds.image_path(i))
        if upto < 0:
            return image
        mask = pillow_label(i, image.shape[:2])
        if upto == 0:
            return mask
        compose = parts[upto]
        if train:
            compose.set_random_state(np.random.default_rng(_seed(i)), random.Random(_seed(i)))
        out = compose(image=image, mask=mask)
        return out["image"], torch.as_tensor(out["mask"], dtype=torch.int64)

    stages = ["read", "annotations", "decode"] + (["geometry", "resample", "to-tensor"] if train else ["to-tensor"])
    ref = [("read", lambda i: before(i, None)), ("decode", lambda i: before(i, -1)),
           ("annotations", lambda i: before(i, 0))] + [(s, (lambda i, n=n: before(i, n))) for s, n in ref_steps]
    if not train:
        return {"ours": fast_candidate(FastSegEvalTransform()), "before": ref}, len(ds)
    # uint8 out of the worker, as the data module runs it; the float variant is timed too
    return {"ours": fast_candidate(FastSegTrainTransform(crop, normalize=False)), "before": ref,
            "ours, float out of the worker": fast_candidate(FastSegTrainTransform(crop))}, len(ds)


# ---------------------------------------------------------------------------------------------- classification
def classification_candidates(root: Path, split: str, size: int, train: bool) -> tuple[dict[str, Candidate], int]:
    from ..data.classification.datasets import ImageFolderClassification
    from ..data.classification.transforms import classification_transform
    from ..data.io.decode import decode_rgb
    from ..data.io.images import load_rgb

    ds = ImageFolderClassification(root, split)
    tf = classification_transform("cls", train, size)

    def run(decode: Callable, i: int, full: bool) -> Any:
        image = decode(ds.paths[i])
        if not full:
            return image
        tf.set_random_state(np.random.default_rng(_seed(i)), random.Random(_seed(i)))
        return tf(image=image)["image"]

    def cand(decode: Callable) -> Candidate:
        return [("decode", lambda i: run(decode, i, False)), ("to-tensor", lambda i: run(decode, i, True))]

    return {"ours": cand(decode_rgb), "before": cand(load_rgb)}, len(ds)


# ---------------------------------------------------------------------------------------------- all of it
def data_benchmark(num_images: int = 100, rounds: int = 3, det_size: int = 320, seg_size: int = 513,
                   cls_size: int = 224, real: str | os.PathLike | None = None,
                   breakdown: bool = True, only: str = "") -> dict[str, dict[str, Any]]:
    """Every pipeline on the built-in shapes and, when ``real`` (``$MNV2_REAL_DATA``) holds them, on ``coco128``
    and ``voc_coco``: ``{pipeline: {"dataset", "images", "candidates": {name: row}, "ratios"}}``; ``only``: just
    the pipelines whose "pipeline, dataset" name contains it."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's setting
    try:
        return _run_jobs(num_images, rounds, det_size, seg_size, cls_size, real, breakdown, only)
    finally:
        torch.set_num_threads(threads)


def _run_jobs(num_images: int, rounds: int, det_size: int, seg_size: int, cls_size: int,
              real: str | os.PathLike | None, breakdown: bool, only: str) -> dict[str, dict[str, Any]]:
    from ..data.synthetic import SHAPE_CLASSES, ensure_shapes

    shapes = ensure_shapes()
    jobs: list[tuple[str, str, Callable[[], tuple[dict[str, Candidate], int]]]] = []
    real = Path(real) if real else None
    det_sets = [("shapes", shapes / "coco", "train2017")]
    seg_sets = [("shapes", shapes / "VOC2012", "train", 1 + len(SHAPE_CLASSES))]
    if real is not None and (real / "coco128").is_dir():
        det_sets.insert(0, ("coco128", real / "coco128", "train2017"))
    if real is not None and (real / "voc_coco").is_dir():
        seg_sets.insert(0, ("voc_coco", real / "voc_coco" / "VOC2012", "train", 21))
    for name, root, split in det_sets:
        jobs.append((f"detection train (ssdlite, {det_size}²)", name,
                     lambda r=root, s=split: detection_candidates(r, s, det_size, True)))
        jobs.append((f"detection eval ({det_size}²)", name,
                     lambda r=root, s=split: detection_candidates(r, s, det_size, False)))
    for name, root, split, k in seg_sets:
        jobs.append((f"segmentation train (crop {seg_size}, scale 0.5-2.0)", name,
                     lambda r=root, s=split, k=k: segmentation_candidates(r, s, seg_size, k, True)))
        jobs.append(("segmentation eval (full image)", name,
                     lambda r=root, s=split, k=k: segmentation_candidates(r, s, seg_size, k, False)))
    jobs.append((f"classification train (cls, {cls_size}²)", "shapes",
                 lambda: classification_candidates(shapes / "classification", "train", cls_size, True)))
    jobs.append((f"classification eval ({cls_size}²)", "shapes",
                 lambda: classification_candidates(shapes / "classification", "val", cls_size, False)))
    results: dict[str, dict[str, Any]] = {}
    for pipeline, dataset, make in jobs:
        if only not in f"{pipeline}, {dataset}":
            continue
        with warnings.catch_warnings():  # prefixes without a box-changing step: albumentations says so, harmlessly
            warnings.filterwarnings("ignore", message="Got processor for bboxes")
            cands, length = make()
            n = min(num_images, length)
            rows = time_pipelines(cands, n, rounds, breakdown)
        ips = {k: r["images_per_s"] for k, r in rows.items()}
        ratios = {f"ours / {k}": ips["ours"] / v for k, v in ips.items() if k != "ours"}
        results[f"{pipeline}, {dataset}"] = {"pipeline": pipeline, "dataset": dataset, "images": n,
                                            "rounds": rounds, "candidates": rows, "ratios": ratios}
    return results


def format_data_benchmark(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: images/s per worker per candidate with ratios, then the per-stage ms per image."""
    lines = ["| pipeline | dataset | candidate | images/s/core | ms/image | ours × |", "|---|---|---|---:|---:|---:|"]
    for res in results.values():
        for name, row in res["candidates"].items():
            ratio = "" if name == "ours" else f"{res['ratios'][f'ours / {name}']:.2f}"
            lines.append(f"| {res['pipeline']} | {res['dataset']} | {name} | {row['images_per_s']:.0f} | "
                         f"{row['ms_per_image']:.2f} | {ratio} |")
    staged = [(res, name, row) for res in results.values() for name, row in res["candidates"].items()
              if "stages_ms" in row and len(row["stages_ms"]) > 2]
    if staged:
        lines += ["", "ms per image by stage (differences of cumulative prefixes):", "",
                  "| pipeline | dataset | candidate | " + " | ".join(STAGES) + " |",
                  "|---|---|---|" + "---:|" * len(STAGES)]
        for res, name, row in staged:
            cells = [f"{row['stages_ms'][s]:.2f}" if s in row["stages_ms"] else "" for s in STAGES]
            lines.append(f"| {res['pipeline']} | {res['dataset']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
