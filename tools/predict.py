"""Run a trained checkpoint on image files or folders; write annotated images and a JSON of the predictions.

    python tools/predict.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt photo.jpg more_photos/
    python tools/predict.py --ckpt runs/deeplabv3_shapes/ckpt/last.ckpt image.jpg --out runs/predict

The task is read from the checkpoint's config. Detection: ``<out>/<name>.jpg`` with boxes scoring at least
``--score-thresh`` drawn, and ``<out>/predictions.json`` with every kept box (xyxy in original pixels, score, label,
COCO category id, name). Segmentation: ``<out>/<name>.png`` (palette label map), ``<out>/<name>_overlay.jpg`` and
``<out>/predictions.json`` with the pixel count of each predicted class.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

# tools/profile.py would shadow the standard library's ``profile`` (which torch imports): repository root first.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mnv2_vision.checkpoint import load_model  # noqa: E402
from mnv2_vision.cli import guarded  # noqa: E402
from mnv2_vision.data.images import load_rgb  # noqa: E402
from mnv2_vision.viz import draw_detections, overlay_segmentation  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _collect(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {list(paths)}")
    return files


@guarded
def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by tools/train_det.py or tools/train_seg.py")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detection: lowest score kept and drawn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fuse", action="store_true",
                   help="fused inference: BatchNorm folded into the convs, channels-last, inference mode")
    args = p.parse_args(argv)

    files = _collect(args.images)
    cfg, model, hparams = load_model(args.ckpt)
    model.to(args.device)
    if args.fuse:
        from mnv2_vision.deploy.fuse import fuse_for_inference

        model = fuse_for_inference(model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    if cfg.task == "detection":
        from mnv2_vision.lit.detection import categories_from, detect_images

        category_ids, names = categories_from(hparams)
        label_names = ["background", *names]
        for f in files:
            image = load_rgb(f)
            det = detect_images(model, [image], cfg.data.image_size, cfg.data.mean, cfg.data.std, cfg.eval)[0]
            keep = det["scores"] >= args.score_thresh
            boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
            drawn = draw_detections(image, boxes.numpy(), labels.tolist(), scores.tolist(), label_names)
            Image.fromarray(drawn).save(out_dir / f"{f.stem}.jpg", quality=95)
            records.append({"file": str(f), "height": image.shape[0], "width": image.shape[1], "detections": [
                {"bbox_xyxy": [round(v, 2) for v in b], "score": round(s, 4), "label": lab,
                 "category_id": category_ids[lab - 1], "name": names[lab - 1]}
                for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist())]})
            print(f"{f}: {len(labels)} detection(s) with score >= {args.score_thresh}")
    elif cfg.task == "segmentation":
        from mnv2_vision.data.voc import write_label
        from mnv2_vision.lit.segmentation import predict_segmentation, segmentation_class_names

        class_names = segmentation_class_names(cfg)
        for f in files:
            image = load_rgb(f)
            label_map = predict_segmentation(model, image, cfg)
            write_label(out_dir / f"{f.stem}.png", label_map)
            Image.fromarray(overlay_segmentation(image, label_map)).save(out_dir / f"{f.stem}_overlay.jpg", quality=95)
            ids, counts = np.unique(label_map, return_counts=True)
            records.append({"file": str(f), "height": image.shape[0], "width": image.shape[1], "pixels": {
                (class_names[i] if i < len(class_names) else str(i)): int(c) for i, c in zip(ids, counts)}})
            print(f"{f}: classes {[class_names[i] for i in ids if i < len(class_names)]}")
    else:
        raise SystemExit(f"error: tools/predict.py handles detection and segmentation checkpoints, "
                         f"not {cfg.task!r}")
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=2))
    print(f"wrote {len(files)} image(s) and {out_dir / 'predictions.json'}")
    return records


if __name__ == "__main__":
    main()
