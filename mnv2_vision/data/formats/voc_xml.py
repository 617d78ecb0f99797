"""PASCAL VOC detection layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt``
(the VOC devkit's own layout, which labelImg, CVAT and Roboflow export; the split lists name the ids).

Coordinates are the devkit's 1-based, inclusive pixel indices: ``xmin = 1, xmax = W`` covers the whole width, so a
box is read as ``(xmin - 1, ymin - 1, xmax, ymax)`` in continuous pixels (as detectron2's and torchvision's VOC
readers do) and written back rounded to whole pixels (≤ 0.5 px off, plus the clip to the image). Fractional values,
which some tools write, are read as they are. ``difficult`` objects are kept as crowd annotations (``iscrowd`` 1):
training does not learn from them and COCOeval ignores detections that match them, which is the VOC protocol's
"ignored, not penalised" (the match uses COCO's crowd rule: intersection over the detection's area). The class list
is ``labels.txt`` or the names in every XML file (``labels.py``).
"""
from __future__ import annotations

import os
from pathlib import Path
from xml.etree.ElementTree import Element, ElementTree, SubElement, indent

from defusedxml import ElementTree as SafeET

from ..verify import Problem
from .builder import IMAGE_SUFFIXES, CocoBuilder, FormatSplit, Place, by_image, read_image_size
from .labels import class_names

__all__ = ["read_voc_xml", "voc_xml_splits", "voc_xml_names", "write_voc_xml"]


def _lists(root: Path) -> Path:
    return root / "ImageSets" / "Main"


def voc_xml_splits(root: Path) -> tuple[str, ...]:
    """The split lists of ``ImageSets/Main`` (``<class>_<split>.txt`` files excluded)."""
    return tuple(sorted(f.stem for f in _lists(root).glob("*.txt") if "_" not in f.stem))


def _parse(path: Path) -> Element:
    return SafeET.parse(path).getroot()


def voc_xml_names(root: Path) -> list[str]:
    """The class names: ``labels.txt``, else every object name in ``Annotations/``, sorted."""
    used: set[str] = set()
    if (root / "labels.txt").is_file():
        return class_names(root, used)
    for f in sorted((root / "Annotations").glob("*.xml")):
        try:
            used.update((o.findtext("name") or "").strip() for o in _parse(f).iter("object"))
        except (OSError, SafeET.ParseError, ValueError):
            continue  # reported by read_voc_xml
    return class_names(root, used - {""})


def _image_for(root: Path, image_id: str, filename: str | None) -> Path | None:
    if filename and (root / "JPEGImages" / filename).is_file():
        return root / "JPEGImages" / filename
    for suffix in IMAGE_SUFFIXES:
        if (p := root / "JPEGImages" / f"{image_id}{suffix}").is_file():
            return p
    return None


def read_voc_xml(root: str | os.PathLike, split: str) -> FormatSplit:
    """The ``split`` of the VOC layout at ``root`` as a COCO dict (module docstring for the conventions)."""
    from ...errors import DataError

    root = Path(root)
    list_file = _lists(root) / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"{list_file}: no such split list; {root} has {list(voc_xml_splits(root))}")
    ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    names = voc_xml_names(root)
    builder = CocoBuilder(names)
    problems: list[Problem] = []
    for image_id in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            image = _image_for(root, image_id, None)
            problems.append(Problem(str(image or xml), "unlabelled_image" if image else "missing_file",
                                    f"no annotation file {xml}; left out" if image else
                                    f"listed in {list_file.name} but neither {xml.name} nor its image exists"))
            continue
        try:
            tree = _parse(xml)
        except (OSError, SafeET.ParseError, ValueError) as e:
            problems.append(Problem(str(xml), "unreadable_annotations", f"{type(e).__name__}: {e}"))
            continue
        image = _image_for(root, image_id, tree.findtext("filename"))
        if image is None:
            problems.append(Problem(str(xml), "orphan_label", f"no image {image_id}.* (or filename "
                                    f"{tree.findtext('filename')!r}) in JPEGImages/; left out"))
            continue
        try:
            size = _size(tree) or read_image_size(image)
        except OSError as e:
            problems.append(Problem(str(image), "unreadable_image", str(e)))
            continue
        img = builder.add_image(str(image.relative_to(root / "JPEGImages")), *size)
        for n, obj in enumerate(tree.iter("object"), 1):
            where = f"{xml}:object {n}"
            name = (obj.findtext("name") or "").strip()
            if name not in builder.cat_ids:
                problems.append(Problem(where, "unknown_category", f"class {name!r} is not in {names[:10]}"))
                continue
            box = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                problems.append(Problem(where, "malformed_box", "bndbox without four numbers xmin ymin xmax ymax"))
                continue
            difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
            builder.add(img, builder.cat_ids[name], (xmin - 1, ymin - 1, xmax, ymax), crowd=difficult, source=where)
    return FormatSplit(builder.dataset(), root / "JPEGImages", list_file, problems)


