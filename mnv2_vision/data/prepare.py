"""Fetch, check and lay out the real datasets (docs/datasets.md): COCO 2017, PASCAL VOC 2012 + SBD trainaug, Flowers102,
CIFAR-10, in exactly the folders the configs' ``data.root`` expects.

Every step is idempotent and atomic. An archive downloads to ``<name>.part`` (resumed with an HTTP range request) and
gets its final name only once its md5 matches. It extracts into a temporary folder under the root whose members are
renamed into place at the end, so a final folder exists only when it is complete and an interrupted step is simply
redone. A step whose outputs already exist is skipped without needing its archive, so folders extracted by other
means work as they are. ``verify`` checks a finished tree: counts against docs/datasets.md, and ``data/verify.py``'s
checks of every listed id's image (its header) and label, label values, COCO JSON references, CIFAR-10 batches.
"""
from __future__ import annotations

import http.client
import os
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import numpy as np
import scipy.io
from PIL import Image
from torchvision.datasets import CIFAR10, SBDataset, Flowers102
from torchvision.datasets.utils import calculate_md5
from torchvision.datasets.voc import DATASET_YEAR_DICT
from tqdm import tqdm

from ..errors import ChecksumError, DatasetError
from ..files import write_text
from .io.labels import voc_palette
from .verify import (Problem, check_cifar, check_flowers, coco_reference_problems, image_problem,
                     read_coco_annotations, voc_item_problems)

__all__ = [
    "Archive", "Step", "ARCHIVES", "EXPECTED_COUNTS", "DATASETS", "download", "fetch_archive", "prepare",
    "voc_devkit", "voc_trainaug_ids", "read_sbd_label", "convert_sbd", "verify",
]


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str


