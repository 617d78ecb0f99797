"""Convert detection labels between COCO and the labelling tools' formats (YOLO, VOC XML, CVAT, LabelMe, Label Studio).

    python tools/convert_data.py data/my_yolo --to coco --out data/my_coco         # format detected
    python tools/convert_data.py export.json_dir --from labelstudio --to coco --out data/ls_coco
    python tools/convert_data.py data/coco128 --to yolo --out data/coco128_yolo --split val2017
    python tools/convert_data.py data/cvat_task --to voc_xml --out data/voc --copy-images

Every split of SRC (or those given with --split) is read into a COCO dict (mnv2_vision/data/formats) and written in
the --to format under OUT: for COCO, ``OUT/annotations/instances_<split>.json`` and ``OUT/<split>/`` images. Images
are symbolic links to SRC's files unless --copy-images. OUT must be empty or new (--overwrite replaces it); it is
written in a temporary folder beside it and renamed into place at the end, so a failed conversion leaves nothing
half-written. Problems in SRC (unknown classes, unparsable files, images without labels) are listed, one line each,
and stop the conversion (exit status 1); --skip-bad converts the rest and still lists them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.commands.converting.output import placer, staged_output
from mnv2_vision.data.formats import DETECTION_FORMATS, detect_format, format_splits, read_split, write_splits
from mnv2_vision.errors import UserError


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("src", help="the dataset folder to read")
    p.add_argument("--to", required=True, choices=DETECTION_FORMATS, help="the format to write")
    p.add_argument("--out", required=True, help="the folder to write (empty or new)")
    p.add_argument("--from", dest="src_format", choices=DETECTION_FORMATS, default=None,
                   help="SRC's format (default: detected from its files)")
    p.add_argument("--split", action="append", default=[], help="split to convert (repeatable; default: all)")
    p.add_argument("--copy-images", action="store_true", help="copy the images instead of linking them")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--skip-bad", action="store_true", help="convert despite problems in SRC (they are listed)")
    args = add_debug_flag(p).parse_args(argv)

    src = Path(args.src).expanduser()
    fmt = args.src_format or detect_format(src)
    if fmt is None:
        raise UserError(f"{src}: no detection format recognised (looked for {', '.join(DETECTION_FORMATS)}); "
                        "give --from")
    splits = args.split or list(format_splits(fmt, src))
    if not splits:
        raise UserError(f"{src}: no split found in its {fmt} layout")
    read = {s: read_split(fmt, src, s) for s in splits}
    problems = [p for r in read.values() for p in r.problems]
    for prob in problems:
        print(prob)
    if problems and not args.skip_bad:
        return {"problems": len(problems), "written": None}
    names = [[c["name"] for c in sorted(r.data["categories"], key=lambda c: c["id"])] for r in read.values()]
    if any(n != names[0] for n in names):
        raise UserError(f"{src}: the splits name their classes differently ({names[0][:5]} vs ...); one label map "
                        "is needed")
    with staged_output(Path(args.out), args.overwrite) as stage:
        write_splits(args.to, {s: (r.data, r.image_dir) for s, r in read.items()}, stage, placer(args.copy_images))
    counts = {s: (len(r.data["images"]), len(r.data["annotations"])) for s, r in read.items()}
    crowd = sum(1 for r in read.values() for a in r.data["annotations"] if a.get("iscrowd"))
    if crowd and args.to not in ("coco", "voc_xml"):  # VOC XML writes them as difficult
        print(f"note: {crowd} crowd / difficult box(es) left out: {args.to} has no flag for boxes that are ignored")
    print(f"{src} ({fmt}) -> {args.out} ({args.to}): " + "; ".join(f"{s}: {i} image(s), {a} box(es)"
                                                                   for s, (i, a) in counts.items())
          + (f"; {len(problems)} problem(s) above left out" if problems else ""))
    return {"problems": len(problems), "written": str(args.out), "format": fmt, "splits": counts}


def console() -> int:
    """The ``mnv2-convert-data`` command and ``python tools/convert_data.py``: ``main`` with its exit status."""
    result = main()
    return 1 if result["problems"] else exit_status(result)


if __name__ == "__main__":
    raise SystemExit(console())
