"""Malformed COCO instance masks (issue #23, item 2): an RLE whose run lengths do not add up to its size, or whose
counts / size are of the wrong type, is reported by check_data and skipped (its box region ignored) by training and
evaluation; it never reaches pycocotools, whose decoder reads past the string or leaves pixels uninitialised."""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, to_dict
from mnv2_vision.data.io.skip import Skipped
from mnv2_vision.data.verify import check_coco
from mnv2_vision.data.coco import CocoDetection
from mnv2_vision.data.segmentation.coco import CocoSegmentation
from mnv2_vision.data.masks import VOC20_CATEGORY_IDS, paint_semantic
from mnv2_vision.data.segmentation.transforms import SegEvalTransform
from mnv2_vision.data.voc import VOC_CLASSES

from helpers import LogRecords as _Records, tool as _tool

H, W = 48, 64
CATS = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
VOC20 = {c: i + 1 for i, c in enumerate(VOC20_CATEGORY_IDS)}
DOG_ID, DOG_BOX = 12, [30.0, 10.0, 28.0, 30.0]  # the dog's annotation id and box (x, y, w, h)


@pytest.fixture()
def warnings():
    handler = _Records()
    logger = logging.getLogger("mnv2_vision")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _dog_rle() -> dict:
    """A real-looking dog: an ellipse with a notch, as pycocotools encodes it (compressed counts string)."""
    yy, xx = np.mgrid[:H, :W]
    m = (((yy - 25) / 14.0) ** 2 + ((xx - 44) / 13.0) ** 2 <= 1) & ~((yy < 20) & (xx > 40) & (xx < 46))
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _anns(dog_segmentation) -> list[dict]:
    return [
        {"id": 11, "category_id": 1, "segmentation": [[2, 2, 20, 2, 20, 30, 2, 30]], "bbox": [2, 2, 18, 28],
         "iscrowd": 0},
        {"id": DOG_ID, "category_id": 18, "segmentation": dog_segmentation, "bbox": DOG_BOX, "iscrowd": 0},
    ]


def _coco(root: Path, dog_segmentation, split: str = "val") -> Path:
    """One 48x64 image with a person polygon and a dog whose segmentation is ``dog_segmentation``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(root / split / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "annotations": [{**a, "image_id": 1, "area": 100.0} for a in _anns(dog_segmentation)],
            "categories": CATS}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _cfg(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "seg.yaml"
    cfg.write_text(f"task: segmentation\ndata:\n  format: coco\n  root: {root}\n  masks: voc20\n  train_split: val\n"
                   "  val_split: val\n  num_workers: 0\n  val_batch_size: 1\nmodel:\n  name: deeplabv3_mobilenet_v2\n"
                   "  num_classes: 21\n  width_mult: 0.35\n  pretrained: null\n")
    return cfg


def _ignored_dog_label() -> np.ndarray:
    """The label map the skip policy gives: the person painted, the dog's box region 255 (as an empty mask)."""
    label, empty = paint_semantic(_anns([]), H, W, VOC20)
    assert empty == [DOG_ID] and (label == VOC20[1]).sum() > 0
    return label


