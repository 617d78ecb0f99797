"""Run a trained checkpoint on image files or folders; write annotated images and a JSON of the predictions.

    python tools/predict.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt photo.jpg more_photos/
    python tools/predict.py --ckpt runs/deeplabv3_shapes/ckpt/last.ckpt image.jpg --out runs/predict

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
import sys
from pathlib import Path
from typing import Sequence

# tools/profile.py would shadow the standard library's ``profile`` (which torch imports): repository root first.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mnv2_vision.checkpoint import load_model  # noqa: E402
from mnv2_vision.cli import add_debug_flag, guarded  # noqa: E402
from mnv2_vision.data.images import load_rgb  # noqa: E402
from mnv2_vision.data.voc import write_label  # noqa: E402
from mnv2_vision.errors import CheckpointError, DataError  # noqa: E402
from mnv2_vision.files import plan_outputs, remove_temp_files, save_image, write_json  # noqa: E402
from mnv2_vision.viz import draw_detections, overlay_segmentation  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
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


@guarded
def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="a checkpoint written by tools/train_det.py, train_seg.py or train_multitask.py")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detection: lowest score kept and drawn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fuse", action="store_true",
                   help="fused inference: BatchNorm folded into the convs, channels-last, inference mode")
    args = add_debug_flag(p).parse_args(argv)

    files = _collect(args.images)
    cfg, model, hparams = load_model(args.ckpt)
    if cfg.task not in ("detection", "segmentation", "multitask"):
        raise CheckpointError(f"{args.ckpt} holds a {cfg.task} model; tools/predict.py handles detection, "
                              "segmentation and multi-task checkpoints")
    model.to(args.device)
    if args.fuse:
        from mnv2_vision.deploy.fuse import fuse_for_inference

        model = fuse_for_inference(model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out_dir)
    suffixes = {"detection": (".jpg",), "segmentation": (".png", "_overlay.jpg"),
                "multitask": (".jpg", ".png")}[cfg.task]
    outputs = plan_outputs(files, out_dir, suffixes, replaceable=_our_outputs(out_dir))
    json_path = _json_path(out_dir)
    records: list[dict] = []
    skipped: list[str] = []
    if cfg.task in ("detection", "multitask"):
        from mnv2_vision.lit.detection import categories_from, detect_images

        category_ids, names = categories_from(hparams)
        label_names = ["background", *names]
    if cfg.task in ("segmentation", "multitask"):
        from mnv2_vision.lit.segmentation import predict_segmentation, segmentation_class_names

        class_names = list(hparams.get("class_names") or segmentation_class_names(cfg))
    for f, outs in zip(files, outputs):
        try:
            image = load_rgb(f)
        except (ValueError, OSError) as e:  # one bad file must not cost the results of the others
            log.warning("skipping %s", e)
            skipped.append(str(e))
            continue
        record = {"file": str(f), "height": image.shape[0], "width": image.shape[1],
                  "outputs": [str(o) for o in outs]}
        if cfg.task == "multitask":  # one forward pass: boxes drawn over the mask overlay
            from mnv2_vision.lit.multitask import predict_pair

            det, label_map = predict_pair(model, image, cfg.data.image_size, cfg.data.mean, cfg.data.std, cfg.eval)
            background, mask_file = overlay_segmentation(image, label_map), outs[1]
        elif cfg.task == "detection":
            det = detect_images(model, [image], cfg.data.image_size, cfg.data.mean, cfg.data.std, cfg.eval)[0]
            background = image
        else:
            label_map, background, mask_file = predict_segmentation(model, image, cfg), None, outs[0]
        if cfg.task in ("detection", "multitask"):
            keep = det["scores"] >= args.score_thresh
            boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
            save_image(draw_detections(background, boxes.numpy(), labels.tolist(), scores.tolist(), label_names),
                       outs[0], quality=95)
            record["detections"] = [
                {"bbox_xyxy": [round(v, 2) for v in b], "score": round(s, 4), "label": lab,
                 "category_id": category_ids[lab - 1], "name": names[lab - 1]}
                for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())]
            print(f"{f}: {len(labels)} detection(s) with score >= {args.score_thresh} → {outs[0]}")
        if cfg.task in ("segmentation", "multitask"):
            write_label(mask_file, label_map)
            if cfg.task == "segmentation":
                save_image(overlay_segmentation(image, label_map), outs[1], quality=95)
            ids, counts = np.unique(label_map, return_counts=True)
            record["pixels"] = {(class_names[i] if i < len(class_names) else str(i)): int(c)
                                for i, c in zip(ids, counts)}
            print(f"{f}: classes {[class_names[i] for i in ids if i < len(class_names)]} → {mask_file}")
        records.append(record)
    write_json(json_path, records)
    print(f"wrote {len(records)} image(s)' outputs to {out_dir} and {json_path}")
    if skipped:
        raise DataError(f"skipped {len(skipped)} of {len(files)} image(s) that could not be read: "
                        + "; ".join(skipped[:10]) + ("; ..." if len(skipped) > 10 else "")
                        + f". The other {len(records)} are in {json_path}")
    return records


if __name__ == "__main__":
    main()
