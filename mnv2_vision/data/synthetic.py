"""The built-in shapes dataset: seeded coloured shapes on textured backgrounds, written in real dataset layouts.

One generator feeds three layouts so the demo configs and the tests go through the same loaders as real data:

- ``coco/``: ``train2017/*.jpg``, ``val2017/*.jpg`` and ``annotations/instances_{train,val}2017.json`` with
  non-contiguous category ids, a few negative images and RLE instance masks of the visible pixels;
- ``VOC2012/``: the same scenes as ``JPEGImages/*.jpg``, palette PNG label maps in ``SegmentationClass/`` (0 =
  background, 1..K = ``SHAPE_CLASSES``, 255 on a ~3-px band along every object boundary, like VOC) and
  ``ImageSets/Segmentation/{train,val,trainval}.txt``;
- ``classification/{train,val}/<class>/*.jpg``: one object per image, for ``torchvision.datasets.ImageFolder``.

Every scene draws from its own ``numpy`` Generator seeded with ``(seed, split, index)``, so a scene does not depend
on how many others are generated and the same seed gives byte-identical files.
"""
from __future__ import annotations

import argparse
import colorsys
import contextlib
import io
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from scipy import ndimage

from .io.labels import voc_palette

__all__ = [
    "SHAPE_CLASSES", "CATEGORY_IDS", "VERSION", "ShapeObject", "Scene", "render_scene",
    "render_classification_image", "generate_shapes", "ensure_shapes", "default_cache_dir", "DEFAULT_COUNTS",
]

VERSION = 2  # 2: 2,000 training scenes and 500 classification images per class (was 480 / 100)
# Alphabetical, so ImageFolder's class index (sorted folder names) equals the index here and VOC label = index + 1.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "star", "triangle")
# Deliberately not contiguous (like COCO's 1..90 with gaps) so loaders must map category ids to labels and back.
CATEGORY_IDS: tuple[int, ...] = (1, 3, 4, 7)

_SPLIT_CODE = {"train": 0, "val": 1, "cls_train": 2, "cls_val": 3}
_COCO_SPLIT = {"train": "train2017", "val": "val2017"}
_JPEG_QUALITY = 90
_SIZE_RANGE = (224, 320)  # scene width and height, each drawn independently
# Object diameter as a fraction of the shorter image side, uniform: a log-uniform draw would make a third of the
# objects smaller than 15 % of the side, too many for SSDLite's coarsest-stride anchors to learn in a CPU demo.
_REL_SIZE = (0.08, 0.6)
_MAX_OCCLUSION = 0.3  # an earlier object must keep >= 70 % of its pixels visible
_NEGATIVE_EVERY = 20  # scene index i with i % 20 == 1 has no objects (so even 2-scene splits hold a negative)
_MIN_BG_CONTRAST = 110.0  # RGB distance between an object's colour and the background's mean colour
# What ensure_shapes writes into the cache (and main's defaults): detection scenes per split, images per class
DEFAULT_COUNTS = {"num_train": 2000, "num_val": 96, "num_cls_train": 500, "num_cls_val": 25}


def _unit_shape(name: str) -> np.ndarray:
    """Vertices of a shape of circumradius ~1 centred on the origin; (N, 2) as (x, y), y pointing down."""
    if name == "circle":
        t = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if name == "triangle":
        t = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_CLASSES}")


