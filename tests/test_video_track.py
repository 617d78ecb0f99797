"""``--track`` on a detector that sees the shapes: each object keeps one track id in ≥ 95 % of the frames where it is
detected (issue #26). The detector is trained here on moving-shapes clips of other seeds (a few hundred steps)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnv2_vision.data.synthetic import CATEGORY_IDS, SHAPE_CLASSES
from mnv2_vision.data.synthetic_video import render_moving_shapes, write_shapes_video
from torchvision.ops import box_iou

from helpers import sets, tool, train

pytestmark = pytest.mark.slow


def _coco_split(root: Path, split: str, seeds: range, frames: int) -> None:
    """Clips of ``seeds`` as a COCO split: every frame an image, every object a box."""
    folder = root / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for seed in seeds:
        clip = render_moving_shapes(seed, frames)
        for t, frame in enumerate(clip.frames):
            image_id = len(images) + 1
            name = f"{seed:03d}_{t:03d}.jpg"
            Image.fromarray(frame).save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": frame.shape[0], "width": frame.shape[1]})
            for box, label in zip(clip.boxes[t].tolist(), clip.labels.tolist()):
                x0, y0, x1, y1 = box
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                    "category_id": CATEGORY_IDS[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": (x1 - x0) * (y1 - y0)})
    (root / "annotations").mkdir(exist_ok=True)
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, SHAPE_CLASSES)]
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