# Spec §6 for COCO/VOC/SBD; Flowers102 and CIFAR-10 straight from torchvision's own dataset classes.
ARCHIVES: dict[str, Archive] = {
    "train2017.zip": Archive("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017.zip": Archive("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations_trainval2017.zip": Archive("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                                            "f4bbac642086de4f52a3fdda2de5fa2c"),
    "VOCtrainval_11-May-2012.tar": Archive(DATASET_YEAR_DICT["2012"]["url"], "6cd6e144f989b92b3379bac3b3de84fd"),
    "benchmark.tgz": Archive(SBDataset.url, "82b4d87ceb2ed10f6038a1cba92111cb"),
    **{name: Archive(Flowers102._download_url_prefix + name, md5) for name, md5 in Flowers102._file_dict.values()},
    CIFAR10.filename: Archive(CIFAR10.url, CIFAR10.tgz_md5),
}

EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "coco": {"train2017": 118_287, "val2017": 5_000},
    "voc": {"train": 1_464, "val": 1_449, "trainaug": 10_582},
    "flowers102": {"images": 8_189, "train": 1_020, "val": 1_020, "test": 6_149},
    "cifar10": {"train": 50_000, "test": 10_000},
}
VOC_NUM_CLASSES = 21  # background + 20; 255 = ignore
FLOWERS_NUM_CLASSES = 102


@dataclass(frozen=True)
class Step:
    """One archive and where its members go. ``moves`` pairs a path inside the extracted archive ("" = the file
    itself, for archives that are plain files) with its destination under the root; ``required`` are the outputs
    whose presence marks the step done (default: the destinations)."""
    archive: str
    moves: tuple[tuple[str, str], ...]
    required: tuple[str, ...] = ()

    def done(self, root: Path) -> bool:
        return all((root / p).exists() for p in self.required or [dst for _, dst in self.moves])


_VOC_SETS = "VOC2012/ImageSets/Segmentation"
_SBD = "benchmark_RELEASE/dataset"
_VOC_STEP = Step("VOCtrainval_11-May-2012.tar", (("VOCdevkit/VOC2012", "VOC2012"),),
                 ("VOC2012/JPEGImages", "VOC2012/SegmentationClass", f"{_VOC_SETS}/train.txt", f"{_VOC_SETS}/val.txt"))
_SBD_STEP = Step("benchmark.tgz", ((_SBD, _SBD),),
                 (f"{_SBD}/cls", f"{_SBD}/img", f"{_SBD}/train.txt", f"{_SBD}/val.txt"))
STEPS: dict[str, tuple[Step, ...]] = {
    "coco": (
        Step("train2017.zip", (("train2017", "train2017"),)),
        Step("val2017.zip", (("val2017", "val2017"),)),
        # The zip also holds captions and keypoints; only the instances files are needed, the rest comes along.
        Step("annotations_trainval2017.zip", (("annotations", "annotations"),),
             ("annotations/instances_train2017.json", "annotations/instances_val2017.json")),
    ),
    "voc": (_VOC_STEP, _SBD_STEP),
    "flowers102": tuple(Step(name, ((src, f"flowers-102/{dst}"),)) for name, src, dst in (
        ("102flowers.tgz", "jpg", "jpg"), ("imagelabels.mat", "", "imagelabels.mat"), ("setid.mat", "", "setid.mat"))),
    "cifar10": (Step(CIFAR10.filename, ((CIFAR10.base_folder, CIFAR10.base_folder),)),),
}
DATASETS = tuple(STEPS)


def _say(msg: str) -> None:
    print(msg, flush=True)


class _Progress:
    """A tqdm bar on a terminal; elsewhere one line per 10 %, because a redrawn bar floods log files."""

    def __init__(self, desc: str, total: int | None, unit: str = "B", initial: int = 0):
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True,
                        unit_divisor=1024 if unit == "B" else 1000) if sys.stderr.isatty() else None
        self.mark = self._decile()

    def _decile(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self._decile() > self.mark:
            self.mark = self._decile()
            _say(f"{self.desc}: {10 * min(self.mark, 10)} % ({self.n:,} of {self.total:,} {self.unit})")

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _download_once(url: str, part: Path, timeout: float) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "mnv2_vision-prepare-data"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and start:  # nothing left to send: the .part is whole (or too long; the md5 decides)
            return
        raise
    with response:
        if start and (response.status != 206 or
                      not response.headers.get("Content-Range", "").startswith(f"bytes {start}-")):
            start = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as out, _Progress(part.name[:-5], total, initial=start) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed after {part.stat().st_size:,} of {total:,} bytes")


def download(url: str, dest: Path, md5: str, *, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file where the server takes ranges.

    ``dest`` appears only once the md5 matches; on a mismatch the ``.part`` file is removed (so the next run starts
    clean) and ``ChecksumError`` names the file and both checksums. A dropped connection is retried ``retries``
    times; after that the ``.part`` file stays and the same call resumes it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, timeout)
            break
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, IncompleteRead
            if isinstance(err, HTTPError) and err.code not in (408, 429, 500, 502, 503, 504):
                raise DatasetError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DatasetError(f"downloading {url} failed ({err}); {part} keeps the {have:,} bytes received: "
                                   "run the same command again to resume") from err
            _say(f"download of {dest.name} interrupted at {have:,} bytes ({err}); resuming")
            time.sleep(min(2 ** attempt, 30))
    actual = calculate_md5(part)
    if actual != md5:
        part.unlink()
        raise ChecksumError(dest, md5, actual)
    os.replace(part, dest)
    return dest


def fetch_archive(name: str, folder: Path, *, allow_download: bool, retries: int = 3) -> Path:
    """``folder/name`` checked against ``ARCHIVES[name].md5``; downloaded first when missing and allowed."""
    spec = ARCHIVES[name]
    path = Path(folder) / name
    if path.is_file():
        _say(f"checking md5 of {path} ({path.stat().st_size / 2 ** 30:.2f} GiB)")
        actual = calculate_md5(path)
        if actual != spec.md5:
            raise ChecksumError(path, spec.md5, actual, f" (a damaged or different file: delete it and fetch "
                                f"{spec.url} again)")
        return path
    if not allow_download:
        raise DatasetError(f"archive {path} not found: fetch {spec.url} (md5 {spec.md5}) into {folder}, "
                           "or leave out --archives to download it")
    _say(f"downloading {spec.url} -> {path}")
    return download(spec.url, path, spec.md5, retries=retries)


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a zip or (compressed) tar into ``dest``. Not torchvision's ``extract_archive``: that one unpacks tars
    without tarfile's "data" filter (members may escape ``dest``) and shows no progress on 18 GB archives."""
    size = archive.stat().st_size
    with open(archive, "rb") as raw, _Progress(f"extracting {archive.name}", size) as bar:
        def advance() -> None:
            bar.update(raw.tell() - bar.n)

        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(raw) as zf:  # ZipFile.extract already refuses paths outside dest
                for member in zf.infolist():
                    zf.extract(member, dest)
                    advance()
            return
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with tarfile.open(fileobj=raw, mode="r:*") as tf:
            for member in tf:
                tf.extract(member, dest, **kwargs)
                advance()


def _merge_move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; where ``dst`` is already a folder, move in only what it lacks (existing files win)."""
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    elif src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)


def _install(step: Step, archive: Path, root: Path) -> None:
    tmp = root / f".tmp-{step.archive}"
    shutil.rmtree(tmp, ignore_errors=True)  # the leftover of an interrupted run
    tmp.mkdir(parents=True)
    try:
        if any(src == "" for src, _ in step.moves):
            shutil.copyfile(archive, tmp / archive.name)
        else:
            _extract(archive, tmp)
        sources = [(tmp / (src or archive.name), root / dst) for src, dst in step.moves]
        for src, _ in sources:
            if not src.exists():
                raise DatasetError(f"{archive} has no {src.relative_to(tmp)}: not the expected archive")
        for src, dst in sources:
            _merge_move(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def voc_devkit(root: Path) -> Path:
    """The VOCdevkit folder: ``root`` itself, or its parent when ``root`` is the ``VOC2012`` folder."""
    root = Path(root)
    return root.parent if (root / "JPEGImages").is_dir() or root.name == "VOC2012" else root


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"id list {path} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_trainaug_ids(voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str],
                     sbd_val: Iterable[str]) -> list[str]:
    """(VOC train ∪ SBD train ∪ SBD val) − VOC val, sorted: 10,582 ids on the real data (docs/datasets.md#archives)."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def read_sbd_label(path: Path) -> np.ndarray:
    """The (H, W) uint8 class map of an SBD ``cls/<id>.mat`` file (struct ``GTcls``, field ``Segmentation``)."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["GTcls"], squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError, NotImplementedError) as err:  # the last: scipy on a v7.3 (HDF5) .mat
        raise DatasetError(f"cannot read SBD label {path}: {err}") from err
    seg = getattr(mat.get("GTcls"), "Segmentation", None)
    if seg is None or np.ndim(seg) != 2:
        raise DatasetError(f"{path} has no 2-D GTcls.Segmentation: not an SBD cls/*.mat file")
    label = np.asarray(seg)
    if label.size and (label.min() < 0 or label.max() >= VOC_NUM_CLASSES):
        raise DatasetError(f"{path}: class values {sorted(set(np.unique(label).tolist()))} outside 0..20")
    return label.astype(np.uint8)


def convert_sbd(devkit: Path) -> int:
    """Write ``VOC2012/SegmentationClassAug/<id>.png`` and ``ImageSets/Segmentation/trainaug.txt`` from VOC and
    ``benchmark_RELEASE/dataset``; returns the number of ids.

    Ids with a VOC label keep it (VOC's is the finer one: it has the 255 boundary band SBD lacks); the rest get their
    SBD class map as a palette PNG. An SBD image missing from ``JPEGImages`` is copied there from SBD's ``img/``.
    """
    voc, sbd = devkit / "VOC2012", devkit / _SBD
    sets = voc / "ImageSets/Segmentation"
    ids = voc_trainaug_ids(_read_ids(sets / "train.txt"), _read_ids(sets / "val.txt"),
                           _read_ids(sbd / "train.txt"), _read_ids(sbd / "val.txt"))
    tmp = voc / ".tmp-SegmentationClassAug"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    palette = voc_palette()
    from_sbd = 0
    with _Progress("SBD -> SegmentationClassAug", len(ids), unit="labels") as bar:
        for image_id in ids:
            voc_png = voc / "SegmentationClass" / f"{image_id}.png"
            if voc_png.is_file():
                shutil.copyfile(voc_png, tmp / voc_png.name)
            else:
                png = Image.fromarray(read_sbd_label(sbd / "cls" / f"{image_id}.mat"), mode="P")
                png.putpalette(palette)
                png.save(tmp / f"{image_id}.png")
                from_sbd += 1
            jpg = voc / "JPEGImages" / f"{image_id}.jpg"
            if not jpg.is_file():
                sbd_jpg = sbd / "img" / jpg.name
                if not sbd_jpg.is_file():
                    raise DatasetError(f"image {image_id}.jpg is in neither {jpg.parent} nor {sbd_jpg.parent}")
                shutil.copyfile(sbd_jpg, jpg.with_name(f".{jpg.name}.tmp"))
                os.replace(jpg.with_name(f".{jpg.name}.tmp"), jpg)
            bar.update(1)
    final = voc / "SegmentationClassAug"
    if final.exists():  # left by a run interrupted before trainaug.txt was written: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text(sets / "trainaug.txt", "".join(f"{i}\n" for i in ids))  # written last: marks the step done
    _say(f"trainaug: {len(ids):,} ids ({len(ids) - from_sbd:,} VOC labels, {from_sbd:,} converted from SBD; "
         f"{EXPECTED_COUNTS['voc']['trainaug']:,} expected on the full data)")
    return len(ids)


def _trainaug_done(devkit: Path) -> bool:
    return (devkit / _VOC_SETS / "trainaug.txt").is_file() and (devkit / "VOC2012/SegmentationClassAug").is_dir()


def prepare(name: str, root: Path, archives: Path | None = None, *, retries: int = 3) -> Path:
    """Bring dataset ``name`` into ``root`` (the folder a config's ``data.root`` names); returns that folder.

    Args:
        name: one of ``DATASETS``.
        root: COCO: the folder holding ``train2017/``; VOC: ``VOCdevkit`` (``VOCdevkit/VOC2012`` is accepted);
            Flowers102 / CIFAR-10: the folder holding ``flowers-102/`` / ``cifar-10-batches-py/`` (torchvision's root).
        archives: a folder of archives fetched by other means; nothing is downloaded then. Default:
            ``root/archives``, where missing archives are downloaded.
        retries: reconnections per download before giving up (the next call resumes).
    """
    if name not in STEPS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    root = voc_devkit(root) if name == "voc" else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    steps = STEPS[name]
    if name == "voc" and _trainaug_done(root):
        steps = (_VOC_STEP,)  # SBD is only an input of the trainaug conversion
    for step in steps:
        if step.done(root):
            _say(f"{step.archive}: already in place under {root}, skipped")
            continue
        folder = Path(archives) if archives is not None else root / "archives"
        _install(step, fetch_archive(step.archive, folder, allow_download=archives is None, retries=retries), root)
        _say(f"{step.archive}: extracted into {root}")
    if name == "voc" and not _trainaug_done(root):
        convert_sbd(root)
    return root


# ----------------------------------------------------------------------------------------------------- verify
# How the report names each kind of Problem (data/verify.py): a heading, and one item's text where it is not
# "<file>: <detail>". A dataset's verifier names its missing files itself ("missing image", "missing label", ...).
_HEADINGS = {
    "missing_file": "missing file", "unreadable_image": "unreadable file", "unreadable_label": "unreadable file",
    "unreadable_file": "unreadable file", "label_mode": "label not a palette/grey PNG",
    "mask_size_mismatch": "label size differs from its image",
    "mask_values": "label values outside the classes and 255", "label_values": "label values outside the classes",
    "unreadable_annotations": "COCO JSON does not load",
    "orphan_annotation": "annotation of an unknown image", "unknown_category": "annotation of an unknown category",
    "malformed_cifar": "malformed CIFAR-10 file",
}
_ITEMS = {"missing_file": "{file}", "label_mode": "{file} (mode {value})", "mask_values": "{file}: {value}",
          "label_values": "{file}: {value}"}


class _Report:
    """Collects count lines and problems grouped by kind (a few examples each, so a broken tree stays readable)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.problems: dict[str, list[str]] = {}
        self.bad_counts = 0

    def count(self, what: str, actual: int, expected: int | None) -> None:
        ok = expected is None or actual == expected
        self.bad_counts += not ok
        self.lines.append(f"{'ok ' if ok else 'BAD'} {what}: {actual:,}" + ("" if ok else f" (expected {expected:,})"))

    @property
    def num_problems(self) -> int:
        return self.bad_counts + sum(map(len, self.problems.values()))

    def problem(self, heading: str, item: str) -> None:
        self.problems.setdefault(heading, []).append(item)

    def add(self, problems: Iterable[Problem], **headings: str) -> None:
        """Add ``problems`` under their kind's heading; ``headings`` (kind=heading) names them in this context."""
        for p in problems:
            item = _ITEMS.get(p.kind, "{file}: {detail}").format(file=p.file, detail=p.detail, value=p.value)
            self.problem(headings.get(p.kind) or _HEADINGS.get(p.kind, p.kind.replace("_", " ")), item)

    def text(self) -> str:
        out = list(self.lines)
        for kind, items in self.problems.items():
            more = f" ... and {len(items) - 5:,} more" if len(items) > 5 else ""
            out.append(f"PROBLEM {kind} ({len(items):,}): " + "; ".join(items[:5]) + more)
        out.append(f"{self.num_problems:,} problem(s)")
        return "\n".join(out)


def _verify_voc(devkit: Path, report: _Report, expected: dict[str, int]) -> None:
    voc = devkit / "VOC2012"
    for split, label_dir in (("train", "SegmentationClass"), ("val", "SegmentationClass"),
                             ("trainaug", "SegmentationClassAug")):
        id_file = voc / "ImageSets/Segmentation" / f"{split}.txt"
        if not id_file.is_file():
            if split == "trainaug":
                report.lines.append("--  no trainaug.txt (SBD not converted; `prepare_data.py voc` adds it)")
            else:
                report.problem("missing id list", str(id_file))
            continue
        ids = _read_ids(id_file)
        report.count(f"VOC {split} ids", len(ids), expected.get(split))
        for image_id in ids:  # the image's header only: a full decode of 13,000 images is check_data's job
            image_problems, label_problems = voc_item_problems(voc, image_id, label_dir, VOC_NUM_CLASSES, decode=False)
            report.add(image_problems, missing_file="missing image")
            report.add(label_problems, missing_file="missing label")


def _verify_coco(root: Path, report: _Report, expected: dict[str, int]) -> None:
    for split in ("train2017", "val2017"):
        folder, ann_file = root / split, root / "annotations" / f"instances_{split}.json"
        if not folder.is_dir():
            report.problem("missing image folder", str(folder))
        else:
            report.count(f"{split}/*.jpg files", sum(1 for _ in folder.glob("*.jpg")), expected.get(split))
        data, problems = read_coco_annotations(ann_file)
        report.add(problems, missing_file="COCO JSON does not load")
        if data is None:
            continue
        report.count(f"{split} JSON images", len(data["images"]), expected.get(split))
        for image in data["images"]:  # headers only: 118,000 full decodes are check_data's job
            problem, _ = image_problem(folder / image["file_name"], decode=False)
            if problem is not None and problem.kind == "missing_file":
                report.problem("JSON image entry whose file is absent", f"id {image['id']}: {problem.file}")
            elif problem is not None:
                report.add([problem])
        report.add(coco_reference_problems(data, ann_file, folder))


def _verify_flowers(root: Path, report: _Report, expected: dict[str, int]) -> None:
    counts: dict[str, int] = {}
    problems = check_flowers(root, counts)
    names = {"images": "flowers-102/jpg images", "labels": "labels in imagelabels.mat"}
    for key, n in counts.items():
        report.count(names.get(key, f"Flowers102 {key} ids"), n, expected.get("images" if key == "labels" else key))
    report.add(problems, missing_file="missing image", unreadable_file="unreadable .mat file")


def _verify_cifar(root: Path, report: _Report, expected: dict[str, int]) -> None:
    counts: dict[str, int] = {}
    problems = check_cifar(root, counts=counts)
    for split in ("train", "test"):
        report.count(f"CIFAR-10 {split} images", counts[split], expected.get(split))
    if "class names" in counts:
        report.count("CIFAR-10 class names in batches.meta", counts["class names"], 10)
    report.add(problems, missing_file="missing or unreadable file", unreadable_file="missing or unreadable file")


_VERIFIERS: dict[str, Callable[[Path, _Report, dict[str, int]], None]] = {
    "coco": _verify_coco, "voc": _verify_voc, "flowers102": _verify_flowers, "cifar10": _verify_cifar,
}


def verify(name: str, root: Path) -> tuple[str, int]:
    """Check dataset ``name`` under ``root`` (as in ``prepare``) without downloading; returns (report, problems).

    The report has a line per count (against ``EXPECTED_COUNTS``) and per kind of problem (``data/verify.py``'s
    checks: every listed id's image and label, label values, COCO JSON references, CIFAR-10 batches)."""
    if name not in _VERIFIERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    root = voc_devkit(root) if name == "voc" else Path(root)
    report = _Report()
    if not root.is_dir():
        report.problem("dataset root not found", str(root))
    else:
        _VERIFIERS[name](root, report, EXPECTED_COUNTS[name])
    return f"{name} at {root}\n" + report.text(), report.num_problems
