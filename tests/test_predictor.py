"""The predictor API (issue #17): ``mnv2_vision.load(path).predict(inputs)`` against the evaluation code path, across
input kinds, EXIF orientation, batching, ``model.pt`` + config, and the ONNX Runtime backend."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_convert

import mnv2_vision
from mnv2_vision.checkpoint import load_model
from mnv2_vision.data.io.images import load_rgb
from mnv2_vision.deploy.onnx_export import match_detections
from mnv2_vision.lit.detection import DetectionModule, build_det_datamodule, categories_from

from helpers import tool as _tool

TINY = ["--set", "data.subset=8", "--set", "data.image_size=96", "--set", "trainer.max_epochs=2",
        "--set", "data.num_workers=0", "--set", "data.batch_size=4", "--set", "data.val_batch_size=4",
        "--set", "model.width_mult=0.35", "--set", "trainer.check_val_every_n_epoch=1"]


@pytest.fixture(scope="module")
def det_run(tmp_path_factory, shapes_root) -> Path:
    out = tmp_path_factory.mktemp("predictor") / "det"
    _tool("train_det").main(["--cfg", "ssdlite_shapes", "--out", str(out), *TINY])
    return out


@pytest.fixture(scope="module")
def val_files(shapes_root) -> tuple[list[int], list[Path]]:
    root = shapes_root / "coco"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    ids = sorted(gt.getImgIds())[:8]
    return ids, [root / "val2017" / gt.imgs[i]["file_name"] for i in ids]


def _eval_path_detections(ckpt: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Unrounded detections of the code eval_det runs (DetectionModule's validation over the checkpoint's split)."""
    cfg, model, hparams = load_model(ckpt)
    ids, names = categories_from(hparams)
    dm = build_det_datamodule(cfg, category_ids=ids)
    seen: dict[int, dict] = {}

    class Keep(DetectionModule):
        def on_validation_epoch_end(self) -> None:
            seen.update(zip(self._val_ids, self._val_dets))
            super().on_validation_epoch_end()

    module = Keep(model, optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval, loss=cfg.loss, category_ids=ids,
                  category_names=names)
    pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    return seen


def test_predictions_equal_eval_det(det_run, val_files, tmp_path):
    ckpt = det_run / "ckpt" / "last.ckpt"
    ids, files = val_files
    ref = _eval_path_detections(ckpt)
    for fuse in (False, True):
        got = mnv2_vision.load(ckpt, fuse=fuse, device="cpu").predict(files, batch_size=3)
        for i, r in zip(ids, got):
            # the same detections to 1e-5 (scores; boxes 1e-5 of the image side); two of one label whose scores tie
            # within that may come in either order (the evaluation runs channels-last, other kernels)
            assert len(r["scores"]) == len(ref[i]["scores"])
            assert match_detections(ref[i], r, box_atol=1e-5 * 640, score_atol=1e-5) == []
            torch.testing.assert_close(r["scores"], ref[i]["scores"], atol=1e-5, rtol=0)
            assert r["category_ids"] == [[1, 3, 4, 7][k - 1] for k in r["labels"].tolist()]
            assert r["names"][0] in {"circle", "square", "star", "triangle"} and r["path"] == str(files[ids.index(i)])
    # and eval_det's written COCO results (rounded to 3 decimals in the JSON)
    _tool("eval_det").main(["--ckpt", str(ckpt), "--out", str(tmp_path), "--set", "data.num_workers=0"])
    results = json.loads((tmp_path / "detections_val2017.json").read_text())
    for i, r in zip(ids, got):
        mine = [d for d in results if d["image_id"] == i]
        assert len(mine) == len(r["scores"])
        written = {"scores": torch.tensor([d["score"] for d in mine]), "labels": torch.tensor(
            [[1, 3, 4, 7].index(d["category_id"]) + 1 for d in mine]), "boxes": box_convert(
            torch.tensor([d["bbox"] for d in mine]), "xywh", "xyxy")}
        assert match_detections(written, r, box_atol=2e-3, score_atol=1e-5) == []  # 3-decimal JSON xywh


def test_batched_equals_one_by_one_with_images_of_different_sizes(det_run, val_files):
    p = mnv2_vision.load(det_run / "ckpt" / "last.ckpt", device="cpu")
    _, files = val_files
    images = [load_rgb(f) for f in files[:3]]
    images.append(np.ascontiguousarray(images[0][:50, :77]))  # another size in the same batch
    one = [p.predict(im)[0] for im in images]
    batched = p.predict(images, batch_size=4)
    for a, b in zip(one, batched):
        assert a["labels"].tolist() == b["labels"].tolist() and a["size"] == b["size"]
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
    assert batched[3]["size"] == (50, 77) and (batched[3]["boxes"][:, 2] <= 77).all()