_UNIT_SHAPES = {name: _unit_shape(name) for name in SHAPE_CLASSES}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. ``label`` indexes ``SHAPE_CLASSES``; ``bbox`` is the full shape's tight xyxy box (inclusive
    pixel bounds + 1, so ``x1 - x0`` is the width in pixels); ``mask`` is its visible pixels (H, W) bool and
    ``full_area`` the pixel count before later objects covered part of it."""
    label: int
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    full_area: int


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    objects: list[ShapeObject]

    def label_map(self, border: int = 1) -> np.ndarray:
        """VOC-style (H, W) uint8 labels: 0 background, label + 1 per object, 255 on boundaries.

        The ignore band is each object's outer pixel ring dilated by ``border`` px: 3 px across an object/background
        edge, 4 px between two touching objects (both rings), none along the image border, as VOC draws it.
        """
        h, w = self.image.shape[:2]
        instance = np.zeros((h, w), np.int32)
        labels = np.zeros((h, w), np.uint8)
        for i, obj in enumerate(self.objects, start=1):
            instance[obj.mask] = i
            labels[obj.mask] = obj.label + 1
        if border > 0 and self.objects:
            cross = ndimage.generate_binary_structure(2, 1)
            differs = ndimage.maximum_filter(instance, footprint=cross, mode="nearest") != ndimage.minimum_filter(
                instance, footprint=cross, mode="nearest")
            ring = differs & (instance > 0)
            labels[ndimage.binary_dilation(ring, np.ones((3, 3), bool), iterations=border)] = 255
        return labels


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float],
                   value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb) * 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured but calm background, (H, W, 3) float: gradient, soft blobs or faint stripes, plus pixel noise."""
    base = _random_colour(rng, (0.0, 0.5), (0.25, 0.9)).astype(np.float32)
    kind = rng.integers(3)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    if kind == 0:  # linear gradient towards a nearby colour
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)
        bg = base + t[..., None] * rng.uniform(-60, 60, 3).astype(np.float32)
    elif kind == 1:  # soft colour blobs: a coarse random grid upsampled smoothly
        grid = rng.uniform(-35, 35, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
        blobs = np.asarray(Image.fromarray(np.uint8(grid + 128)).resize((w, h), Image.BICUBIC), np.float32) - 128
        bg = base + blobs
    else:  # faint stripes at a random angle and period
        angle = rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * np.float32(2 * np.pi / rng.uniform(8, 40))
        bg = base + (np.sin(phase) * np.float32(rng.uniform(8, 25)))[..., None]
    return bg + rng.standard_normal((h, w, 3), dtype=np.float32) * 5


def _object_colour(rng: np.random.Generator, bg_mean: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """A saturated colour far from the background and, where possible, from the other objects in the image."""
    colour = _random_colour(rng, (0.55, 1.0), (0.45, 1.0))
    for _ in range(50):
        far_bg = np.linalg.norm(colour - bg_mean) >= _MIN_BG_CONTRAST
        if far_bg and all(np.linalg.norm(colour - o) >= 60 for o in others):
            break
        colour = _random_colour(rng, (0.55, 1.0), (0.45, 1.0))
    return colour


def _shape_polygon(rng: np.random.Generator, name: str, diameter: float, w: int, h: int) -> np.ndarray:
    """Rotated, slightly stretched vertices of ``name`` at a random position that keeps the shape inside the image."""
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (_UNIT_SHAPES[name] * [aspect, 1 / aspect]) @ rot.T * (diameter / 2)
    lo, hi = pts.min(0), pts.max(0)
    # Shrink the shape if it could not fit (only possible for the largest sizes on the narrowest images).
    fit = min(1.0, (w - 2) / (hi[0] - lo[0]), (h - 2) / (hi[1] - lo[1]))
    pts, lo, hi = pts * fit, lo * fit, hi * fit
    centre = rng.uniform([-lo[0], -lo[1]], [w - 1 - hi[0], h - 1 - hi[1]])
    return pts + centre


def _rasterise(poly: np.ndarray, w: int, h: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in poly.round(2).tolist()], fill=1)
    return np.asarray(canvas, bool)


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Fill ``mask`` with a solid-ish colour: mild linear shading and pixel noise, so objects are not flat stickers."""
    ys, xs = np.nonzero(mask)
    span = max(xs.max() - xs.min(), ys.max() - ys.min(), 1)
    direction = rng.normal(size=2)
    shade = ((xs - xs.mean()) * direction[0] + (ys - ys.mean()) * direction[1]) / span / np.linalg.norm(direction)
    image[ys, xs] = colour + shade[:, None] * rng.uniform(10, 40) + rng.normal(0, 4, (len(ys), 3))


def render_scene(seed: int, split: str, index: int) -> Scene:
    """Scene ``index`` of ``split`` ("train" | "val"): 1-4 shapes (none on every 20th) on a textured background.

    Objects are painted in order; a new object is accepted only if every earlier one keeps at least 70 % of its
    pixels, so occlusion stays below 30 %. Pure function of its arguments.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    w, h = (int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, 2))
    image = _background(rng, h, w)
    bg_mean = image.reshape(-1, 3).mean(0)
    num_objects = 0 if index % _NEGATIVE_EVERY == 1 else int(rng.integers(1, 5))
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(num_objects):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        diameter = min(w, h) * rng.uniform(*_REL_SIZE)
        for _attempt in range(30):
            new = _rasterise(_shape_polygon(rng, SHAPE_CLASSES[label], diameter, w, h), w, h)
            if all((vis & ~new).sum() >= (1 - _MAX_OCCLUSION) * full.sum() for vis, full in zip(visible, full_masks)):
                break
        else:
            continue  # no placement with acceptable occlusion: the image gets one object fewer
        colour = _object_colour(rng, bg_mean, colours)
        _paint(rng, image, new, colour)
        visible = [vis & ~new for vis in visible] + [new]
        full_masks.append(new)
        labels.append(label)
        colours.append(colour)
    objects = []
    for label, full, vis in zip(labels, full_masks, visible):
        ys, xs = np.nonzero(full)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(ShapeObject(label, box, vis, len(xs)))
    return Scene(np.clip(image, 0, 255).round().astype(np.uint8), objects)


