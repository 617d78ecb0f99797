"""YOLO (ultralytics) layout: ``data.yaml``, ``images/<split>/*.jpg`` and ``labels/<split>/*.txt``.

``data.yaml`` names the classes (``names``: a list, or a dict ``{index: name}``) and the splits (``train``, ``val``,
``test``: a folder of images, a list of folders, or a ``.txt`` file listing images; relative to ``path``, itself
relative to the yaml's folder). An image's label file is its path with the last ``images`` folder replaced by
``labels`` and the suffix by ``.txt`` (ultralytics' ``img2label_paths``). A line is ``class cx cy w h`` (a box, the
centre and size as fractions of the image's width and height) or ``class x1 y1 x2 y2 ...`` (a polygon of ≥ 3
points, in fractions; its hull is the box, the polygon its segmentation). Class ``k`` is category id ``k + 1``.

Coordinates outside [0, 1] are read as they are (ultralytics refuses the whole file): training clips the box to the
image like any overflow, and ``check_data`` names it when it leaves the image by more than a pixel. An empty label
file is an image without objects (how a negative is written in this format); an image without a label file is
reported and left out, as is a label file without an image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from ..verify import Problem
from .builder import IMAGE_SUFFIXES, CocoBuilder, FormatSplit, Place, by_image, polygon_box, read_image_size

# data.yaml keys that are not splits
_NOT_SPLITS = ("path", "names", "nc", "download", "yaml_file", "channels", "kpt_shape", "flip_idx")

__all__ = ["read_yolo", "yolo_splits", "yolo_names", "write_yolo", "find_data_yaml"]


def find_data_yaml(root: Path) -> Path | None:
    """``data.yaml`` (or the one ``*.yaml`` with ``names``) in ``root``."""
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    for f in sorted(root.glob("*.yaml")):
        try:
            if isinstance(d := yaml.safe_load(f.read_text(encoding="utf-8")), dict) and "names" in d:
                return f
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
    return None


def _config(root: Path) -> tuple[Path, dict]:
    from ...errors import DataError

    path = find_data_yaml(root)
    if path is None:
        raise DataError(f"{root}: no data.yaml (YOLO layout: data.yaml with names and train/val, images/<split>/, "
                        "labels/<split>/)")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(cfg, dict) or "names" not in cfg:
        raise DataError(f"{path}: no 'names' (the class names: a list, or a dict index: name)")
    return path, cfg


def yolo_names(root: Path) -> list[str]:
    """The class names of ``data.yaml``, by class index."""
    from ...errors import DataError

    path, cfg = _config(root)
    names = cfg["names"]
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: names keys {list(names)[:5]} are not class indices") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: names indices {keys[:8]} are not 0..{len(keys) - 1}")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{path}: names is {names!r}, not a list or a dict of class names")


def yolo_splits(root: Path) -> tuple[str, ...]:
    """The splits ``data.yaml`` names: ``train``, ``val``, ``test`` and any other key whose value is a path or a
    list of paths (ultralytics knows the first three; a converted COCO dataset keeps its split names)."""
    _, cfg = _config(root)
    keys = [k for k, v in cfg.items() if k not in _NOT_SPLITS and v and isinstance(v, (str, list))]
    return tuple(sorted(keys, key=lambda k: (("train", "val", "test") + (k,)).index(k)))


def _split_images(root: Path, split: str) -> tuple[list[Path], Path]:
    """The split's image files and the folder their names are relative to."""
    from ...errors import DataError

    path, cfg = _config(root)
    if not cfg.get(split):
        raise DataError(f"{path} has no split {split!r}; it names {list(yolo_splits(root))}")
    base = path.parent / str(cfg.get("path") or "")  # an absolute path stays itself
    if not base.is_dir():  # ultralytics' path is often absolute on another machine: fall back to the yaml's folder
        base = path.parent
    entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
    images: list[Path] = []
    folders = []
    for entry in entries:
        p = base / str(entry)
        if p.is_dir():
            folders.append(p)
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text(encoding="utf-8-sig").splitlines():
                if line.strip():
                    f = Path(line.strip())
                    images.append(f if f.is_absolute() else (p.parent / f))
            folders.append(p.parent)
        else:
            raise DataError(f"{path}: {split}: {entry!r} is neither a folder nor a .txt list of images ({p})")
    image_dir = folders[0] if len(folders) == 1 else Path(os.path.commonpath([str(f) for f in folders]))
    return images, image_dir


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_yolo(root: str | os.PathLike, split: str) -> FormatSplit:
    """The ``split`` of the YOLO dataset at ``root`` as a COCO dict (module docstring for the conventions)."""
    root = Path(root)
    names = yolo_names(root)
    images, image_dir = _split_images(root, split)
    builder = CocoBuilder(names)
    problems: list[Problem] = []
    labels_used = set()
    for image in images:
        label = _label_path(image)
        if not label.is_file():
            problems.append(Problem(str(image), "unlabelled_image", f"no label file {label} (an image without "
                                    "objects needs an empty one); left out"))
            continue
        labels_used.add(label.resolve())
        try:
            h, w = read_image_size(image)
            lines = label.read_text(encoding="utf-8-sig").splitlines()  # a BOM from Windows editors
        except (OSError, UnicodeDecodeError) as e:
            kind = "unreadable_annotations" if isinstance(e, UnicodeDecodeError) else "unreadable_image"
            problems.append(Problem(str(label if kind == "unreadable_annotations" else image), kind, str(e)))
            continue
        image_id = builder.add_image(str(image.relative_to(image_dir)) if image.is_relative_to(image_dir)
                                     else str(image), h, w)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{label}:{n}"
            parsed = _parse_line(line, len(names))
            if isinstance(parsed, Problem):
                problems.append(Problem(where, parsed.kind, parsed.detail))
                continue
            cls, values = parsed
            if len(values) == 4:
                cx, cy, bw, bh = values
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                builder.add(image_id, cls + 1, box, source=where)
            else:
                pts = np.asarray(values, np.float64).reshape(-1, 2) * (w, h)
                builder.add(image_id, cls + 1, polygon_box(pts), polygon=pts, source=where)
    label_dirs = {_label_path(i).parent for i in images} or {root / "labels" / split}
    for d in sorted(label_dirs):
        for f in sorted(d.glob("*.txt")) if d.is_dir() else []:
            if f.resolve() not in labels_used:
                problems.append(Problem(str(f), "orphan_label", "label file without an image (looked for "
                                        f"{f.stem}.* in the split's image folder); left out"))
    return FormatSplit(builder.dataset(), image_dir, _label_path(image_dir / "x.jpg").parent, problems)


