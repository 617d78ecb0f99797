"""Scan a dataset folder (its layout detected) or the dataset of a config, and list every problem by file.

    python tools/check_data.py data/coco                                # COCO, VOC, ImageFolder or CIFAR-10 folder
    python tools/check_data.py data/my_yolo                             # YOLO, VOC XML, CVAT, LabelMe, Label Studio
    python tools/check_data.py data/VOCdevkit --split val
    python tools/check_data.py --cfg ssdlite_coco                       # train2017 + val2017 under data.root
    python tools/check_data.py --cfg deeplabv3_voc --set data.root=/data/VOCdevkit

A folder is recognised as COCO (annotations/instances_<split>.json beside the <split>/ image folders), VOC
(JPEGImages/, SegmentationClass/ or SegmentationClassAug/, ImageSets/Segmentation/<split>.txt; or the VOCdevkit
above it), CIFAR-10 python batches (cifar-10-batches-py/) or ImageFolder (<split>/<class>/*.jpg); every split found
is checked. VOC label values are checked against the 21 VOC classes there (--cfg for another class count), and
COCO instance masks when the annotation file has segmentations.

Checks: an annotation file that is not JSON or not shaped as COCO annotations (each defective entry); missing,
unreadable, corrupt or truncated images; image size ≠ the size in the annotation file; boxes that are malformed,
NaN/inf, negative, zero-area or outside the image; unknown category ids; iscrowd values other than 0 or 1;
annotations of unlisted images; VOC label maps that are missing, not palette/index PNGs, of another size than their
image, or with values outside the classes and 255; with masks (``data.masks`` set, or segmentations in the file),
polygons outside the image, RLE masks of another size than their image, and empty or malformed instance masks (RLE
counts that do not add up to height × width or are of the wrong type, sizes that are not two positive integers);
ImageFolder class folders without images and splits with different classes; CIFAR-10 batches that are not
CIFAR-10 batches and labels outside 0..9; in the labelling tools' formats (YOLO, VOC XML, CVAT, LabelMe, Label
Studio, ``data/formats``) also empty or unparsable label files, unknown classes (a YOLO class id beyond
``data.yaml``'s names), images without labels and label files without images, each named by file (and line or
shape). Exit status 1 when anything was found (usable in CI), 0 when the data is
clean. What training does with each kind of problem is in ``mnv2_vision/data/verify.py`` and the README.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import load_config
from mnv2_vision.data import resolve_root
from mnv2_vision.data.detect import LOOKED_FOR, detect_layouts
from mnv2_vision.data.formats import LABEL_TOOL_FORMATS, check_format
from mnv2_vision.data.verify import Problem, check_cifar, check_coco, check_imagefolder, check_voc
from mnv2_vision.errors import UserError

_FORMATS = ("coco", *LABEL_TOOL_FORMATS, "voc", "imagefolder", "cifar10")


def check(fmt: str, root: Path, splits: Sequence[str], masks: bool | None = None, num_classes: int = 21,
          scanned: list[str] | None = None) -> list[Problem]:
    """Problems of ``splits`` of the ``fmt`` dataset at ``root`` (CIFAR-10: both of its splits). ``masks``: check
    COCO instance masks (``None``: when the file has segmentations); ``num_classes``: VOC label values."""
    if fmt == "coco":
        return [p for s in splits for p in check_coco(root, s, masks=masks, scanned=scanned)]
    if fmt in LABEL_TOOL_FORMATS:
        return [p for s in splits for p in check_format(fmt, root, s, scanned=scanned)]
    if fmt == "voc":
        return [p for s in splits for p in check_voc(root, s, num_classes, scanned=scanned)]
    if fmt == "imagefolder":
        return check_imagefolder(root, splits, scanned=scanned)
    return check_cifar(root, scanned=scanned)


def scan(cfg_name: str, overrides: Sequence[str] = (), splits: Sequence[str] = (),
         scanned: list[str] | None = None) -> list[Problem]:
    """Problems of the configured dataset's splits (default: ``data.train_split`` and ``data.val_split``);
    ``scanned`` gets a line per split saying what was read."""
    cfg = load_config(cfg_name, overrides)
    if cfg.data.format not in _FORMATS:
        raise SystemExit(f"error: check_data reads {', '.join(_FORMATS)} layouts; data.format is {cfg.data.format!r}")
    root = resolve_root(cfg.data)
    splits = list(splits) or list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split]))
    num_classes = 21
    if cfg.data.format == "voc":
        from mnv2_vision.data.classes import segmentation_class_names

        num_classes = len(segmentation_class_names(cfg))
    # the instance masks matter only when labels are painted from them
    return check(cfg.data.format, root, splits, cfg.data.masks is not None, num_classes, scanned)


def scan_folder(path: str | Path, splits: Sequence[str] = (), scanned: list[str] | None = None) -> list[Problem]:
    """Problems of every dataset layout found in ``path`` (``data/detect.py``), of its every split or ``splits``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    layouts = detect_layouts(path)
    if not layouts:
        raise UserError(f"{path}: no dataset layout recognised; looked for {'; '.join(LOOKED_FOR)}")
    return [p for layout in layouts for p in check(layout.format, layout.root, list(splits) or layout.splits,
                                                   scanned=scanned)]


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("path", nargs="?", help="a dataset folder, its layout detected (or give --cfg)")
    p.add_argument("--cfg", help="config name in configs/ or a YAML path: check its data.root")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--split", action="append", default=[],
                   help="split to scan (repeatable; default: every split found, or the config's train + val)")
    args = add_debug_flag(p).parse_args(argv)
    if (args.path is None) == (args.cfg is None):
        p.error("give a dataset folder or --cfg (one of them)")
    if args.set and args.cfg is None:
        p.error("--set overrides a config: it needs --cfg")
    scanned: list[str] = []
    if args.cfg is not None:
        problems = scan(args.cfg, args.set, args.split, scanned)
    else:
        problems = scan_folder(args.path, args.split, scanned)
    by_file: dict[str, list[Problem]] = {}
    for prob in problems:
        by_file.setdefault(prob.file, []).append(prob)
    for file, probs in by_file.items():
        print(file)
        for prob in probs:
            print(f"  [{prob.kind}] {prob.detail}")
    counts = Counter(prob.kind for prob in problems)
    summary = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
    print("scanned " + "; ".join(scanned) if scanned else "scanned nothing")
    print(f"{len(problems)} problem(s) in {len(by_file)} file(s)" + (f" ({summary})" if summary else ""))
    return 1 if problems else 0


def console() -> int:
    """The ``mnv2-check-data`` command and ``python tools/check_data.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