def render_classification_image(seed: int, split: str, label: int, index: int) -> np.ndarray:
    """One (S, S, 3) uint8 image, S in [64, 96], holding a single ``SHAPE_CLASSES[label]`` of varied size and colour."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[f"cls_{split}"], label, index])
    side = int(rng.integers(64, 97))
    image = _background(rng, side, side)
    diameter = side * rng.uniform(0.35, 0.9)
    mask = _rasterise(_shape_polygon(rng, SHAPE_CLASSES[label], diameter, side, side), side, side)
    _paint(rng, image, mask, _object_colour(rng, image.reshape(-1, 3).mean(0), []))
    return np.clip(image, 0, 255).round().astype(np.uint8)


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")), encoding="utf-8")


def _write_detection_splits(root: Path, seed: int, counts: dict[str, int]) -> dict[str, int]:
    coco, voc = root / "coco", root / "VOC2012"
    for sub in (coco / "annotations", voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets/Segmentation"):
        sub.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, SHAPE_CLASSES)]
    stats: dict[str, int] = {}
    image_id = ann_id = 0  # ids are unique across splits, as in COCO
    for split, count in counts.items():
        (coco / _COCO_SPLIT[split]).mkdir(exist_ok=True)
        images, annotations, stems = [], [], []
        for index in range(count):
            scene = render_scene(seed, split, index)
            image_id += 1
            stem = f"{image_id:012d}"
            h, w = scene.image.shape[:2]
            jpeg = _jpeg_bytes(scene.image)
            (coco / _COCO_SPLIT[split] / f"{stem}.jpg").write_bytes(jpeg)
            (voc / "JPEGImages" / f"{stem}.jpg").write_bytes(jpeg)
            label_png = Image.fromarray(scene.label_map(), mode="P")
            label_png.putpalette(palette)  # without one Pillow drops the indices (docs/design.md#label-pngs)
            label_png.save(voc / "SegmentationClass" / f"{stem}.png")
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": w, "height": h})
            stems.append(stem)
            for obj in scene.objects:
                ann_id += 1
                rle = mask_utils.encode(np.asfortranarray(obj.mask, dtype=np.uint8))
                x0, y0, x1, y1 = obj.bbox
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[obj.label],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(obj.mask.sum()),
                    "iscrowd": 0, "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                })
        _write_json(coco / "annotations" / f"instances_{_COCO_SPLIT[split]}.json", {
            "info": {"description": "mnv2_vision built-in shapes", "version": str(VERSION), "seed": seed},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories,
        })
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
        stats[f"{split}_images"] = count
        stats[f"{split}_objects"] = len(annotations)
        stats[f"{split}_negatives"] = count - len({a["image_id"] for a in annotations})
    sets = voc / "ImageSets/Segmentation"
    (sets / "trainval.txt").write_text((sets / "train.txt").read_text() + (sets / "val.txt").read_text())
    return stats


def generate_shapes(root: Path, *, seed: int = 0, num_train: int = DEFAULT_COUNTS["num_train"],
                    num_val: int = DEFAULT_COUNTS["num_val"], num_cls_train: int = DEFAULT_COUNTS["num_cls_train"],
                    num_cls_val: int = DEFAULT_COUNTS["num_cls_val"]) -> Path:
    """Write the shapes dataset (COCO, VOC 2012 and ImageFolder layouts plus ``meta.json``) into ``root``.

    Args:
        root: output folder, created if missing; existing files with the same names are overwritten.
        seed: non-negative; the same seed gives byte-identical files.
        num_train, num_val: detection/segmentation scenes per split.
        num_cls_train, num_cls_val: classification images per class and split.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if min(num_train, num_val, num_cls_train, num_cls_val) < 0:
        raise ValueError("image counts must be non-negative")
    root = Path(root)
    stats = _write_detection_splits(root, seed, {"train": num_train, "val": num_val})
    for split, count in (("train", num_cls_train), ("val", num_cls_val)):
        for label, name in enumerate(SHAPE_CLASSES):
            folder = root / "classification" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                (folder / f"{index:05d}.jpg").write_bytes(_jpeg_bytes(render_classification_image(seed, split, label,
                                                                                                  index)))
    _write_json(root / "meta.json", {
        "version": VERSION, "seed": seed, "classes": list(SHAPE_CLASSES), "category_ids": list(CATEGORY_IDS),
        "counts": {**stats, "cls_train_per_class": num_cls_train, "cls_val_per_class": num_cls_val},
    })
    return root


