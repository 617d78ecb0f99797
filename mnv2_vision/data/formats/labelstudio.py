"""Label Studio JSON export: ``<root>/<split>.json`` (a list of tasks) and the images in ``<root>/images/``.

A task's ``data.image`` is a URL (``/data/upload/3/8f2c-cat.jpg``, ``/data/local-files/?d=dir/cat.jpg``, ``s3://...``);
its file name (the last path part, of ``d=`` for local files) is looked up in ``images/``. The first annotation
not ``was_cancelled`` is read. Results are in percent of ``original_width`` / ``original_height``:
``rectanglelabels`` ``x, y, width, height`` with ``rotation`` in degrees clockwise about the rectangle's top-left
corner (Label Studio's convention; the box is the turned rectangle's axis-aligned hull and its corners the
polygon), ``polygonlabels`` ``points`` ``[[x, y], ...]``. The class list is ``labels.txt`` or every label used in
any split, sorted (``labels.py``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from ..verify import Problem
from .builder import CocoBuilder, FormatSplit, Place, by_image, polygon_box, read_image_size, rotated_corners
from .labels import class_names, write_label_list

__all__ = ["read_labelstudio", "labelstudio_splits", "labelstudio_names", "write_labelstudio", "image_name"]

_KINDS = ("rectanglelabels", "polygonlabels")


def labelstudio_splits(root: Path) -> tuple[str, ...]:
    return tuple(sorted(f.stem for f in root.glob("*.json")))


def _tasks(path: Path) -> list:
    data = json.loads(path.read_bytes())
    if not isinstance(data, list):
        raise ValueError("not a Label Studio JSON export: the top level is not a list of tasks")
    return data


def _results(task: dict) -> list[dict]:
    for ann in task.get("annotations") or []:
        if isinstance(ann, dict) and not ann.get("was_cancelled"):
            return [r for r in ann.get("result") or [] if isinstance(r, dict)]
    return []


def _labels_of(result: dict) -> list[str]:
    value = result.get("value") or {}
    return [str(v) for v in value.get(result.get("type", ""), [])] if result.get("type") in _KINDS else []


def labelstudio_names(root: Path) -> list[str]:
    used: set[str] = set()
    if not (root / "labels.txt").is_file():
        for f in root.glob("*.json"):
            try:
                used.update(n for t in _tasks(f) if isinstance(t, dict) for r in _results(t) for n in _labels_of(r))
            except (OSError, ValueError):
                continue  # reported by read_labelstudio
    return class_names(root, used)


def image_name(url: str) -> str:
    """The file name of a task's ``data.image`` URL."""
    parsed = urlparse(url)
    if "d" in (query := parse_qs(parsed.query)):
        return Path(unquote(query["d"][0])).name
    return Path(unquote(parsed.path)).name