def test_cpu_streams_give_the_one_by_one_results_and_leave_the_threads_alone(det_run, val_files, tmp_path):
    """On the CPU graph a batch runs as single-image streams, one per intra-op thread (here 2): the results are
    those of one image at a time, in order, and the caller's thread settings are as before."""
    import threading

    p = mnv2_vision.load(det_run / "ckpt" / "last.ckpt", device="cpu")
    assert p.backend.freeze
    _, files = val_files
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = [p.predict(f, score_thresh=0.05)[0] for f in files]
        threads_seen = []
        decode = p._det_input
        p._det_input = lambda item: (threads_seen.append((threading.get_ident(), torch.get_num_threads())),
                                     decode(item))[1]
        batched = p.predict(files, batch_size=4, score_thresh=0.05)
        del p._det_input
        assert list(p._pools) == [2]
        assert len({t for t, _ in threads_seen}) == 2 and {n for _, n in threads_seen} == {1}  # 2 streams × 1 thread
        assert torch.get_num_threads() == 2
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # the default for new threads
        t.start()
        t.join()
        assert seen == [2]
        assert sum(len(r["scores"]) for r in one) > 0
        for a, b in zip(one, batched):
            assert a["path"] == b["path"] and a["size"] == b["size"] and a["names"] == b["names"]
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(a[key], b[key]), key
        (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")  # a bad file among the batch: its error, naming it
        with pytest.raises(ValueError, match="bad.jpg"):
            p.predict([files[0], tmp_path / "bad.jpg", files[1]], batch_size=3)
    finally:
        torch.set_num_threads(before)


def test_every_input_kind_gives_the_same_result(det_run, val_files, tmp_path):
    p = mnv2_vision.load(det_run / "ckpt" / "last.ckpt", device="cpu")
    path = val_files[1][0]
    rgb = load_rgb(path)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    kinds = {"path": [path], "str": [str(path)], "pil": [Image.open(path)], "array": [rgb],
             "tensor": [torch.from_numpy(rgb).permute(2, 0, 1)],
             "float tensor": [torch.from_numpy(rgb).permute(2, 0, 1).float() / 255],
             "batch tensor": torch.from_numpy(rgb).permute(2, 0, 1)[None], "rgba file": [tmp_path / "rgba.png"]}
    ref = p.predict(path)[0]
    for kind, x in kinds.items():
        r = p.predict(x)[0]
        assert r["labels"].tolist() == ref["labels"].tolist(), kind
        torch.testing.assert_close(r["boxes"], ref["boxes"], atol=1e-4, rtol=0, msg=kind)
    # a grayscale file is read as training reads it: the gray value in all three channels
    a, b = p.predict(tmp_path / "gray.png")[0], p.predict(np.repeat(gray[:, :, None], 3, axis=2))[0]
    torch.testing.assert_close(a["scores"], b["scores"])
    folder = p.predict(tmp_path)  # a folder: its images, sorted
    assert [Path(r["path"]).name for r in folder] == ["gray.png", "rgba.png"]
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        p.predict(tmp_path / "nope.jpg")
    with pytest.raises(ValueError, match="cannot read image"):
        (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
        p.predict(tmp_path / "bad.jpg")


def test_exif_rotated_photo_gets_boxes_on_the_upright_image(det_run, val_files, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view"): the boxes are those
    of the upright image, as a viewer shows it."""
    p = mnv2_vision.load(det_run / "ckpt" / "last.ckpt", device="cpu")
    upright = Image.open(val_files[1][2]).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the sensor's frame: the viewer turns it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", quality=100, exif=exif.tobytes())
    assert Image.open(tmp_path / "phone.jpg").size == (upright.height, upright.width)
    r = p.predict(tmp_path / "phone.jpg", score_thresh=0.05)[0]
    ref = p.predict(load_rgb(tmp_path / "phone.jpg"), score_thresh=0.05)[0]  # its upright pixels
    assert r["size"] == (upright.height, upright.width) and len(r["boxes"]) > 0
    torch.testing.assert_close(r["boxes"], ref["boxes"])
    # and they agree with the upright original (JPEG re-encoding aside): the best box is the same object
    orig = p.predict(upright, score_thresh=0.05)[0]
    assert r["labels"][0] == orig["labels"][0]
    assert float(box_convert(r["boxes"][:1], "xyxy", "cxcywh")[0, :2].sub(
        box_convert(orig["boxes"][:1], "xyxy", "cxcywh")[0, :2]).abs().max()) < 4.0
    sideways = p.predict(np.asarray(stored), score_thresh=0.05)[0]  # ignoring EXIF puts the boxes elsewhere
    assert sideways["size"] != r["size"]
    # Lossless (PNG with the same EXIF tag): exactly the upright image's boxes
    stored.save(tmp_path / "phone.png", exif=exif.tobytes())
    exact = p.predict(tmp_path / "phone.png", score_thresh=0.05)[0]
    assert exact["labels"].tolist() == orig["labels"].tolist()
    torch.testing.assert_close(exact["boxes"], orig["boxes"], atol=1e-4, rtol=0)


def test_model_pt_with_its_run_folder_and_the_onnx_export(det_run, val_files, tmp_path):
    _, files = val_files
    ref = mnv2_vision.load(det_run / "ckpt" / "last.ckpt", device="cpu").predict(files[:4])
    # model.pt is the best checkpoint's weights; compare with that checkpoint
    best = next((det_run / "ckpt").glob("best-*.ckpt"))
    ref_best = mnv2_vision.load(best, device="cpu").predict(files[:4])
    pt = mnv2_vision.load(det_run / "model.pt", device="cpu")
    assert pt.names == ["background", "circle", "square", "star", "triangle"] and pt.category_ids == [1, 3, 4, 7]
    for a, b in zip(ref_best, pt.predict(files[:4])):
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-4, rtol=0)
    lonely = tmp_path / "model.pt"
    lonely.write_bytes((det_run / "model.pt").read_bytes())
    with pytest.raises(mnv2_vision.errors.UserError, match="needs a config"):
        mnv2_vision.load(lonely)
    assert mnv2_vision.load(lonely, config=det_run / "config.yaml").task == "detection"
    # ONNX Runtime, preprocessing from the file's metadata: within the export's tolerance of PyTorch
    _tool("export").main(["--ckpt", str(det_run / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "onnx"),
                          "--check-images", "0"])
    onnx = mnv2_vision.load(tmp_path / "onnx" / "model.onnx")
    assert onnx.task == "detection" and onnx.names == pt.names
    for a, b in zip(ref, onnx.predict(files[:4], batch_size=2)):
        assert match_detections(a, b, box_atol=1e-2, score_atol=1e-4) == []
        assert b["category_ids"] == [[1, 3, 4, 7][k - 1] for k in b["labels"].tolist()]


def test_segmentation_mask_and_probs(tmp_path, shapes_root):
    from mnv2_vision.checkpoint import build_from_config
    from mnv2_vision.config import load_config, to_dict
    from mnv2_vision.lit.segmentation import predict_segmentation

    cfg = load_config("deeplabv3_shapes", ["model.num_classes=5", "model.width_mult=0.35"])
    model = build_from_config(cfg, pretrained=False)
    for m in model.modules():  # spread the fresh head's logits (~1e-8) so the argmax is not a tie
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 5:
            torch.nn.init.normal_(m.weight, std=1e3)
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": {"config": to_dict(cfg), "class_names": ["background", "circle", "square",
                                                                              "star", "triangle"]},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    files = sorted((shapes_root / "VOC2012" / "JPEGImages").glob("*.jpg"))[:3]
    p = mnv2_vision.load(ckpt, device="cpu", fuse=False)
    results = p.predict(files, batch_size=3, probs=True)
    for f, r in zip(files, results):
        image = load_rgb(f)
        assert r["mask"].shape == image.shape[:2] and r["mask"].dtype == torch.int64
        assert r["probs"].shape == (5, *image.shape[:2])
        torch.testing.assert_close(r["probs"].sum(0), torch.ones(image.shape[:2]))
        ref = predict_segmentation(model.eval(), image, cfg)
        assert (r["mask"].numpy() == ref).mean() > 0.999


def test_segmentation_freezes_a_recurring_shape_and_keeps_its_masks(tmp_path, shapes_root, monkeypatch):
    """On a CPU, segmentation runs the fused eager model until an input shape has recurred FREEZE_AFTER times, then
    that shape's frozen graph (deploy.fuse.freeze_for_cpu): same masks and probabilities either way."""
    from mnv2_vision.checkpoint import build_from_config
    from mnv2_vision.config import load_config, to_dict
    from mnv2_vision.predictor import _TorchBackend

    cfg = load_config("deeplabv3_shapes", ["model.num_classes=5", "model.width_mult=0.35"])
    model = build_from_config(cfg, pretrained=False)
    for m in model.modules():  # logits of order 1, not the fresh head's ~1e-8
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 5:
            torch.nn.init.normal_(m.weight, std=3.0)
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": {"config": to_dict(cfg)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    monkeypatch.setattr(_TorchBackend, "FREEZE_AFTER", 3)
    image = load_rgb(sorted((shapes_root / "VOC2012" / "JPEGImages").glob("*.jpg"))[0])
    p = mnv2_vision.load(ckpt, device="cpu")
    assert p.backend.freeze
    results = [p.predict(image, probs=True)[0] for _ in range(4)]
    key = (1, 3, *image.shape[:2])
    assert p.backend.seen[key] == 4
    assert list(p.backend.frozen) == [(*key, torch.get_num_threads())]  # built at the 3rd call, reused at the 4th
    assert p.predict(image[:40, :50])[0]["mask"].shape == (40, 50) and len(p.backend.frozen) == 1  # new shape: eager
    for r in results[1:]:
        assert torch.equal(r["mask"], results[0]["mask"])
        torch.testing.assert_close(r["probs"], results[0]["probs"], atol=1e-5, rtol=0)
    assert len(torch.unique(results[0]["mask"])) > 1