def default_cache_dir() -> Path:
    """``$MNV2_CACHE`` if set, else ``~/.cache/mnv2_vision``."""
    return Path(os.environ.get("MNV2_CACHE") or Path.home() / ".cache" / "mnv2_vision")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes where the OS offers ``flock``; elsewhere the atomic rename alone keeps the
    cache consistent (a concurrent generator may then duplicate the work)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_shapes(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Return ``<cache>/shapes-v<VERSION>-seed<seed>``, generating it (default sizes) on first use.

    Generation goes into a temporary sibling folder that is renamed into place only when complete, so an interrupted
    run never leaves a half dataset; leftovers of such runs are removed by the next generator.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"shapes-v{VERSION}-seed{seed}"
    final = cache / name
    if (final / "meta.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{name}.lock"):
        if (final / "meta.json").is_file():  # another process finished while we waited for the lock
            return final
        if final.exists():
            raise RuntimeError(f"{final} exists but has no meta.json (not written by this generator); delete it")
        for stale in cache.glob(f".{name}.tmp-*"):  # we hold the lock, so these are leftovers of interrupted runs
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        c = DEFAULT_COUNTS
        images = c["num_train"] + c["num_val"] + (c["num_cls_train"] + c["num_cls_val"]) * len(SHAPE_CLASSES)
        # ~40 s of silence would look like a hang: say what happens, and that it happens once
        print(f"generating the built-in shapes dataset ({images:,} images) into {final}; this happens once, later "
              "runs reuse it", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            generate_shapes(tmp, seed=seed)
            os.replace(tmp, final)
        except OSError:
            # A generator that did not share our lock may have renamed its copy into place first: use that one.
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "meta.json").is_file():
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"built-in shapes dataset ready in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the built-in shapes dataset (COCO, VOC and ImageFolder).")
    parser.add_argument("--root", type=Path, help="output folder; default: the cache folder used by ensure_shapes "
                        "(which always holds the default counts)")
    parser.add_argument("--seed", type=int, default=0)
    counts = DEFAULT_COUNTS
    for key, default in counts.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=default, help="needs --root")
    args = parser.parse_args(argv)
    if args.root is None:
        if any(getattr(args, key) != default for key, default in counts.items()):
            parser.error("counts other than the defaults need --root (the cache holds the default dataset)")
        root = ensure_shapes(seed=args.seed)
    else:
        root = generate_shapes(args.root, seed=args.seed, **{key: getattr(args, key) for key in counts})
    print(json.dumps(json.loads((root / "meta.json").read_text()), indent=1))
    print(root)


if __name__ == "__main__":
    main()