def read_labelstudio(root: str | os.PathLike, split: str) -> FormatSplit:
    """The tasks of ``<root>/<split>.json`` as a COCO dict (module docstring for the conventions)."""
    from ...errors import DataError

    root = Path(root)
    path = root / f"{split}.json"
    if not path.is_file():
        raise DataError(f"{path}: no such Label Studio export; {root} has {list(labelstudio_splits(root))}")
    names = labelstudio_names(root)
    builder = CocoBuilder(names)
    problems: list[Problem] = []
    try:
        tasks = _tasks(path)
    except (OSError, ValueError) as e:
        return FormatSplit(builder.dataset(), root / "images", path,
                           [Problem(str(path), "unreadable_annotations", f"{type(e).__name__}: {e}")])
    for t, task in enumerate(tasks):
        url = str((task.get("data") or {}).get("image", "")) if isinstance(task, dict) else ""
        where_task = f"{path}:task {task.get('id', t) if isinstance(task, dict) else t}"
        image = root / "images" / image_name(url)
        if not url or not image.is_file():
            problems.append(Problem(where_task, "orphan_label", f"no image {image} for {url!r}; left out"))
            continue
        results = _results(task)
        if not results and not task.get("annotations"):
            problems.append(Problem(str(image), "unlabelled_image", f"task in {path.name} has no annotation; "
                                    "left out"))
            continue
        sized = [r for r in results if r.get("original_width") and r.get("original_height")]
        try:
            size = ((int(sized[0]["original_height"]), int(sized[0]["original_width"])) if sized
                    else read_image_size(image))
        except OSError as e:
            problems.append(Problem(str(image), "unreadable_image", str(e)))
            continue
        img = builder.add_image(image.name, *size)
        h, w = size
        for r in results:
            labels = _labels_of(r)
            if not labels:
                continue  # choices, text areas, keypoints: not boxes
            where = f"{where_task}:result {r.get('id', '?')}"
            if labels[0] not in builder.cat_ids:
                problems.append(Problem(where, "unknown_category", f"label {labels[0]!r} is not in {names[:10]}"))
                continue
            v = r["value"]
            try:
                if r["type"] == "rectanglelabels":
                    x, y = float(v["x"]) * w / 100, float(v["y"]) * h / 100
                    bw, bh = float(v["width"]) * w / 100, float(v["height"]) * h / 100
                    rotation = float(v.get("rotation") or 0)
                    if rotation % 360:
                        corners = rotated_corners(x, y, x + bw, y + bh, rotation, about=(x, y))
                        builder.add(img, builder.cat_ids[labels[0]], polygon_box(corners), polygon=corners,
                                    source=where)
                    else:
                        builder.add(img, builder.cat_ids[labels[0]], (x, y, x + bw, y + bh), source=where)
                else:
                    pts = np.asarray(v["points"], np.float64) * (w / 100, h / 100)
                    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
                        raise ValueError(f"{len(pts)} points, need ≥ 3 [x, y]")
                    builder.add(img, builder.cat_ids[labels[0]], polygon_box(pts), polygon=pts, source=where)
            except (KeyError, TypeError, ValueError) as e:
                problems.append(Problem(where, "malformed_box", f"value {str(v)[:80]} is not a rectangle / polygon "
                                        f"in percent: {type(e).__name__}: {e}"))
    return FormatSplit(builder.dataset(), root / "images", path, problems)


def write_labelstudio(splits: dict[str, tuple[dict, Path]], out: Path, place: Place) -> None:
    """Write ``splits`` as ``<out>/<split>.json`` (Label Studio tasks; ``data.image`` = ``/data/upload/<name>``,
    coordinates in percent) with the images in ``<out>/images/`` and ``labels.txt``; crowd annotations left out."""
    from ...errors import DataError

    cats = sorted(next(iter(splits.values()))[0]["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in cats}
    seen: dict[str, str] = {}
    task_id = 0
    for split, (data, image_dir) in splits.items():
        anns = by_image(data)
        tasks = []
        for img in data["images"]:
            name = Path(img["file_name"]).name
            if name in seen:
                raise DataError(f"{name} is in splits {seen[name]!r} and {split!r}: images/ holds each name once")
            seen[name] = split
            place(image_dir / img["file_name"], out / "images" / name)
            w, h = float(img["width"]), float(img["height"])
            results = []
            for a in anns.get(img["id"], []):
                if a.get("iscrowd"):
                    continue
                common = {"original_width": int(w), "original_height": int(h), "image_rotation": 0,
                          "id": f"a{a['id']}", "from_name": "label", "to_name": "image"}
                seg = a.get("segmentation")
                if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
                    pts = (np.asarray(seg[0], np.float64).reshape(-1, 2) / (w, h) * 100).tolist()
                    value = {"points": pts, "closed": True, "polygonlabels": [names[a["category_id"]]]}
                    results.append({**common, "type": "polygonlabels", "value": value})
                else:
                    x, y, bw, bh = a["bbox"]
                    value = {"x": x / w * 100, "y": y / h * 100, "width": bw / w * 100, "height": bh / h * 100,
                             "rotation": 0, "rectanglelabels": [names[a["category_id"]]]}
                    results.append({**common, "type": "rectanglelabels", "value": value})
            task_id += 1
            tasks.append({"id": task_id, "data": {"image": f"/data/upload/{name}"},
                          "annotations": [{"id": task_id, "was_cancelled": False, "result": results}]})
        (out / f"{split}.json").write_text(json.dumps(tasks))
    write_label_list(out, [c["name"] for c in cats])