def _parse_line(line: str, num_names: int) -> tuple[int, list[float]] | Problem:
    tokens = line.split()
    try:
        cls_value = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return Problem("", "unreadable_annotations", f"{line.strip()[:60]!r} is not 'class cx cy w h' or "
                       "'class x1 y1 x2 y2 ...' numbers")
    if len(values) != 4 and (len(values) < 6 or len(values) % 2):
        return Problem("", "malformed_box", f"{len(tokens)} values: a box is 'class cx cy w h' (5), a polygon "
                       "'class x1 y1 ... xn yn' (odd, ≥ 7)")
    if not np.isfinite(values).all():
        return Problem("", "malformed_box", f"non-finite coordinates in {line.strip()[:60]!r}")
    if cls_value != int(cls_value) or not 0 <= cls_value < num_names:
        return Problem("", "unknown_category", f"class {tokens[0]} is not among data.yaml's {num_names} names "
                       f"(0..{num_names - 1})")
    if len(values) == 4 and (values[2] <= 0 or values[3] <= 0):
        return Problem("", "malformed_box", f"width {values[2]:g} and height {values[3]:g} must be positive")
    return int(cls_value), values


def write_yolo(splits: dict[str, tuple[dict, Path]], out: Path, place: Place) -> None:
    """Write ``splits`` (name → (COCO dict, image folder)) as a YOLO dataset in ``out``: ``data.yaml`` (names by
    class index: the categories sorted by id), ``images/<split>/`` (through ``place(src, dst)``: a link or a copy)
    and ``labels/<split>/<stem>.txt``. A single-polygon segmentation is written as a polygon line, else the box;
    crowd annotations are left out (the format has no such flag)."""
    cats = sorted(next(iter(splits.values()))[0]["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    for split, (data, image_dir) in splits.items():
        anns = by_image(data)
        for img in data["images"]:
            dst = out / "images" / split / img["file_name"]
            place(image_dir / img["file_name"], dst)
            w, h = float(img["width"]), float(img["height"])
            lines = []
            for a in anns.get(img["id"], []):
                if a.get("iscrowd"):
                    continue
                seg = a.get("segmentation")
                if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
                    pts = np.asarray(seg[0], np.float64).reshape(-1, 2) / (w, h)
                    lines.append(f"{index[a['category_id']]} " + " ".join(f"{v:.8f}" for v in pts.reshape(-1)))
                else:
                    x, y, bw, bh = a["bbox"]
                    lines.append(f"{index[a['category_id']]} {(x + bw / 2) / w:.8f} {(y + bh / 2) / h:.8f} "
                                 f"{bw / w:.8f} {bh / h:.8f}")
            label = _label_path(dst)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{line}\n" for line in lines))
    names = {i: c["name"] for i, c in enumerate(cats)}
    spec = {"path": ".", **{s: f"images/{s}" for s in splits}, "names": names}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))