def _half_cut() -> dict:
    rle = _dog_rle()
    return {**rle, "counts": rle["counts"][: len(rle["counts"]) // 2]}


def _sum_runs(counts: str) -> int:
    """The sum of the run lengths of a compressed counts string, decoded as pycocotools' maskApi.c rleFrString
    does (a plain loop, independent of the project's vectorised validator); a value cut short counts as ended."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more and p < len(counts):
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return sum(runs)


# ---------------------------------------------------------------------------------------------- regression tests
def test_a_half_cut_counts_string_is_reported_and_skipped_in_training(tmp_path, capsys, warnings):
    rle = _half_cut()
    root = _coco(tmp_path / "coco", rle)
    assert check_coco(root, "val", masks=False) == []  # boxes and images are fine: only the mask is damaged
    assert _tool("check_data").main(["--cfg", str(_cfg(tmp_path, root))]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'val' / 'a.png'}\n  [malformed_mask] annotation {DOG_ID}: RLE counts " in out, out
    assert f"sum to {_sum_runs(rle['counts'])} pixels, not 48x64 = 3072" in out, out
    assert "1 problem(s) in 1 file(s) (malformed_mask: 1)" in out
    # Training (on_bad="replace") keeps the image, skips the dog (its box region ignored) and says so once.
    train = CocoSegmentation(root, "val", SegEvalTransform(), masks="voc20", on_bad="replace")
    np.testing.assert_array_equal(train[0]["mask"].numpy(), _ignored_dog_label())
    np.testing.assert_array_equal(train[0]["mask"].numpy(), _ignored_dog_label())
    said = [m for m in warnings if f"annotation {DOG_ID}" in m]
    assert len(said) == 1 and said[0].startswith(f"{root / 'val' / 'a.png'}: skipped the malformed mask of "
                                                 f"annotation {DOG_ID} (RLE counts "), warnings
    assert "instances_val.json" in said[0] and "box region is ignored (255)" in said[0]


@pytest.mark.parametrize("counts", ["", [1, 2, 3]], ids=["empty_string", "short_list"])
def test_short_counts_never_give_uninitialised_labels(tmp_path, counts, warnings):
    root = _coco(tmp_path / "coco", {"size": [H, W], "counts": counts})
    problems = check_coco(root, "val", masks=True)
    assert [(p.kind, p.detail.split(":")[0]) for p in problems] == [("malformed_mask", f"annotation {DOG_ID}")]
    ds = CocoDetection(root, "val", masks="voc20", on_bad="drop")
    reads = [ds[0][1]["mask"].numpy() for _ in range(3)]
    for label in reads:  # deterministic, and exactly the skip policy's map: no pixel of uninitialised memory
        np.testing.assert_array_equal(label, _ignored_dog_label().astype(np.int64))
    assert sum(f"annotation {DOG_ID}" in m for m in warnings) == 1


@pytest.mark.parametrize("segmentation, reason", [
    ({"size": [H, W], "counts": 12345}, "RLE counts of type int are neither a string nor a list of run lengths"),
    ({"size": ["a", "b"], "counts": "0"}, "RLE size ['a', 'b'] is not two positive integers (height, width)"),
], ids=["int_counts", "string_size"])
def test_counts_or_size_of_the_wrong_type_are_one_problem_line(tmp_path, capsys, warnings, segmentation, reason):
    root = _coco(tmp_path / "coco", segmentation)
    assert _tool("check_data").main(["--cfg", str(_cfg(tmp_path, root))]) == 1
    out = capsys.readouterr().out
    assert f"  [malformed_mask] annotation {DOG_ID}: {reason}\n" in out, out
    # The dataset paths of training (replace), evaluation (drop) and the multi-task pair (CocoDetection).
    for on_bad in ("replace", "drop"):
        item = CocoSegmentation(root, "val", SegEvalTransform(), masks="voc20", on_bad=on_bad)[0]
        np.testing.assert_array_equal(item["mask"].numpy(), _ignored_dog_label())
        _, target = CocoDetection(root, "val", masks="voc20", on_bad=on_bad)[0]
        np.testing.assert_array_equal(target["mask"].numpy(), _ignored_dog_label().astype(np.int64))
    assert any(f"annotation {DOG_ID} ({reason})" in m for m in warnings), warnings


def test_eval_seg_scores_an_image_with_a_malformed_mask(tmp_path, capsys):
    """eval_seg end to end: the image is scored (not skipped, no TypeError), the dog's box region ignored."""
    root = _coco(tmp_path / "coco", {"size": [H, W], "counts": 12345})
    cfg = load_config(str(_cfg(tmp_path, root)))
    model = build_from_config(cfg, pretrained=False)
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": {"config": to_dict(cfg), "class_names": list(VOC_CLASSES)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    result = _tool("eval_seg").main(["--ckpt", str(ckpt), "--device", "cpu"])
    assert result["num_images"] == 1 and result["skipped_images"] == []
    clean = _coco(tmp_path / "clean", [])  # the same image with the dog's mask empty: the same label map
    assert _tool("eval_seg").main(["--ckpt", str(ckpt), "--device", "cpu", "--set", f"data.root={clean}"])["miou"] \
        == result["miou"]


# ---------------------------------------------------------------------------------------------- fuzz
FUZZ_H, FUZZ_W = (32, 40), (24, 36)  # the two images' heights and widths
WEIRD = ["a", "", None, True, 1.5, -3, 0, 2**40, 2**70, float("nan"), float("inf"), [], [1, 2], {"a": 1}, "12"]
BAD_CHARS = [" ", "~", "\x7f", "é", "\x00", "/", "p", "z", "O", "0", "o"]


def _fuzz_base() -> dict:
    """Two images; a compressed-RLE dog, a polygon person, an uncompressed-RLE crowd, a compressed-RLE umbrella
    (no VOC class) and an RLE person on the second image."""
    def rle(shape, y0, y1, x0, x1, compressed=True):
        m = np.zeros(shape, np.uint8)
        m[y0:y1, x0:x1] = 1
        m[y0, x0] = 0  # not a plain rectangle: more runs
        if compressed:
            return {"size": list(shape), "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}
        flat = m.flatten(order="F")
        edges = np.flatnonzero(np.diff(np.concatenate(([0], flat, [1 - flat[-1]])))) if flat.size else []
        return {"size": list(shape), "counts": np.diff(np.concatenate(([0], edges))).astype(int).tolist()}

    (h0, h1), (w0, w1) = FUZZ_H, FUZZ_W
    anns = [
        (1, 1, 18, rle((h0, w0), 4, 20, 3, 15), [3, 4, 12, 16], 0),
        (2, 1, 1, [[18, 2, 30, 2, 30, 14, 18, 14]], [18, 2, 12, 12], 0),
        (3, 1, 1, rle((h0, w0), 20, 30, 16, 24, compressed=False), [16, 20, 8, 10], 1),
        (4, 1, 28, rle((h0, w0), 22, 31, 2, 9), [2, 22, 7, 9], 0),
        (5, 2, 1, rle((h1, w1), 2, 20, 5, 30), [5, 2, 25, 18], 0),
    ]
    return {"images": [{"id": 1, "file_name": "a.png", "height": h0, "width": w0},
                       {"id": 2, "file_name": "b.png", "height": h1, "width": w1}],
            "annotations": [{"id": i, "image_id": img, "category_id": c, "segmentation": s, "bbox": b, "area": 50.0,
                             "iscrowd": crowd} for i, img, c, s, b, crowd in anns],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 28, "name": "umbrella"}]}


def _cut(rng, s: str) -> str:
    return s[:rng.randrange(len(s) + 1)]


def _mutate_counts_string(rng, s: str):
    op = rng.randrange(6)
    if op == 0:
        return _cut(rng, s)
    if op == 1:
        return s + "".join(chr(rng.randrange(48, 112)) for _ in range(rng.randrange(1, 4)))
    if op == 2 and s:
        i = rng.randrange(len(s))
        return s[:i] + rng.choice(BAD_CHARS + [chr(rng.randrange(48, 112))]) + s[i + 1:]
    if op == 3 and s:
        i = rng.randrange(len(s))
        return s[:i] + s[i + 1:]
    if op == 4:
        return s + "P" * rng.randrange(1, 9) + "0"  # a long run length (continuation chunks)
    return rng.choice(["", 12345, None, 1.5, ["a"], {"x": 1}, b"abc".decode(), list(range(5))])


def _mutate_counts_list(rng, counts: list):
    counts = list(counts)
    op = rng.randrange(5)
    i = rng.randrange(len(counts))
    if op == 0:
        counts[i] += rng.choice([-1, 1, 7, -counts[i] - 1])
    elif op == 1:
        counts[i] = rng.choice(WEIRD)
    elif op == 2:
        del counts[i]
    elif op == 3:
        counts.append(rng.choice([0, 1, 5, 2**33]))
    else:
        return rng.choice([[1, 2, 3], [], "", 7, [0.5] * 4, [[1]]])
    return counts


def _mutate_segmentation(rng, seg):
    if isinstance(seg, dict):
        seg = dict(seg)
        if rng.random() < 0.3:
            seg["size"] = rng.choice([["a", "b"], "32x40", None, [32], [32, 40, 1], [32.0, 40.0], [True, 40], [-32, 40],
                                      [0, 0], [0, 40], [10**6, 10**6], [2**40, 1], [40, 32], [33, 40]])
        elif rng.random() < 0.1:
            seg.pop(rng.choice(["size", "counts"]))
        elif isinstance(seg["counts"], str):
            seg["counts"] = _mutate_counts_string(rng, seg["counts"])
        else:
            seg["counts"] = _mutate_counts_list(rng, seg["counts"])
        return seg
    polys = [list(p) for p in seg]
    op = rng.randrange(7)
    p = polys[0]
    if op == 0:
        p[rng.randrange(len(p))] = rng.choice([float("nan"), float("inf"), "x", "3", None, [1, 2], 1e9, 1e300, -1e12])
    elif op == 1:
        del p[rng.randrange(len(p))]  # odd length
    elif op == 2:
        polys = [[p]]  # nested one level too deep
    elif op == 3:
        polys = [p[:4]]  # four numbers: not a box
    elif op == 4:
        return rng.choice([p, 7, "polygon", None, {}, [[]], [7], {"counts": "abc"}])
    elif op == 5:
        polys.append([rng.uniform(-500, 500) for _ in range(rng.choice([6, 8, 9]))])
    else:
        polys[0] = [v * rng.choice([-1, 100, 1e7]) for v in p]
    return polys


def _mutate(rng, data: dict) -> str:
    """One random defect in (a copy of) the annotation file; returns the JSON text to write."""
    data = json.loads(json.dumps(data))
    kind = rng.random()
    anns = data["annotations"]
    ann = rng.choice(anns)
    if kind < 0.45:
        ann["segmentation"] = _mutate_segmentation(rng, ann["segmentation"])
    elif kind < 0.53:
        ann["bbox"] = rng.choice([None, "1 2 3 4", [1, 2, 3], [float("nan")] * 4, [-5, -5, -1, 3], [1e30, 0, 5, 5],
                                  [0, 0, 1e30, 1e30], ["a", 1, 2, 3], [[1], 2, 3, 4], {"x": 1, "y": 2, "w": 3, "h": 4}])
    elif kind < 0.61:
        ann["category_id"] = rng.choice(WEIRD + [99, 18.0])
    elif kind < 0.65:
        data["categories"][rng.randrange(3)]["id"] = rng.choice(WEIRD + [18])
    elif kind < 0.72:
        img = rng.choice(data["images"])
        key = rng.choice(["height", "width"])
        if rng.random() < 0.15:
            img.pop(key)
        else:
            img[key] = rng.choice(WEIRD + [img[key] + 1, float(img[key]), -img[key], 10**9])
    elif kind < 0.77:
        ann["iscrowd"] = rng.choice(WEIRD + ["1", "0", 2])
    elif kind < 0.81:
        ann[rng.choice(["id", "image_id", "area"])] = rng.choice(WEIRD)
    elif kind < 0.85:
        rng.choice(data["images"])[rng.choice(["id", "file_name"])] = rng.choice(WEIRD + ["missing.png", "../a.png"])
    elif kind < 0.9:
        key = rng.choice(["images", "annotations", "categories"])
        if rng.random() < 0.3:
            data.pop(key)
        elif rng.random() < 0.5:
            data[key] = rng.choice([None, {}, "x", 3, {"1": {}}])
        else:
            data[key][rng.randrange(len(data[key]))] = rng.choice([None, "x", 3, [], [1, 2]])
    elif kind < 0.95:
        text = json.dumps(data)
        return text[:rng.randrange(len(text))]
    else:
        return json.dumps(rng.choice([[], "images", 3, None, [data]]))
    return json.dumps(data)


KNOWN_KINDS = {"missing_file", "unreadable_image", "unreadable_annotations", "size_mismatch", "orphan_annotation",
               "unknown_category", "malformed_box", "nonfinite_box", "negative_box", "degenerate_box",
               "out_of_bounds_box", "polygon_outside_image", "mask_size_mismatch", "empty_mask", "malformed_mask",
               "malformed_iscrowd"}  # the last: #24, iscrowd other than 0 or 1


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    for name, h, w in (("a.png", FUZZ_H[0], FUZZ_W[0]), ("b.png", FUZZ_H[1], FUZZ_W[1])):
        Image.fromarray(np.random.default_rng(h).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "val" / name)
    return root


def _read_twice(ds: CocoDetection, index: int):
    """Item ``index``, whose label map painted a second time must be identical (pycocotools' uninitialised pixels
    never are; the image itself is read once, to keep the fuzz fast)."""
    first = ds[index]
    if isinstance(first, Skipped):
        assert ds[index] == first
        return first
    image, target = first
    again = ds.load_mask(index, tuple(target["orig_size"]))
    assert torch.equal(target["mask"], torch.from_numpy(again).to(torch.int64))
    assert target["mask"].dtype == torch.int64 and tuple(target["mask"].shape) == tuple(image.shape[1:])
    assert set(torch.unique(target["mask"]).tolist()) <= set(range(21)) | {255}
    return first


def _fuzz(root: Path, seeds: range) -> dict[str, int]:
    """Each seed: one mutation of the base file, then check_coco and the training / evaluation dataset path.

    Every outcome is one of: a clean result, problem lines naming a file of the data, an image skipped (a
    ``Skipped`` record naming it), or the dataset refused with a ``DataError`` naming the annotation file. Never
    another exception, and check_data is never clean when the dataset skips or refuses something."""
    from mnv2_vision.errors import DataError

    ann_file = root / "annotations" / "instances_val.json"
    base = _fuzz_base()
    transform = SegEvalTransform()
    outcomes = {"clean": 0, "reported": 0, "image_skipped": 0, "instance_skipped": 0, "refused": 0}
    handler = _Records()
    logger = logging.getLogger("mnv2_vision")
    logger.addHandler(handler)
    try:
        for seed in seeds:
            text = _mutate(random.Random(seed), base)
            ann_file.write_text(text)
            where = f"seed {seed}: {text[:300]}"
            problems = check_coco(root, "val", masks=True)
            assert all(p.kind in KNOWN_KINDS and p.file.startswith(str(root)) for p in problems), (where, problems)
            handler.messages.clear()
            try:
                ds = CocoDetection(root, "val", masks="voc20" if seed % 3 else "all", on_bad="drop")
                items = [_read_twice(ds, i) for i in range(len(ds))]
            except DataError as e:
                assert str(ann_file) in str(e), (where, e)
                assert problems, (where, e)
                outcomes["refused"] += 1
                continue
            seg: CocoSegmentation | list = []
            try:  # every 4th: the segmentation data (an area filter as training's) gives the same label maps
                if seed % 4 == 0:
                    seg = CocoSegmentation(root, "val", transform, masks=ds.masks, min_mask_pixels=seed % 8 * 5,
                                           on_bad="drop")
            except DataError as e:  # every image filtered out
                assert str(ann_file) in str(e) and "no image left" in str(e), (where, e)
            for index in range(len(seg)):
                first, second = seg[index], seg[index]
                assert type(first) is type(second) and (isinstance(first, Skipped) and first == second
                                                        or torch.equal(first["mask"], second["mask"])), where
                det = items[ds.ids.index(int(first["id"]))] if not isinstance(first, Skipped) else None
                if det is not None and not isinstance(det, Skipped):
                    assert torch.equal(first["mask"].to(torch.int64), det[1]["mask"]), where
            skipped = [s for s in items if isinstance(s, Skipped)]
            assert all(s.name.startswith(str(root / "val")) for s in skipped), (where, skipped)
            reported = {p.file for p in problems}
            assert all(s.name in reported for s in skipped), (where, skipped, problems)
            malformed = [m for m in handler.messages if "malformed mask" in m]
            assert not malformed or any(p.kind == "malformed_mask" for p in problems), (where, malformed, problems)
            key = "image_skipped" if skipped else "instance_skipped" if malformed else \
                "reported" if problems else "clean"
            outcomes[key] += 1
    finally:
        logger.removeHandler(handler)
    return outcomes


# pycocotools' decode warns on every call under numpy 2 (its own __array__); thousands of records slow the suite
QUIET_PYCOCOTOOLS = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@QUIET_PYCOCOTOOLS
def test_fuzz_a_thousand_mutations_of_an_annotation_file_with_masks(fuzz_root):
    start = time.perf_counter()
    outcomes = _fuzz(fuzz_root, range(1000))
    seconds = time.perf_counter() - start
    print(f"fuzz: 1000 mutations in {seconds:.1f} s: {outcomes}")
    assert sum(outcomes.values()) == 1000, outcomes
    assert min(v for k, v in outcomes.items() if k != "clean") > 50, outcomes  # every kind of outcome is reached


@pytest.mark.slow
@QUIET_PYCOCOTOOLS
def test_fuzz_twenty_thousand_mutations(fuzz_root):
    outcomes = _fuzz(fuzz_root, range(1000, 21000))
    assert sum(outcomes.values()) == 20000, outcomes


@QUIET_PYCOCOTOOLS
def test_fuzz_masks_alone_paint_deterministically_or_name_the_annotation():
    """2,000 mutated segmentations straight through paint_semantic and segmentation_problems (no files): a label map
    painted twice alike, or a ValueError naming the annotation; every problem line names it too."""
    from mnv2_vision.data.masks import MalformedMaskError, segmentation_problems

    base = [a for a in _fuzz_base()["annotations"] if a["image_id"] == 1]
    h, w = FUZZ_H[0], FUZZ_W[0]
    counts = {"painted": 0, "instance_skipped": 0, "image_refused": 0}
    for seed in range(2000):
        rng = random.Random(seed)
        anns = json.loads(json.dumps(base))
        ann = rng.choice(anns)
        ann["segmentation"] = _mutate_segmentation(rng, ann["segmentation"])
        for line in segmentation_problems(ann, h, w):
            assert line.split(": ")[0] in KNOWN_KINDS and f"annotation {ann['id']}" in line, (seed, line)
        malformed: list[str] = []
        try:
            label, _ = paint_semantic(anns, h, w, VOC20, malformed)
        except ValueError as e:  # only an RLE of another size than the image: the whole image is skipped
            assert str(e).startswith(f"annotation {ann['id']}: RLE size ") and "differs from the image" in str(e)
            counts["image_refused"] += 1
            continue
        np.testing.assert_array_equal(paint_semantic(anns, h, w, VOC20, [])[0], label)
        assert all(m.startswith(f"annotation {ann['id']}: ") for m in malformed), (seed, malformed)
        if malformed:
            with pytest.raises(MalformedMaskError, match=f"^annotation {ann['id']}: "):
                paint_semantic(anns, h, w, VOC20)  # no list to collect them: an error, never a silent skip
        counts["instance_skipped" if malformed else "painted"] += 1
    assert min(counts.values()) > 20, counts


def test_a_half_cut_real_dog_is_reported_and_ignored(tmp_path, warnings):
    """The real coco_masks dog (MNV2_REAL_DATA): its counts string cut in half is reported and its box ignored."""
    base = os.environ.get("MNV2_REAL_DATA")
    real = Path(base or "") / "coco_masks"
    if not base or not (real / "annotations" / "instances_val2017.json").is_file():
        pytest.skip("MNV2_REAL_DATA is not set (folder holding coco_masks)")
    data = json.loads((real / "annotations" / "instances_val2017.json").read_text())
    dog = next(a for a in data["annotations"] if a["category_id"] == 18)
    img = next(i for i in data["images"] if i["id"] == dog["image_id"])
    anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").symlink_to(real / "val2017")
    ann_file = tmp_path / "annotations" / "instances_val2017.json"
    ann_file.write_text(json.dumps({**data, "images": [img], "annotations": anns}))
    clean = CocoDetection(tmp_path, "val2017", masks="voc20")[0][1]["mask"]
    assert (clean == VOC20[18]).sum() > 100 and check_coco(tmp_path, "val2017", masks=True) == []
    counts = dog["segmentation"]["counts"]
    dog["segmentation"]["counts"] = counts[: len(counts) // 2]
    ann_file.write_text(json.dumps({**data, "images": [img], "annotations": anns}))
    problems = check_coco(tmp_path, "val2017", masks=True)
    assert [(p.kind, p.detail.split(": ")[0]) for p in problems] == [("malformed_mask", f"annotation {dog['id']}")]
    ds = CocoDetection(tmp_path, "val2017", masks="voc20", on_bad="replace")
    label = ds[0][1]["mask"]
    assert torch.equal(label, ds[0][1]["mask"]) and not (label == VOC20[18]).any()
    x, y, bw, bh = dog["bbox"]
    assert (label[int(y) + 1:int(y + bh) - 1, int(x) + 1:int(x + bw) - 1] == 255).all()
    assert sum(f"annotation {dog['id']} (RLE counts" in m for m in warnings) == 1, warnings