def _size(tree: Element) -> tuple[int, int] | None:
    """``(H, W)`` from ``<size>``; None when absent or zero (some tools write 0)."""
    try:
        h, w = int(float(tree.findtext("size/height"))), int(float(tree.findtext("size/width")))
    except (TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def write_voc_xml(splits: dict[str, tuple[dict, Path]], out: Path, place: Place) -> None:
    """Write ``splits`` (name → (COCO dict, image folder)) in the VOC layout under ``out``: ``JPEGImages/``,
    ``Annotations/<stem>.xml`` (whole 1-based pixels; ``iscrowd`` → ``difficult``), ``ImageSets/Main/<split>.txt``
    and ``labels.txt`` (the categories by id). Image stems must be unique across the splits."""
    from ...errors import DataError
    from .labels import write_label_list

    cats = sorted(next(iter(splits.values()))[0]["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in cats}
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    _lists(out).mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for split, (data, image_dir) in splits.items():
        anns = by_image(data)
        ids = []
        for img in data["images"]:
            stem = Path(img["file_name"]).stem
            if stem in seen:
                raise DataError(f"{img['file_name']} ({split}) and {seen[stem]} share the id {stem!r}: VOC names "
                                "images by stem alone")
            seen[stem] = f"{img['file_name']} ({split})"
            ids.append(stem)
            place(image_dir / img["file_name"], out / "JPEGImages" / (stem + Path(img["file_name"]).suffix))
            tree = _annotation(img, stem + Path(img["file_name"]).suffix, anns.get(img["id"], []), names)
            tree.write(out / "Annotations" / f"{stem}.xml", encoding="utf-8")
        (_lists(out) / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    write_label_list(out, [c["name"] for c in cats])


def _annotation(img: dict, filename: str, anns: list[dict], names: dict[int, str]) -> ElementTree:
    w, h = int(img["width"]), int(img["height"])
    root = Element("annotation")
    SubElement(root, "folder").text = "JPEGImages"
    SubElement(root, "filename").text = filename
    size = SubElement(root, "size")
    for key, value in (("width", w), ("height", h), ("depth", 3)):
        SubElement(size, key).text = str(value)
    for a in anns:
        x, y, bw, bh = a["bbox"]
        xmin = min(max(round(x) + 1, 1), w)
        ymin = min(max(round(y) + 1, 1), h)
        xmax = min(max(round(x + bw), xmin), w)
        ymax = min(max(round(y + bh), ymin), h)
        obj = SubElement(root, "object")
        SubElement(obj, "name").text = names[a["category_id"]]
        SubElement(obj, "pose").text = "Unspecified"
        SubElement(obj, "truncated").text = "0"
        SubElement(obj, "difficult").text = "1" if a.get("iscrowd") else "0"
        box = SubElement(obj, "bndbox")
        for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            SubElement(box, key).text = str(value)
    indent(root)
    return ElementTree(root)
