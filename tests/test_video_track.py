"""``--track`` on a detector that sees the shapes: each object keeps one track id in ≥ 95 % of the frames where it is
detected (issue #26).

The detector is trained here by ``tools/train_det.py`` on the clip's own frames (SSDLite α 0.35 at 96², 120 steps,
val mAP 0.94; 73 s of fixture set-up on 2 cores): fitted to these three objects, the cheapest detector that finds
them in every frame, which is what a test of the tracker needs. BatchNorm's running statistics follow the batches
with momentum 0.3: at SSDLite's default 0.03 a run this short evaluates with statistics still far from its
batches' and finds nothing (scores 0.2 in eval mode, 0.99 on the same frames in train mode, measured)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnv2_vision.data.synthetic import CATEGORY_IDS, SHAPE_CLASSES
from mnv2_vision.data.synthetic_video import render_moving_shapes, write_shapes_video
from torchvision.ops import box_iou

from helpers import sets, tool, train

pytestmark = pytest.mark.slow


def _coco_split(root: Path, split: str, seeds: range, frames: int) -> None:
    """Clips of ``seeds`` as a COCO split: every frame an image, every object a box."""
    folder = root / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for seed in seeds:
        clip = render_moving_shapes(seed, frames)
        for t, frame in enumerate(clip.frames):
            image_id = len(images) + 1
            name = f"{seed:03d}_{t:03d}.jpg"
            Image.fromarray(frame).save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": frame.shape[0], "width": frame.shape[1]})
            for box, label in zip(clip.boxes[t].tolist(), clip.labels.tolist()):
                x0, y0, x1, y1 = box
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                    "category_id": CATEGORY_IDS[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": (x1 - x0) * (y1 - y0)})
    (root / "annotations").mkdir(exist_ok=True)
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, SHAPE_CLASSES)]
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))


CLIP_SEED, FRAMES, FPS = 0, 40, 10


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moving")
    _coco_split(root, "train2017", range(CLIP_SEED, CLIP_SEED + 1), FRAMES)
    _coco_split(root, "val2017", range(CLIP_SEED, CLIP_SEED + 1), 8)
    out, _ = train(tmp_path_factory, "train_det", "ssdlite_shapes", sets(
        "data.synthetic=false", f"data.root={root}", "data.image_size=96", "model.width_mult=0.35",
        "model.bn_momentum=0.3", "trainer.max_epochs=24", "trainer.check_val_every_n_epoch=24", "data.batch_size=8",
        "data.augment=none", "sched.warmup_epochs=1"))
    return out / "ckpt" / "last.ckpt"


def test_each_object_keeps_one_track_id(detector, tmp_path):
    shapes = render_moving_shapes(seed=CLIP_SEED, num_frames=FRAMES)
    video = write_shapes_video(tmp_path / "clip.mp4", shapes, fps=FPS)
    tool("predict").main(["--ckpt", str(detector), str(video), "--out", str(tmp_path / "out"), "--track"])
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == FRAMES
    ids: dict[int, list[int]] = {i: [] for i in range(len(shapes.labels))}  # object → its track id per frame found
    for rec, truth in zip(records, shapes.boxes):
        if not rec["boxes"]:
            continue
        iou = box_iou(torch.tensor(truth), torch.tensor(rec["boxes"], dtype=torch.float32))
        for obj in range(len(truth)):
            best = int(iou[obj].argmax())
            if iou[obj, best] >= 0.5:  # detected in this frame
                ids[obj].append(rec["track_ids"][best])
    for obj, found in ids.items():
        assert len(found) >= 0.75 * FRAMES, (obj, len(found))  # found in most frames (40 of 40 measured)
        top = max(set(found), key=found.count)
        share = found.count(top) / len(found)  # the first frame of a track is unconfirmed (-1): 39 of 40 measured
        assert top >= 0 and share >= 0.95, (obj, share, found)
    tops = [max(set(f), key=f.count) for f in ids.values()]
    assert len(set(tops)) == len(tops)  # one id per object, none shared
