"""Download (or take from --archives), check and lay out a real dataset where the configs' data.root expects it.

    python tools/prepare_data.py coco --root data/coco
    python tools/prepare_data.py voc --root data/VOCdevkit --archives /mnt/archives   # offline cluster
    python tools/prepare_data.py voc --root data/VOCdevkit --verify                   # check only
"""
from __future__ import annotations

import sys
from pathlib import Path

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.data.prepare import ARCHIVES, DATASETS, STEPS, prepare, verify
from mnv2_vision.errors import DatasetError

ROOTS = """what --root is (the folder a config's data.root names):
  coco        the folder that becomes data/coco: train2017/, val2017/, annotations/instances_{train,val}2017.json
  voc         the folder that becomes data/VOCdevkit: VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}
              plus, from SBD, VOC2012/SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt
              (benchmark_RELEASE/dataset/ stays next to VOC2012/ as the conversion's input)
  flowers102  torchvision's root: <root>/flowers-102/{jpg/,imagelabels.mat,setid.mat}
  cifar10     torchvision's root: <root>/cifar-10-batches-py/
Archives are downloaded to <root>/archives/ unless --archives is given; they can be deleted once the run succeeds.
Steps whose folders are already under --root are skipped and need no archive. A run ends with the --verify check."""


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__.splitlines()[0], epilog=ROOTS)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder (see below)")
    parser.add_argument("--archives", type=Path, help="folder with the archives fetched by other means (no internet "
                        "needed: nothing is downloaded, md5s are still checked)")
    parser.add_argument("--verify", action="store_true",
                        help="only check the existing dataset (counts, images, labels, JSON); exit 1 on any problem")
    parser.add_argument("--retries", type=int, default=3, help="reconnections per download before giving up")
    args = add_debug_flag(parser).parse_args(argv)

    if not args.verify:
        try:
            prepare(args.dataset, args.root, args.archives, retries=args.retries)
        except DatasetError as err:
            names = ", ".join(f"{s.archive} ({ARCHIVES[s.archive].md5})" for s in STEPS[args.dataset])
            print(f"error: {err}\n(archives for {args.dataset}: {names})", file=sys.stderr)
            return 1
    report, problems = verify(args.dataset, args.root)
    print(report)
    return 1 if problems else 0


def console() -> int:
    """The ``mnv2-prepare-data`` command and ``python tools/prepare_data.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
