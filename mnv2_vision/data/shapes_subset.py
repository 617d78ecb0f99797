"""The built-in shapes scenes restricted to some of their classes, in the COCO layout: data for fine-tuning studies.

A fine-tuning experiment needs a detector trained on some classes and a dataset of *other* classes. Dropping the
annotations of the unwanted classes would not do: their objects would stay in the pixels, labelled as background.
``write_shapes_subset`` instead keeps only the scenes whose every object belongs to ``classes`` (scenes without
objects are left out too), rendering scenes with ``synthetic.render_scene`` in index order until it has enough. The
scenes are the same as the built-in dataset's of the same seed and split, so a subset of ``n`` scenes is the first
``n`` of a larger one. Category ids and names are those of ``synthetic.CATEGORY_IDS`` / ``SHAPE_CLASSES``.

About a quarter of the scenes hold only circles and squares (1-4 objects each: ``Σ 0.5**n / 4``), so 500 scenes
of two classes take about 2,100 renders.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

from PIL import Image

from .synthetic import CATEGORY_IDS, SHAPE_CLASSES, render_scene

__all__ = ["write_shapes_subset"]

_SPLITS = {"train": "train2017", "val": "val2017"}
_MAX_RENDERS_PER_SCENE = 64  # a class subset of 1 of 4 classes keeps ~1 scene in 9; 64 is far above any subset


def write_shapes_subset(root: str | Path, classes: Sequence[str], *, num_train: int, num_val: int,
                        seed: int = 0) -> Path:
    """Write ``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{train,val}2017.json``.

    Args:
        root: output folder (created); files of the same names are overwritten.
        classes: names from ``SHAPE_CLASSES``; the annotation files list only these categories.
        num_train, num_val: scenes to keep per split.
        seed: the shapes seed (``synthetic.ensure_shapes``'s dataset is seed 0).

    Returns ``root``, ready for ``data.root`` with ``data.format: coco`` and the default split names.
    """
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must name some of {list(SHAPE_CLASSES)}, got {list(classes)}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be ≥ 1, got {num_train} and {num_val}")
    root = Path(root)
    keep = {SHAPE_CLASSES.index(c) for c in classes}
    categories = [{"id": CATEGORY_IDS[i], "name": SHAPE_CLASSES[i], "supercategory": "shape"} for i in sorted(keep)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_id = ann_id = 0
    for split, count in (("train", num_train), ("val", num_val)):
        folder = root / _SPLITS[split]
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        index = 0
        while len(images) < count:
            if index >= count * _MAX_RENDERS_PER_SCENE:
                raise RuntimeError(f"only {len(images)} of {index} {split} scenes hold nothing but {list(classes)}")
            scene = render_scene(seed, split, index)
            index += 1
            if not scene.objects or any(obj.label not in keep for obj in scene.objects):
                continue
            image_id += 1
            name = f"{image_id:012d}.jpg"
            buf = io.BytesIO()
            Image.fromarray(scene.image).save(buf, "JPEG", quality=90)
            (folder / name).write_bytes(buf.getvalue())
            h, w = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": name, "width": w, "height": h, "scene": index - 1})
            for obj in scene.objects:
                ann_id += 1
                x0, y0, x1, y1 = obj.bbox
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[obj.label],
                                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                    "area": float(obj.mask.sum()), "iscrowd": 0})
        ann = {"info": {"description": f"mnv2_vision shapes restricted to {', '.join(classes)}", "seed": seed},
               "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{_SPLITS[split]}.json").write_text(json.dumps(ann), encoding="utf-8")
    return root
