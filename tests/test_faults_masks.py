"""Malformed COCO instance masks (issue #23, item 2): an RLE whose run lengths do not add up to its size, or whose
counts / size are of the wrong type, is reported by check_data and skipped (its box region ignored) by training and
evaluation; it never reaches pycocotools, whose decoder reads past the string or leaves pixels uninitialised."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, to_dict
from mnv2_vision.data.check import Skipped, check_coco
from mnv2_vision.data.coco import CocoDetection, CocoSegmentation
from mnv2_vision.data.masks import VOC20_CATEGORY_IDS, paint_semantic
from mnv2_vision.data.seg_transforms import SegEvalTransform
from mnv2_vision.data.voc import VOC_CLASSES

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
H, W = 48, 64
CATS = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
VOC20 = {c: i + 1 for i, c in enumerate(VOC20_CATEGORY_IDS)}
DOG_ID, DOG_BOX = 12, [30.0, 10.0, 28.0, 30.0]  # the dog's annotation id and box (x, y, w, h)


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"fault_masks_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


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


# ---------------------------------------------------------------------------------------------- regression tests
def test_a_half_cut_counts_string_is_reported_and_skipped_in_training(tmp_path, capsys, warnings):
    rle = _half_cut()
    root = _coco(tmp_path / "coco", rle)
    assert check_coco(root, "val", masks=False) == []  # boxes and images are fine: only the mask is damaged
    assert _tool("check_data").main(["--cfg", str(_cfg(tmp_path, root))]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'val' / 'a.png'}\n  [malformed_mask] annotation {DOG_ID}: RLE counts " in out, out
    assert f"sum to {sum_runs(rle['counts'])} pixels, not 48x64 = 3072" in out, out
    assert "1 problem(s) in 1 file(s) (malformed_mask: 1)" in out
    # Training (on_bad="replace") keeps the image, skips the dog (its box region ignored) and says so once.
    train = CocoSegmentation(root, "val", SegEvalTransform(), masks="voc20", on_bad="replace")
    np.testing.assert_array_equal(train[0]["mask"].numpy(), _ignored_dog_label())
    np.testing.assert_array_equal(train[0]["mask"].numpy(), _ignored_dog_label())
    said = [m for m in warnings if f"annotation {DOG_ID}" in m]
    assert len(said) == 1 and said[0].startswith(f"{root / 'val' / 'a.png'}: skipped the malformed mask of "
                                                 f"annotation {DOG_ID} (RLE counts "), warnings
    assert "instances_val.json" in said[0] and "box region is ignored (255)" in said[0]


def sum_runs(counts: str) -> int:
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


def test_a_half_cut_real_dog_is_reported_and_ignored(tmp_path, warnings):
    """The real coco_masks dog (MNV2_REAL_DATA): its counts string cut in half is reported and its box ignored."""
    import os

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
