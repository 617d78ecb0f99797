"""Run a trained checkpoint on image files or folders; write annotated images and a JSON of the predictions.

    python tools/predict.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt photo.jpg more_photos/
    python tools/predict.py --ckpt runs/deeplabv3_shapes/ckpt/last.ckpt image.jpg --out runs/predict
    python tools/predict.py --ckpt runs/ssdlite_coco/export/model.onnx photos/ --batch-size 8

A thin wrapper of the predictor API (``mnv2_vision.load(...).predict(...)``, ``mnv2_vision/predictor.py``): the same
model files (a training checkpoint, a ``model.pt`` in its run folder, an exported ``.onnx``), the same
preprocessing as evaluation, the same numbers.

The task is read from the checkpoint's config. Detection: ``<out>/<name>.jpg`` with boxes scoring at least
``--score-thresh`` drawn, and ``<out>/predictions.json`` with every kept box (xyxy in original pixels, score, label,
COCO category id, name). Segmentation: ``<out>/<name>.png`` (palette label map), ``<out>/<name>_overlay.jpg`` and
``<out>/predictions.json`` with the pixel count of each predicted class. Multi-task (one forward pass):
``<out>/<name>.jpg`` with the boxes drawn over the mask overlay, ``<out>/<name>.png`` (palette label map) and
``<out>/predictions.json`` with both.

Nothing is overwritten but this tool's own earlier outputs: an output name taken by an input image, by another
output of this call (``photo.jpg`` and ``photo.png``) or by any other existing file gets ``_1``, ``_2``, ... after
the stem; each record of ``predictions.json`` lists its image's output files. An image that cannot be read is
skipped with a warning; the others are still predicted and written, and the tool ends with a list of the skipped
files and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import mnv2_vision
from mnv2_vision.cli import add_debug_flag, exit_status, guarded
from mnv2_vision.data.voc import write_label
from mnv2_vision.errors import DataError
from mnv2_vision.files import output_folder, plan_outputs, remove_temp_files, save_image, write_json
from mnv2_vision.predictor import IMAGE_SUFFIXES, Predictor, to_rgb
from mnv2_vision.viz import draw_detections, overlay_segmentation

log = logging.getLogger("mnv2_vision")


def _our_outputs(folder: Path) -> set[Path]:
    """The files an earlier run of this tool wrote into ``folder`` (from its predictions.json)."""
    try:
        records = json.loads((folder / "predictions.json").read_text())
        return {(folder / Path(o).name).resolve() for r in records for o in r.get("outputs", [])}
    except (OSError, ValueError, TypeError, AttributeError):
        return set()


def _collect(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            earlier = _our_outputs(p)  # predicting into the input folder again must not read our own drawings
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.resolve() not in earlier)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {list(paths)}")
    return files


def _json_path(out_dir: Path) -> Path:
    """``predictions.json``, unless a file of that name that this tool did not write is there."""
    for k in range(1000):
        path = out_dir / ("predictions.json" if k == 0 else f"predictions_{k}.json")
        if not path.exists():
            return path
        try:
            records = json.loads(path.read_text())
            if isinstance(records, list) and all(isinstance(r, dict) and "file" in r for r in records):
                return path
        except (OSError, ValueError):
            pass
    raise FileExistsError(f"no free name for predictions.json in {out_dir}")


def _decoded(files: list[Path], skipped: list[str]) -> list[tuple[Path, np.ndarray]]:
    """``(file, RGB image)`` of each readable file, decoded once: the predictor gets the array (the evaluation
    pipeline's numbers: a file and its decoded array agree to 2.4e-7) and the drawing reuses it. An unreadable file
    is warned about and listed in ``skipped``; it must not cost the results of the others."""
    out = []
    for f in files:
        try:
            out.append((f, to_rgb(f)))
        except (ValueError, OSError) as e:
            log.warning("skipping %s", e)
            skipped.append(str(e))
    return out


def _write(f: Path, image: np.ndarray, r: dict[str, Any], outs: tuple[Path, ...], predictor: Predictor,
           score_thresh: float) -> dict[str, Any]:
    """The outputs of one image (label map and overlay, boxes drawn) and its record for predictions.json."""
    record = {"file": str(f), "height": image.shape[0], "width": image.shape[1],
              "outputs": [str(o) for o in outs]}
    task = predictor.task
    if "mask" in r:
        label_map = r["mask"].numpy().astype(np.uint8)
        mask_file = outs[1] if task == "multitask" else outs[0]
        write_label(mask_file, label_map)
        overlay = overlay_segmentation(image, label_map)
        names = predictor.mask_names
        ids, counts = np.unique(label_map, return_counts=True)
        record["pixels"] = {(names[i] if i < len(names) else str(i)): int(c) for i, c in zip(ids, counts)}
        if task == "segmentation":
            save_image(overlay, outs[1], quality=95)
        print(f"{f}: classes {[names[i] for i in ids if i < len(names)]} → {mask_file}")
    if "boxes" in r:  # boxes drawn over the mask overlay of the same pass for a multi-task model
        background = overlay if task == "multitask" else image
        save_image(draw_detections(background, r["boxes"].numpy(), r["labels"].tolist(), r["scores"].tolist(),
                                   predictor.names), outs[0], quality=95)
        record["detections"] = [
            {"bbox_xyxy": [round(v, 2) for v in b], "score": round(s, 4), "label": lab, "category_id": c,
             "name": n}
            for b, s, lab, c, n in zip(r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist(),
                                       r["category_ids"], r["names"])]
        print(f"{f}: {len(r['labels'])} detection(s) with score >= {score_thresh} → {outs[0]}")
    return record


@guarded
def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint of tools/train_det.py, train_seg.py or "
                   "train_multitask.py, a model.pt in its run folder, or a model.onnx of tools/export.py")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detection: lowest score kept and drawn")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                   help="fused inference: BatchNorm folded, activations fused, channels-last (default: on CPU)")
    args = add_debug_flag(p).parse_args(argv)

    files = _collect(args.images)
    predictor = mnv2_vision.load(args.ckpt, device=args.device, fuse=args.fuse)
    task = predictor.task
    out_dir = output_folder(args.out)
    remove_temp_files(out_dir)
    suffixes = {"detection": (".jpg",), "segmentation": (".png", "_overlay.jpg"), "multitask": (".jpg", ".png")}[task]
    outputs = dict(zip(files, plan_outputs(files, out_dir, suffixes, replaceable=_our_outputs(out_dir))))
    json_path = _json_path(out_dir)
    records: list[dict] = []
    skipped: list[str] = []
    for i in range(0, len(files), args.batch_size):
        batch = _decoded(files[i:i + args.batch_size], skipped)
        results = predictor.predict([image for _, image in batch], batch_size=args.batch_size,
                                    score_thresh=args.score_thresh) if batch else []
        for (f, image), r in zip(batch, results):
            records.append(_write(f, image, r, outputs[f], predictor, args.score_thresh))
    write_json(json_path, records)
    print(f"wrote {len(records)} image(s)' outputs to {out_dir} and {json_path}")
    if skipped:
        raise DataError(f"skipped {len(skipped)} of {len(files)} image(s) that could not be read: "
                        + "; ".join(skipped[:10]) + ("; ..." if len(skipped) > 10 else "")
                        + f". The other {len(records)} are in {json_path}")
    return records


def console() -> int:
    """The ``mnv2-predict`` command and ``python tools/predict.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
