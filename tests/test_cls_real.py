"""Real images: object crops cut from COCO boxes ($MNV2_REAL_DATA/coco128) through the ImageFolder reader, and a
classifier that must fit 64 of them (top-1 ≥ 0.95 on those same crops, evaluated with the evaluation transform)."""
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from mnv2_vision.data.classification.datasets import ImageFolderClassification
from mnv2_vision.data.io.images import load_rgb

from helpers import tool as _tool

REAL = os.environ.get("MNV2_REAL_DATA")
pytestmark = pytest.mark.skipif(not REAL, reason="MNV2_REAL_DATA is not set (folder holding coco128/)")
PER_CLASS, NUM_CLASSES, MIN_SIDE = 16, 4, 32


def _cut_crops(out: Path) -> dict[str, int]:
    """16 crops (box ≥ 32 px a side, not crowd) of each of the 4 categories with the most such boxes, by annotation
    id, written as <out>/train/<category>/<ann id>.jpg. Returns the crops per category."""
    coco = Path(REAL) / "coco128"
    data = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    by_cat: dict[int, list[dict]] = defaultdict(list)
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        if a["bbox"][2] >= MIN_SIDE and a["bbox"][3] >= MIN_SIDE and not a.get("iscrowd", 0):
            by_cat[a["category_id"]].append(a)
    chosen = sorted(by_cat, key=lambda c: (-len(by_cat[c]), c))[:NUM_CLASSES]
    counts = {}
    for cat in chosen:
        folder = out / "train" / names[cat].replace(" ", "_")
        folder.mkdir(parents=True)
        for a in by_cat[cat][:PER_CLASS]:
            image = load_rgb(coco / "train2017" / files[a["image_id"]])  # EXIF-upright RGB, as the boxes are
            x, y, w, h = (int(round(v)) for v in a["bbox"])
            Image.fromarray(image[y:y + h, x:x + w]).save(folder / f"{a['id']}.jpg", quality=95)
        counts[folder.name] = len(list(folder.iterdir()))
    return counts


def test_crops_read_back_through_imagefolder(tmp_path):
    counts = _cut_crops(tmp_path)
    assert sum(counts.values()) == PER_CLASS * NUM_CLASSES and set(counts.values()) == {PER_CLASS}
    ds = ImageFolderClassification(tmp_path, "train")
    assert ds.classes == sorted(counts) and len(ds) == 64
    image, label = ds[0]
    assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= MIN_SIDE - 1


@pytest.mark.slow
def test_classifier_fits_64_real_crops(tmp_path):
    _cut_crops(tmp_path / "crops")
    # Fitting, not generalising: validation reads the training crops themselves (evaluation transform).
    result = _tool("train_cls").main([
        "--cfg", "mobilenet_v2_shapes", "--out", str(tmp_path / "run"), "--set", "data.synthetic=false",
        "--set", f"data.root={tmp_path / 'crops'}", "--set", "data.val_split=train", "--set", "data.augment=none",
        "--set", "data.image_size=64", "--set", "data.batch_size=16", "--set", "data.val_batch_size=64",
        "--set", "optim.name=adamw", "--set", "optim.lr=0.002", "--set", "optim.weight_decay=0.0",
        "--set", "sched.warmup_epochs=0", "--set", "trainer.max_epochs=30",
        "--set", "trainer.check_val_every_n_epoch=1"])
    assert result["best_top1"] >= 0.95, result["history"]
