"""Scan the dataset of a config (COCO or VOC layout) and list every problem by file.

    python tools/check_data.py --cfg ssdlite_coco                      # train2017 + val2017 under data.root
    python tools/check_data.py --cfg deeplabv3_voc --set data.root=/data/VOCdevkit
    python tools/check_data.py --cfg ssdlite_coco --split val2017

Checks: an annotation file that is not JSON or not shaped as COCO annotations (each defective entry); missing,
unreadable, corrupt or truncated images; image size ≠ the size in the annotation file; boxes that are malformed,
NaN/inf, negative, zero-area or outside the image; unknown category ids; annotations of unlisted images; VOC
label maps that are missing, not palette/index PNGs, of another size than their image, or with values outside the
classes and 255; with ``data.masks`` set (COCO semantic masks), polygons outside the image, RLE masks of another
size than their image, and empty or malformed instance masks (RLE counts that do not add up to height × width or
are of the wrong type, sizes that are not two positive integers). Exit status 1 when anything was found (usable in
CI), 0 when the data is clean. What training does with each kind of problem is in ``mnv2_vision/data/check.py`` and
the README.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import load_config
from mnv2_vision.data import resolve_root
from mnv2_vision.data.verify import Problem, check_coco, check_voc


def scan(cfg_name: str, overrides: Sequence[str] = (), splits: Sequence[str] = (),
         scanned: list[str] | None = None) -> list[Problem]:
    """Problems of the configured dataset's splits (default: ``data.train_split`` and ``data.val_split``);
    ``scanned`` gets a line per split saying what was read."""
    cfg = load_config(cfg_name, overrides)
    root = resolve_root(cfg.data)
    splits = list(splits) or list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split]))
    if cfg.data.format == "coco":
        masks = cfg.data.masks is not None  # the instance masks matter only when labels are painted from them
        return [p for s in splits for p in check_coco(root, s, masks=masks, scanned=scanned)]
    if cfg.data.format == "voc":
        from mnv2_vision.data.classes import segmentation_class_names

        k = len(segmentation_class_names(cfg))
        return [p for s in splits for p in check_voc(root, s, k, scanned=scanned)]
    raise SystemExit(f"error: check_data reads COCO or VOC layouts; data.format is {cfg.data.format!r}")


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--cfg", required=True, help="config name in configs/ or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--split", action="append", default=[], help="split to scan (repeatable; default: train + val)")
    args = add_debug_flag(p).parse_args(argv)
    scanned: list[str] = []
    problems = scan(args.cfg, args.set, args.split, scanned)
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
