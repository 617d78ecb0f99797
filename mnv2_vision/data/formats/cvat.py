"""CVAT for images 1.1: ``annotations.xml`` and ``images/`` (CVAT's export with images saved).

Labels come from ``<meta>``'s ``<label><name>`` list (else the names used, sorted). Each ``<image>``'s ``subset``
attribute is its split (``default`` when absent). ``<box>`` is ``xtl ytl xbr ybr`` in continuous pixels; a
``rotation`` (degrees, clockwise about the box centre) is read as the axis-aligned hull of the turned box, and its
four corners become the annotation's polygon (so painted masks follow the turned box). ``<polygon>`` points
``x,y;x,y;...`` become the segmentation and their hull the box. Other shapes (points, polylines, ellipses, masks,
cuboids) are reported and left out.
"""
from __future__ import annotations

import os
from pathlib import Path
from xml.etree.ElementTree import Element, ElementTree, SubElement, indent

import numpy as np
from defusedxml import ElementTree as SafeET

from ..verify import Problem
from .builder import CocoBuilder, FormatSplit, Place, by_image, polygon_box, read_image_size, rotated_corners

__all__ = ["CVAT_FILE", "read_cvat", "cvat_splits", "cvat_names", "write_cvat"]

CVAT_FILE = "annotations.xml"
_OTHER_SHAPES = ("points", "polyline", "ellipse", "mask", "cuboid", "skeleton", "tag")


def _tree(root: Path) -> Element:
    from ...errors import DataError

    path = root / CVAT_FILE
    try:
        return SafeET.parse(path).getroot()
    except (OSError, SafeET.ParseError, ValueError) as e:
        raise DataError(f"cannot read CVAT annotations {path}: {type(e).__name__}: {e}") from e


def cvat_splits(root: Path, tree: Element | None = None) -> tuple[str, ...]:
    tree = _tree(root) if tree is None else tree
    return tuple(sorted({im.get("subset") or "default" for im in tree.iter("image")}))


def cvat_names(root: Path, tree: Element | None = None) -> list[str]:
    tree = _tree(root) if tree is None else tree
    listed = [(lab.findtext("name") or "").strip() for lab in tree.iterfind("meta/*/labels/label")]
    if listed:
        return list(dict.fromkeys(n for n in listed if n))
    return sorted({s.get("label", "") for im in tree.iter("image") for s in im} - {""})


def read_cvat(root: str | os.PathLike, split: str) -> FormatSplit:
    """The images of ``split`` (``subset``) of ``<root>/annotations.xml`` as a COCO dict (module docstring)."""
    from ...errors import DataError

    root = Path(root)
    tree = _tree(root)
    names = cvat_names(root, tree)
    builder = CocoBuilder(names)
    problems: list[Problem] = []
    source = root / CVAT_FILE
    images = [im for im in tree.iter("image") if (im.get("subset") or "default") == split]
    if not images:
        raise DataError(f"{source} has no image of subset {split!r}; it has {list(cvat_splits(root, tree))}")
    listed = set()
    for im in images:
        name = im.get("name", "")
        listed.add(name)
        path = root / "images" / name
        if not path.is_file():
            problems.append(Problem(f"{source}:image {name}", "orphan_label", f"no image file {path}; left out"))
            continue
        try:
            size = (int(im.get("height")), int(im.get("width")))
        except (TypeError, ValueError):
            try:
                size = read_image_size(path)
            except OSError as e:
                problems.append(Problem(str(path), "unreadable_image", str(e)))
                continue
        img = builder.add_image(name, *size)
        for n, shape in enumerate(im, 1):
            where = f"{source}:image {name}:{shape.tag} {n}"
            label = shape.get("label", "")
            if shape.tag in _OTHER_SHAPES:
                problems.append(Problem(where, "unsupported_shape", f"a {shape.tag} is not a box or polygon; left out"))
                continue
            if shape.tag not in ("box", "polygon"):
                continue
            if label not in builder.cat_ids:
                problems.append(Problem(where, "unknown_category", f"label {label!r} is not in {names[:10]}"))
                continue
            try:
                if shape.tag == "box":
                    x0, y0, x1, y1 = (float(shape.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                    rotation = float(shape.get("rotation") or 0)
                    if rotation % 360:
                        corners = rotated_corners(x0, y0, x1, y1, rotation)
                        builder.add(img, builder.cat_ids[label], polygon_box(corners), polygon=corners, source=where)
                    else:
                        builder.add(img, builder.cat_ids[label], (x0, y0, x1, y1), source=where)
                else:
                    pts = np.array([[float(v) for v in p.split(",")] for p in shape.get("points", "").split(";")])
                    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
                        raise ValueError("fewer than 3 x,y points")
                    builder.add(img, builder.cat_ids[label], polygon_box(pts), polygon=pts, source=where)
            except (TypeError, ValueError) as e:
                problems.append(Problem(where, "malformed_box", f"coordinates not numbers: {e}"))
    if split == "default" or len(cvat_splits(root, tree)) == 1:  # images in images/ that no <image> lists
        listed = {im.get("name") for im in tree.iter("image")}
        for f in sorted((root / "images").glob("*")) if (root / "images").is_dir() else []:
            if f.is_file() and f.name not in listed:
                problems.append(Problem(str(f), "unlabelled_image", f"not listed in {source.name}; left out"))
    return FormatSplit(builder.dataset(), root / "images", source, problems)


def write_cvat(splits: dict[str, tuple[dict, Path]], out: Path, place: Place) -> None:
    """Write ``splits`` as one CVAT for images 1.1 file ``annotations.xml`` (split = ``subset``) and ``images/``;
    a single-polygon segmentation is written as a ``<polygon>``, else the ``<box>``; crowd annotations are left
    out. Image names must be unique across the splits."""
    from ...errors import DataError

    cats = sorted(next(iter(splits.values()))[0]["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in cats}
    root = Element("annotations")
    SubElement(root, "version").text = "1.1"
    labels = SubElement(SubElement(SubElement(root, "meta"), "task"), "labels")
    for c in cats:
        SubElement(SubElement(labels, "label"), "name").text = c["name"]
    seen: dict[str, str] = {}
    n = 0
    for split, (data, image_dir) in splits.items():
        anns = by_image(data)
        for img in data["images"]:
            name = img["file_name"]
            if name in seen:
                raise DataError(f"{name} is in splits {seen[name]!r} and {split!r}: CVAT names images once")
            seen[name] = split
            place(image_dir / name, out / "images" / name)
            el = SubElement(root, "image", id=str(n), name=name, width=str(img["width"]),
                            height=str(img["height"]), subset=split)
            n += 1
            for a in anns.get(img["id"], []):
                if a.get("iscrowd"):
                    continue
                seg = a.get("segmentation")
                common = {"label": names[a["category_id"]], "occluded": "0", "source": "manual", "z_order": "0"}
                if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
                    pts = np.asarray(seg[0], np.float64).reshape(-1, 2)
                    SubElement(el, "polygon", points=";".join(f"{x:.2f},{y:.2f}" for x, y in pts), **common)
                else:
                    x, y, w, h = a["bbox"]
                    SubElement(el, "box", xtl=f"{x:.2f}", ytl=f"{y:.2f}", xbr=f"{x + w:.2f}", ybr=f"{y + h:.2f}",
                               rotation="0.0", **common)
    indent(root)
    out.mkdir(parents=True, exist_ok=True)
    ElementTree(root).write(out / CVAT_FILE, encoding="utf-8", xml_declaration=True)
