"""tools/prepare_data.py on miniature archives in the exact real formats (COCO zips, the VOC 2012 tar, SBD's
benchmark.tgz with MATLAB structs, Flowers102, CIFAR-10), with the checksum and count tables patched to them."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import pickle
import re
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, Flowers102

from mnv2_vision.config import load_config
from mnv2_vision.data import prepare
from mnv2_vision.data.classification import datasets as classification
from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.prepare import Archive
from mnv2_vision.data.io.labels import voc_palette
from mnv2_vision.data.voc import VOCSegmentation
from mnv2_vision.errors import ChecksumError, DatasetError
from mnv2_vision.lit.segmentation import build_seg_datamodule

from helpers import tool as _tool


# VOC-style ids. trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val, worked out by hand: VOC val's two ids go
# although SBD lists them (one in SBD train, one in SBD val); 2011_000001 exists only in SBD (its JPEG too).
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000002"]
VOC_VAL = ["2007_000033", "2008_000003"]
SBD_TRAIN = ["2007_000039", "2007_000033", "2008_000008", "2008_000015"]
SBD_VAL = ["2008_000002", "2008_000003", "2011_000001"]
TRAINAUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000008", "2008_000015", "2011_000001"]
VOC_JPEGS = VOC_TRAIN + VOC_VAL + ["2008_000008", "2008_000015"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _jpeg(seed: int, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _size(image_id: str) -> tuple[int, int]:
    n = int(image_id[-3:])
    return 20 + n % 7, 12 + n % 5  # (w, h): a different size per id, so a mixed-up label would not fit


def _palette_png(path: Path, label: np.ndarray) -> None:
    png = Image.fromarray(label, mode="P")
    png.putpalette(voc_palette())
    png.save(path)


def run_tool(*argv: str | Path) -> int:
    return _tool("prepare_data").main([str(a) for a in argv])


def _register(monkeypatch, *archives: Path, url: str = "http://unused.invalid/") -> None:
    for path in archives:
        monkeypatch.setitem(prepare.ARCHIVES, path.name, Archive(url + path.name, _md5(path)))


def _tar(tree: Path, members: list[str], out: Path, mode: str) -> Path:
    with tarfile.open(out, mode) as tf:
        for member in members:
            tf.add(tree / member, arcname=member)
    return out


# ------------------------------------------------------------------------------------------------------------ COCO
COCO_SPLITS = {"train2017": [9, 25], "val2017": [139]}


def _coco_json(split: str) -> dict:
    images, anns = [], []
    for image_id in COCO_SPLITS[split]:
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 32, "height": 24})
        anns.append({"id": 1000 + image_id, "image_id": image_id, "category_id": 18 if image_id % 2 else 1,
                     "bbox": [2.0, 3.0, 10.0, 8.0], "area": 80.0, "iscrowd": 0, "segmentation": []})
    cats = [{"id": 1, "name": "person", "supercategory": "person"},
            {"id": 18, "name": "dog", "supercategory": "animal"}]
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}


@pytest.fixture
def coco_archives(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir()
    for split, ids in COCO_SPLITS.items():
        with zipfile.ZipFile(folder / f"{split}.zip", "w") as zf:
            zf.writestr(f"{split}/", "")
            for image_id in ids:
                zf.writestr(f"{split}/{image_id:012d}.jpg", _jpeg(image_id, 32, 24))
    with zipfile.ZipFile(folder / "annotations_trainval2017.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for split in COCO_SPLITS:
            zf.writestr(f"annotations/instances_{split}.json", json.dumps(_coco_json(split)))
            zf.writestr(f"annotations/captions_{split}.json", json.dumps({"annotations": []}))
    _register(monkeypatch, *sorted(folder.iterdir()))
    monkeypatch.setitem(prepare.EXPECTED_COUNTS, "coco", {s: len(ids) for s, ids in COCO_SPLITS.items()})
    return folder


def test_coco_from_archives_loads_in_coco_dataset(tmp_path, coco_archives, capsys):
    root = tmp_path / "coco"
    stale = root / ".tmp-val2017.zip" / "val2017"  # a run interrupted mid-extraction
    stale.mkdir(parents=True)
    (stale / "half_written.jpg").write_bytes(b"\xff\xd8")
    assert run_tool("coco", "--root", root, "--archives", coco_archives) == 0
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "train2017", "val2017"]  # no temp folder left
    assert sorted(p.name for p in (root / "val2017").iterdir()) == ["000000000139.jpg"]
    assert (root / "annotations" / "captions_val2017.json").is_file()  # the whole zip comes along

    train = CocoDetection(root, "train2017")
    assert len(train) == 2 and train.category_ids == [1, 18]
    image, target = train[1]  # id 25: category 18 → label 2; xywh (2, 3, 10, 8) → xyxy (2, 3, 12, 11)
    assert image.shape == (3, 24, 32) and target["image_id"] == 25
    assert target["labels"].tolist() == [2]
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 11.0]]))
    assert len(CocoDetection(root, "val2017")) == 1

    # A second run finds every step done and needs no archive at all.
    shutil.rmtree(coco_archives)
    capsys.readouterr()
    assert run_tool("coco", "--root", root, "--archives", coco_archives) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 3 and "0 problem(s)" in out


# ------------------------------------------------------------------------------------------------------------- VOC
def _voc_label(image_id: str) -> np.ndarray:
    w, h = _size(image_id)
    label = np.random.default_rng(int(image_id.replace("_", ""))).integers(0, 21, (h, w)).astype(np.uint8)
    label[0, :] = 255  # VOC's boundary band; SBD never has it
    return label


def _sbd_label(image_id: str) -> np.ndarray:
    w, h = _size(image_id)
    return np.random.default_rng(int(image_id.replace("_", "")) + 1).integers(0, 21, (h, w)).astype(np.uint8)


def _sbd_mat(path: Path, label: np.ndarray) -> None:
    """SBD's cls/*.mat layout: struct GTcls {Boundaries: 20x1 cell of sparse logical, Segmentation: uint8 map,
    CategoriesPresent: column of classes}."""
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = scipy.sparse.csc_matrix(label == i + 1)
    present = np.unique(label)
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": label,
                                      "CategoriesPresent": present[present > 0].astype(np.uint8).reshape(-1, 1)}},
                     do_compression=True)


def _write_voc_tree(devkit: Path) -> None:
    voc = devkit / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for image_id in VOC_JPEGS:
        (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(_jpeg(int(image_id[-3:]), *_size(image_id)))
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation><filename>{image_id}.jpg</filename>"
                                                             "</annotation>")
    for image_id in VOC_TRAIN + VOC_VAL:
        _palette_png(voc / "SegmentationClass" / f"{image_id}.png", _voc_label(image_id))
        _palette_png(voc / "SegmentationObject" / f"{image_id}.png", (_voc_label(image_id) > 0).astype(np.uint8))
    for split, ids in (("train", VOC_TRAIN), ("val", VOC_VAL), ("trainval", VOC_TRAIN + VOC_VAL)):
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _write_sbd_tree(devkit: Path) -> None:
    dataset = devkit / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls", "inst"):
        (dataset / sub).mkdir(parents=True)
    for image_id in SBD_TRAIN + SBD_VAL:
        (dataset / "img" / f"{image_id}.jpg").write_bytes(_jpeg(int(image_id[-3:]), *_size(image_id)))
        _sbd_mat(dataset / "cls" / f"{image_id}.mat", _sbd_label(image_id))
        scipy.io.savemat(dataset / "inst" / f"{image_id}.mat", {"GTinst": {"Segmentation": _sbd_label(image_id)}})
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    (devkit / "benchmark_RELEASE" / "benchmark_code_RELEASE").mkdir()


@pytest.fixture
def voc_trees(tmp_path_factory) -> Path:
    """A staging folder with the extracted VOC and SBD trees: VOCdevkit/VOC2012 and benchmark_RELEASE."""
    staging = tmp_path_factory.mktemp("voc_staging")
    _write_voc_tree(staging / "VOCdevkit")
    _write_sbd_tree(staging)
    return staging


@pytest.fixture
def voc_archives(tmp_path, voc_trees, monkeypatch) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir()
    _tar(voc_trees, ["VOCdevkit"], folder / "VOCtrainval_11-May-2012.tar", "w")
    _tar(voc_trees, ["benchmark_RELEASE"], folder / "benchmark.tgz", "w:gz")
    _register(monkeypatch, *sorted(folder.iterdir()))
    return folder


@pytest.fixture(autouse=True)
def _voc_counts(monkeypatch):
    monkeypatch.setitem(prepare.EXPECTED_COUNTS, "voc", {"train": 3, "val": 2, "trainaug": len(TRAINAUG)})


def _check_trainaug(devkit: Path) -> None:
    voc = devkit / "VOC2012"
    listed = (voc / "ImageSets/Segmentation/trainaug.txt").read_text().split()
    assert listed == TRAINAUG == prepare.voc_trainaug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL)
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").iterdir()) == TRAINAUG  # no val labels
    sbd = devkit / "benchmark_RELEASE/dataset"
    for image_id in TRAINAUG:
        with Image.open(voc / "SegmentationClassAug" / f"{image_id}.png") as png:
            assert png.mode == "P" and png.getpalette()[:63] == voc_palette()[:63]
            got = np.array(png)
        if image_id in VOC_TRAIN:  # VOC's own (finer) label, not SBD's
            expected = np.array(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
            assert not np.array_equal(got, _sbd_label(image_id))
        else:  # read the way torchvision's SBDataset does
            expected = scipy.io.loadmat(sbd / "cls" / f"{image_id}.mat")["GTcls"][0]["Segmentation"][0]
        np.testing.assert_array_equal(got, expected)
    # The SBD-only image was copied into JPEGImages.
    assert (voc / "JPEGImages/2011_000001.jpg").read_bytes() == (sbd / "img/2011_000001.jpg").read_bytes()

    ident = lambda image, mask: (torch.from_numpy(image), torch.from_numpy(mask))  # noqa: E731
    dataset = VOCSegmentation(devkit, "auto", ident)
    assert dataset.split == "trainaug" and dataset.ids == TRAINAUG
    for i, image_id in enumerate(TRAINAUG):
        image, label = dataset.load(i)
        assert image.shape[:2] == label.shape == _size(image_id)[::-1]
    assert len(VOCSegmentation(devkit / "VOC2012", "val", ident)) == 2


def test_voc_trainaug_from_archives(tmp_path, voc_archives, capsys):
    devkit = tmp_path / "VOCdevkit"
    assert run_tool("voc", "--root", devkit, "--archives", voc_archives) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    assert not list(devkit.glob(".tmp-*")) and not list((devkit / "VOC2012").glob(".tmp-*"))
    _check_trainaug(devkit)
    # deeplabv3_voc (train_split "auto") then trains on trainaug.
    cfg = load_config("deeplabv3_voc", [f"data.root={devkit}", "data.num_workers=0"])
    train = build_seg_datamodule(cfg).train_dataset()
    assert train.split == "trainaug" and train.ids == TRAINAUG


def test_voc_trainaug_from_extracted_folders_without_archives(tmp_path, voc_trees):
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(voc_trees / "VOCdevkit", devkit)
    shutil.copytree(voc_trees / "benchmark_RELEASE", devkit / "benchmark_RELEASE")
    # An interrupted conversion left a partial label folder behind; it is redone.
    (devkit / "VOC2012/.tmp-SegmentationClassAug").mkdir()
    (devkit / "VOC2012/.tmp-SegmentationClassAug/2007_000032.png").write_bytes(b"\x89PNG")
    # --root may also name VOC2012 itself; the empty --archives folder shows no archive is read.
    (tmp_path / "empty").mkdir()
    assert run_tool("voc", "--root", devkit / "VOC2012", "--archives", tmp_path / "empty") == 0
    _check_trainaug(devkit)


def test_sbd_label_errors_name_the_file(tmp_path):
    bad = tmp_path / "2008_000008.mat"
    scipy.io.savemat(bad, {"GTinst": {"Segmentation": np.zeros((4, 4), np.uint8)}})
    with pytest.raises(DatasetError, match="2008_000008.mat has no 2-D GTcls.Segmentation"):
        prepare.read_sbd_label(bad)
    _sbd_mat(bad, np.full((4, 4), 21, np.uint8))
    with pytest.raises(DatasetError, match=r"2008_000008.mat: class values \[21\] outside 0..20"):
        prepare.read_sbd_label(bad)


# -------------------------------------------------------------------------------------------------------- verify
def _break_missing_image(devkit: Path, coco: Path) -> Path:
    path = devkit / "VOC2012/JPEGImages/2008_000003.jpg"
    path.unlink()
    return path


def _break_missing_label(devkit: Path, coco: Path) -> Path:
    path = devkit / "VOC2012/SegmentationClassAug/2008_000015.png"
    path.unlink()
    return path


def _break_label_value(devkit: Path, coco: Path) -> Path:
    path = devkit / "VOC2012/SegmentationClass/2007_000033.png"
    label = _voc_label("2007_000033")
    label[5, 5] = 21
    _palette_png(path, label)
    return path


def _break_rgb_label(devkit: Path, coco: Path) -> Path:
    path = devkit / "VOC2012/SegmentationClass/2007_000032.png"
    Image.open(path).convert("RGB").save(path)  # colours instead of class indices
    return path


def _break_coco_image(devkit: Path, coco: Path) -> Path:
    path = coco / "train2017/000000000025.jpg"
    path.unlink()
    return path


@pytest.mark.parametrize("breaker, dataset, message", [
    (_break_missing_image, "voc", "missing image"),
    (_break_missing_label, "voc", "missing label"),
    (_break_label_value, "voc", "label values outside the classes and 255 (1): {path}: [21]"),
    (_break_rgb_label, "voc", "label not a palette/grey PNG (1): {path} (mode RGB)"),
    (_break_coco_image, "coco", "JSON image entry whose file is absent (1): id 25: {path}"),
])
def test_verify_finds_each_problem(tmp_path, voc_trees, coco_archives, capsys, breaker, dataset, message):
    devkit, coco = tmp_path / "VOCdevkit", tmp_path / "coco"
    shutil.copytree(voc_trees / "VOCdevkit", devkit)
    shutil.copytree(voc_trees / "benchmark_RELEASE", devkit / "benchmark_RELEASE")
    prepare.convert_sbd(devkit)
    prepare.prepare("coco", coco, coco_archives)
    for name, root in (("voc", devkit), ("coco", coco)):
        assert prepare.verify(name, root)[1] == 0
    path = breaker(devkit, coco)
    capsys.readouterr()
    assert run_tool(dataset, "--root", devkit if dataset == "voc" else coco, "--verify") == 1
    out = capsys.readouterr().out
    assert message.format(path=path) in out and "PROBLEM" in out
    assert ("1 problem(s)" in out) or dataset == "coco"  # COCO: the folder count is off by one as well
    if dataset == "coco":
        assert "BAD train2017/*.jpg files: 1 (expected 2)" in out and "2 problem(s)" in out


# ---------------------------------------------------------------------------------------- download and checksums
def _cifar_archive(folder: Path, monkeypatch) -> Path:
    tree = folder / "cifar_tree"
    base = tree / CIFAR10.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lists = {}
    for split, names in (("train", [n for n, _ in CIFAR10.train_list]), ("test", [n for n, _ in CIFAR10.test_list])):
        lists[split] = []
        for name in names:
            batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 9], "batch_label": name}
            (base / name).write_bytes(pickle.dumps(batch))
            lists[split].append([name, _md5(base / name)])
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(CIFAR10, "train_list", lists["train"])
    monkeypatch.setattr(CIFAR10, "test_list", lists["test"])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(base / "batches.meta")})
    monkeypatch.setitem(prepare.EXPECTED_COUNTS, "cifar10", {"train": 10, "test": 2})
    out = folder / "archives"
    out.mkdir()
    return _tar(tree, [CIFAR10.base_folder], out / CIFAR10.filename, "w:gz")


class _FlakyServer(http.server.ThreadingHTTPServer):
    """Serves one payload with HTTP ranges on 127.0.0.1; the first response stops halfway and drops the connection."""

    def __init__(self, payload: bytes):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.payload, self.requests, self.bytes_sent = payload, [], []


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        ranged = self.headers.get("Range")
        start = int(re.fullmatch(r"bytes=(\d+)-", ranged).group(1)) if ranged else 0
        first = not server.requests
        server.requests.append(ranged)
        body = server.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = body[:len(body) // 2] if first else body
        self.wfile.write(body)
        server.bytes_sent.append(len(body))
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky_server():
    servers = []

    def start(payload: bytes) -> _FlakyServer:
        server = _FlakyServer(payload)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_resumes_after_dropped_connection(tmp_path, monkeypatch, flaky_server, capsys):
    archive = _cifar_archive(tmp_path / "src", monkeypatch)
    payload = archive.read_bytes()
    server = flaky_server(payload)
    _register(monkeypatch, archive, url=f"http://127.0.0.1:{server.server_address[1]}/")
    root = tmp_path / "data"
    part = root / "archives" / f"{CIFAR10.filename}.part"

    assert run_tool("cifar10", "--root", root, "--retries", "0") == 1
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and str(part) in err
    assert part.stat().st_size == len(payload) // 2
    assert not (root / "archives" / CIFAR10.filename).exists() and not (root / CIFAR10.base_folder).exists()

    assert run_tool("cifar10", "--root", root, "--retries", "0") == 0
    assert server.requests == [None, f"bytes={len(payload) // 2}-"]
    assert server.bytes_sent == [len(payload) // 2, len(payload) - len(payload) // 2]  # resumed, not restarted
    assert (root / "archives" / CIFAR10.filename).read_bytes() == payload and not part.exists()
    dataset = CIFAR10(str(root), train=True)
    assert len(dataset) == 10 and dataset[1][1] == 9
    assert classification.Cifar10(root, "train").targets == [0, 9] * 5


def test_download_retries_within_one_call(tmp_path, flaky_server):
    payload = np.random.default_rng(1).bytes(300_000)
    server = flaky_server(payload)
    url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
    dest = prepare.download(url, tmp_path / "blob.bin", hashlib.md5(payload).hexdigest(), retries=1, timeout=10)
    assert dest.read_bytes() == payload and len(server.requests) == 2


def test_download_checksum_mismatch_removes_partial(tmp_path, flaky_server):
    payload = b"x" * 10_000
    server = flaky_server(payload)
    url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
    with pytest.raises(ChecksumError) as info:
        prepare.download(url, tmp_path / "blob.bin", "0" * 32, retries=1, timeout=10)
    assert str(info.value) == (f"checksum mismatch for {tmp_path / 'blob.bin'}: expected md5 {'0' * 32}, "
                               f"got {hashlib.md5(payload).hexdigest()}")
    assert list(tmp_path.iterdir()) == []  # neither the .part nor the final name: the next run starts clean


def test_corrupted_archive_gives_checksum_error_and_no_tree(tmp_path, monkeypatch, capsys):
    archive = _cifar_archive(tmp_path / "src", monkeypatch)
    _register(monkeypatch, archive)
    good = _md5(archive)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    root = tmp_path / "data"
    assert run_tool("cifar10", "--root", root, "--archives", archive.parent) == 1
    err = capsys.readouterr().err
    assert f"checksum mismatch for {archive}: expected md5 {good}, got {_md5(archive)}" in err
    assert list(root.iterdir()) == []


def test_missing_archive_offline_names_file_and_url(tmp_path, coco_archives, capsys):
    (coco_archives / "val2017.zip").unlink()
    assert run_tool("coco", "--root", tmp_path / "coco", "--archives", coco_archives) == 1
    err = capsys.readouterr().err
    assert f"archive {coco_archives / 'val2017.zip'} not found: fetch http://unused.invalid/val2017.zip" in err
    assert (tmp_path / "coco" / "train2017").is_dir()  # the steps before it completed and stay


# ------------------------------------------------------------------------------------------- Flowers102, CIFAR-10
def test_flowers102_layout_loads_in_torchvision(tmp_path, monkeypatch):
    tree, folder = tmp_path / "tree", tmp_path / "archives"
    (tree / "jpg").mkdir(parents=True)
    folder.mkdir()
    for i in range(1, 7):
        (tree / "jpg" / f"image_{i:05d}.jpg").write_bytes(_jpeg(i, 16, 12))
    _tar(tree, ["jpg"], folder / "102flowers.tgz", "w:gz")
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": np.array([[77, 1, 102, 5, 9, 9]], np.uint8)})
    # Two ids per split at least: torchvision squeezes setid.mat, and a one-element split would become a scalar.
    scipy.io.savemat(folder / "setid.mat", {"trnid": np.array([[1, 4]]), "valid": np.array([[2, 5]]),
                                            "tstid": np.array([[3, 6]])})
    _register(monkeypatch, *sorted(folder.iterdir()))
    monkeypatch.setattr(Flowers102, "_file_dict", {
        "image": ("102flowers.tgz", _md5(folder / "102flowers.tgz")),
        "label": ("imagelabels.mat", _md5(folder / "imagelabels.mat")),
        "setid": ("setid.mat", _md5(folder / "setid.mat"))})
    monkeypatch.setitem(prepare.EXPECTED_COUNTS, "flowers102", {"images": 6, "train": 2, "val": 2, "test": 2})
    assert run_tool("flowers102", "--root", tmp_path / "data", "--archives", folder) == 0
    train = Flowers102(str(tmp_path / "data"), split="train")
    assert len(train) == 2 and [train[0][1], train[1][1]] == [76, 4]  # torchvision's labels are 0-based
    assert len(Flowers102(str(tmp_path / "data"), split="test")) == 2
    ours = classification.Flowers102(tmp_path / "data", "train")
    assert ours.targets == [76, 4] and ours[1][0].shape == (12, 16, 3)


def test_cifar10_from_archive_and_bad_label_found(tmp_path, monkeypatch, capsys):
    archive = _cifar_archive(tmp_path / "src", monkeypatch)
    _register(monkeypatch, archive)
    root = tmp_path / "data"
    assert run_tool("cifar10", "--root", root, "--archives", archive.parent) == 0
    assert len(CIFAR10(str(root), train=False)) == 2
    batch = root / CIFAR10.base_folder / "test_batch"
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    capsys.readouterr()
    assert run_tool("cifar10", "--root", root, "--verify") == 1
    assert f"label values outside the classes (1): {batch}: 0..10" in capsys.readouterr().out
