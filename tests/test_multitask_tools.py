"""The multi-task pair end to end on the built-in shapes: training (both labels per scene, and a detection-only +
segmentation-only combination), loss masking down to exact zero gradients, and every tool on the pair's checkpoint
cross-checked against the training run's own validation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv2_vision.checkpoint import build_from_config, load_checkpoint, load_model
from mnv2_vision.config import ConfigError, load_config, to_dict
from mnv2_vision.deploy.onnx_export import read_metadata
from mnv2_vision.data.classes import multitask_seg_class_names
from mnv2_vision.lit.multitask import MultiTaskModule, build_mt_datamodule, resolve_mt_classes

from helpers import fails, sets, tool as _tool, train

TINY = sets("data.subset=8", "data.image_size=96", "trainer.max_epochs=1", "data.num_workers=0",
            "data.batch_size=4", "data.val_batch_size=4", "model.width_mult=0.35",
            "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1")
SHAPES = ["background", "circle", "square", "star", "triangle"]
# The shapes' COCO boxes (detection-only, no masks) next to the same scenes' VOC label maps (segmentation-only).
COMBINED = ["--set", "data.masks=null", "--set", "data.seg_root=shapes"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_root):
    return train(tmp_path_factory, "train_multitask", "multitask_shapes", TINY)


def test_train_writes_checkpoints_config_and_both_metrics(trained):
    out, result = trained
    assert (out / "ckpt" / "last.ckpt").is_file() and "best-epoch=000-score=" in Path(result["checkpoint"]).name
    cfg, state, hparams = load_checkpoint(out / "ckpt" / "last.ckpt")
    assert cfg.task == "multitask" and cfg.model.num_classes == 5 and cfg.model.seg_num_classes == 5
    assert hparams["category_ids"] == [1, 3, 4, 7] and hparams["class_names"] == SHAPES
    assert torch.load(out / "model.pt", weights_only=True).keys() == state.keys()
    header = (out / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss", "train/loss_det", "train/loss_seg", "val/map", "val/miou", "val/score",
                "val/iou_circle", "val/num_seg_images"):
        assert key in header
    saved = json.loads((out / "final_metrics.json").read_text())
    assert saved["map"] == result["map"] and saved["miou"] == result["miou"] and len(saved["stats"]) == 12
    assert set(saved["per_class_iou"]) == set(SHAPES) and result["num_images"] == 8
    # the label maps next to model.pt, for mnv2_vision.load(model.pt)
    assert json.loads((out / "classes.json").read_text())["class_names"] == SHAPES


def test_eval_det_and_eval_seg_reproduce_the_training_validation(trained, tmp_path, shapes_root):
    out, result = trained
    ckpt = str(out / "ckpt" / "last.ckpt")  # = best after one epoch
    det = _tool("eval_det").main(["--ckpt", ckpt, "--out", str(tmp_path / "det"), "--set", "data.num_workers=0"])
    assert det["map"] == pytest.approx(result["map"], abs=1e-12)
    seg = _tool("eval_seg").main(["--ckpt", ckpt, "--set", "data.num_workers=0", "--save-dir", str(tmp_path / "s")])
    assert seg["miou"] == pytest.approx(result["miou"], abs=1e-12)
    assert seg["per_class_iou"] == pytest.approx(result["per_class_iou"], nan_ok=True)
    pngs = sorted((tmp_path / "s").glob("*.png"))
    assert len(pngs) == 8 and Image.open(pngs[0]).mode == "P"

    # Label maps at the images' own size (not the network's 96²), named by COCO image id.
    for png in pngs:
        assert Image.open(png).size == Image.open(shapes_root / "coco" / "val2017" / f"{int(png.stem):012d}.jpg").size


def test_predict_draws_boxes_over_the_mask_in_one_picture(trained, tmp_path, shapes_root):
    out, _ = trained
    image = sorted((shapes_root / "coco" / "val2017").glob("*.jpg"))[0]
    (rec,) = _tool("predict").main(["--ckpt", str(out / "ckpt" / "last.ckpt"), str(image), "--out", str(tmp_path),
                                    "--score-thresh", "0.0"])
    drawn, label = Image.open(tmp_path / f"{image.stem}.jpg"), Image.open(tmp_path / f"{image.stem}.png")
    assert drawn.size == label.size == Image.open(image).size == (rec["width"], rec["height"])
    assert label.mode == "P" and sum(rec["pixels"].values()) == rec["width"] * rec["height"]
    assert 0 < len(rec["detections"]) <= 100 and rec["detections"][0]["name"] in SHAPES[1:]


@torch.no_grad()
def _evaluation_path(model, image: np.ndarray, cfg) -> tuple[dict, np.ndarray]:
    """Boxes (original pixels) and the uint8 label map of one RGB image the way training's validation gets them:
    the reference evaluation pipeline (resize, normalise), one forward pass, ``postprocess_detections`` and
    ``segment_targets`` (logits upsampled to the image)."""
    from mnv2_vision.data.detection.transforms import detection_transform
    from mnv2_vision.lit.multitask import segment_targets
    from mnv2_vision.ops.boxes import BoxCoder
    from mnv2_vision.ops.postprocess import PostprocessSettings, postprocess_detections

    tf = detection_transform("none", False, cfg.data.image_size, cfg.data.mean, cfg.data.std)
    x = tf(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))[0][None]
    out = model(x)
    size, orig = tuple(x.shape[-2:]), tuple(image.shape[:2])
    det = postprocess_detections(out["cls_logits"], out["bbox_regression"], model.anchors(size, x.device), BoxCoder(),
                                 size, [orig], PostprocessSettings.from_eval(cfg.eval))[0]
    return det, segment_targets(model, x, [orig], logits=out["out"])[0].to(torch.uint8).numpy()


def test_predictor_serves_the_pair_from_one_pass(trained, shapes_root):
    """mnv2_vision.load on the pair's checkpoint and model.pt: boxes and mask equal to the training's evaluation
    path (one forward pass, logits upsampled to the image); batched equals one by one."""
    import mnv2_vision
    from mnv2_vision.data.io.images import load_rgb
    from mnv2_vision.deploy.onnx_export import match_detections

    out, _ = trained
    cfg, model, _ = load_model(out / "ckpt" / "last.ckpt")
    files = sorted((shapes_root / "coco" / "val2017").glob("*.jpg"))[:3]
    images = [load_rgb(f) for f in files]
    predictor = mnv2_vision.load(out / "ckpt" / "last.ckpt", device="cpu", fuse=False)
    assert predictor.task == "multitask" and predictor.mask_names == SHAPES
    one = [predictor.predict(im, score_thresh=cfg.eval.score_thresh)[0] for im in images]
    for im, r in zip(images, one):
        det, label = _evaluation_path(model.eval(), im, cfg)
        assert match_detections(det, r, box_atol=1e-3, score_atol=1e-5) == []
        assert r["mask"].shape == im.shape[:2] and (r["mask"].numpy() == label).mean() > 0.999
        assert r["names"] == [predictor.names[i] for i in r["labels"].tolist()]
    batched = predictor.predict(images, batch_size=3, score_thresh=cfg.eval.score_thresh, probs=True)
    for a, b in zip(one, batched):
        assert torch.equal(a["mask"], b["mask"]) and torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        assert b["probs"].shape == (len(SHAPES), *a["mask"].shape)
    # the default CPU path (frozen fused graph, images in parallel streams) gives the same boxes and masks
    fast = mnv2_vision.load(out / "ckpt" / "last.ckpt", device="cpu").predict(
        images, batch_size=2, score_thresh=cfg.eval.score_thresh)
    for a, b in zip(one, fast):
        assert match_detections(a, b, box_atol=1e-3, score_atol=1e-4) == []
        assert (a["mask"] == b["mask"]).float().mean() > 0.999
    # model.pt in its run folder: config.yaml and classes.json give the same predictor
    plain = mnv2_vision.load(out / "model.pt", device="cpu", fuse=False)
    assert plain.task == "multitask" and plain.mask_names == SHAPES and plain.names == predictor.names


def test_export_one_onnx_with_both_outputs_parity_checked(trained, tmp_path):
    import onnxruntime as ort

    from mnv2_vision.deploy.onnx_export import MultiTaskExport, _io_names

    out, _ = trained
    report = _tool("export").main(["--ckpt", str(out / "ckpt" / "last.ckpt"), "--out", str(tmp_path)])
    session = ort.InferenceSession(report["onnx"], providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["boxes", "scores", "labels", "num_detections", "logits"]
    _, model, _ = load_model(out / "ckpt" / "last.ckpt")
    raw = MultiTaskExport(model, (96, 96), "raw")  # the raw mode lists the segmentation logits last as well
    assert _io_names(raw)[0] == ["cls_logits", "bbox_regression", "anchors", "logits"]
    assert all(c["segmentation"]["max_abs_diff"] <= c["segmentation"]["allowed"] for c in report["parity"])
    assert len(report["parity"]) == 2  # a random batch of 2 and validation images
    meta = read_metadata(report["onnx"])
    assert meta["task"] == "multitask" and meta["seg_class_names"] == SHAPES and meta["category_ids"] == [1, 3, 4, 7]


def test_export_int8_scores_and_gates_both_tasks_of_the_pair(trained, tmp_path, capsys):
    out, _ = trained
    # an allowed drop of -1 fails any int8 model not better than fp32 by 1: the gate names each metric it checks
    line = fails(capsys, "export", ["--ckpt", str(out / "ckpt" / "last.ckpt"), "--out", str(tmp_path), "--int8",
                                    "--calib-images", "4", "--runs", "2", "--check-images", "2",
                                    "--int8-max-drop", "-1"])
    assert "model_int8.onnx" in line and "int8 mAP" in line and "int8 mIoU" in line and "drop of -1" in line
    report = json.loads((tmp_path / "export_report.json").read_text())  # written before the gate
    acc = report["accuracy"]
    assert report["int8_max_drop"] == -1 and (tmp_path / "model_int8.onnx").is_file()
    # fp32 files score as the PyTorch pair: boxes through the raw-mode graph, masks from the shipped file's logits
    for key in ("map", "miou", "pixel_acc"):
        assert acc["onnx_fp32"][key] == pytest.approx(acc["pytorch"][key], abs=1e-4)
        assert 0.0 <= acc["onnx_int8"][key] <= 1.0


# ---------------------------------------------------------------------------------------------- loss masking
def _combined_parts(shapes_root):
    cfg = load_config("multitask_shapes", [a for a in TINY[1::2] if not a.startswith("trainer.")] + COMBINED[1::2])
    dm = build_mt_datamodule(cfg)
    cfg = resolve_mt_classes(cfg, dm.num_classes, multitask_seg_class_names(cfg))
    module = MultiTaskModule(build_from_config(cfg), optim=cfg.optim, sched=cfg.sched, eval_cfg=cfg.eval,
                             loss=cfg.loss, category_ids=dm.category_ids, category_names=dm.category_names,
                             seg_class_names=multitask_seg_class_names(cfg), config=to_dict(cfg))
    return cfg, dm, module


def _grads(module, batch):
    module.model.zero_grad(set_to_none=True)
    images, targets = batch
    module.losses(module.model(images), images, targets)["loss"].backward()
    det = [p.grad for n, p in module.model.named_parameters() if n.startswith(("extras.", "head."))]
    seg = [p.grad for n, p in module.model.named_parameters() if n.startswith("seg_")]
    body = [p.grad for n, p in module.model.named_parameters() if n.startswith("backbone.")]
    return det, seg, body


def test_each_sample_trains_only_the_head_it_has_labels_for(shapes_root):
    """A detection-only + segmentation-only combination: a batch of detection samples leaves the segmentation
    head's gradient exactly zero, a batch of segmentation samples the detection head's; an image of the detection set
    without objects is a real negative (it trains the detection head), one of the segmentation set is not."""
    from mnv2_vision.data.detection.datamodule import detection_collate

    _, dm, module = _combined_parts(shapes_root)
    module.model.train()
    coco, voc = dm.train_dataset.datasets
    assert len(coco) == len(voc) == 8 and len(dm.train_dataset) == 16
    det_items, seg_items = [coco[i] for i in range(4)], [voc[i] for i in range(4)]
    assert all(t["has_boxes"] and "mask" not in t for _, t in det_items)
    assert all(not t["has_boxes"] and t["mask"].shape == (96, 96) for _, t in seg_items)

    det, seg, body = _grads(module, detection_collate(det_items))
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in seg)  # exactly zero, every tensor
    assert all(g is not None for g in det) and any(torch.count_nonzero(g) > 0 for g in det)
    det, seg, body = _grads(module, detection_collate(seg_items))
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in det)
    assert any(torch.count_nonzero(g) > 0 for g in seg) and any(torch.count_nonzero(g) > 0 for g in body)

    negative = next(coco[i] for i in range(len(coco)) if len(coco[i][1]["boxes"]) == 0)  # scene 1 is empty
    assert negative[1]["has_boxes"]
    det, _, _ = _grads(module, detection_collate([negative, negative]))
    assert any(torch.count_nonzero(g) > 0 for g in det)  # hard negatives train the background class
    # A mixed batch: each loss sees only its own rows, so it equals the sum of the two pure batches' terms.
    images, targets = detection_collate(det_items[:2] + seg_items[:2])
    module.model.eval()  # BatchNorm in eval: the rows do not interact through batch statistics
    mixed = module.losses(module.model(images), images, targets)
    d = module.losses(module.model(images[:2]), images[:2], targets[:2])
    s = module.losses(module.model(images[2:]), images[2:], targets[2:])
    torch.testing.assert_close(mixed["loss_det"], d["loss_det"])
    torch.testing.assert_close(mixed["loss_seg"], s["loss_seg"])


def test_combined_datasets_train_and_validate_both_heads(tmp_path, shapes_root):
    result = _tool("train_multitask").main(["--cfg", "multitask_shapes", "--out", str(tmp_path), *TINY, *COMBINED])
    rows = [line for line in (tmp_path / "metrics.csv").read_text().splitlines()]
    header = rows[0].split(",")
    val = dict(zip(header, next(r for r in rows[1:] if r.split(",")[header.index("val/miou")]).split(",")))
    assert float(val["val/num_images"]) == 8 and float(val["val/num_seg_images"]) == 8  # COCO val + VOC val
    assert 0 <= result["miou"] <= 1 and result["num_images"] == 8
    cfg, _, hparams = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert cfg.data.seg_root == "shapes" and hparams["class_names"] == SHAPES


def test_config_errors_name_the_key(shapes_root):
    with pytest.raises(ConfigError, match="needs segmentation labels"):
        build_mt_datamodule(load_config("multitask_shapes", ["data.masks=null"]))
    with pytest.raises(ConfigError, match="data.masks='some' is not one of"):
        load_config("multitask_shapes", ["data.masks=some"])
    with pytest.raises(ConfigError, match="model.sharing"):
        load_config("multitask_shapes", ["model.sharing=os8"])
    with pytest.raises(ConfigError, match="loss.seg_weight"):
        load_config("multitask_shapes", ["loss.seg_weight=-1"])
    cfg = load_config("multitask_shapes", ["model.seg_num_classes=3"])
    with pytest.raises(ConfigError, match="model.seg_num_classes=3 but the data gives 5"):
        resolve_mt_classes(cfg, 5, SHAPES)


def test_batch_ids_name_both_sources():
    batch = (torch.zeros(2, 3, 8, 8), [{"image_id": 12, "id": "12"}, {"image_id": -1, "id": "2007_000032"}])
    assert MultiTaskModule.batch_ids(batch) == ["12", "2007_000032"]


def test_load_model_rebuilds_the_pair(trained):
    out, _ = trained
    cfg, model, _ = load_model(out / "ckpt" / "last.ckpt")
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 96, 96))
    assert set(y) == {"cls_logits", "bbox_regression", "out"} and y["out"].shape == (1, 5, 96, 96)
    assert np.isfinite(y["out"].numpy()).all() and cfg.model.sharing == "os32"


# ---------------------------------------------------------------------------------------------- resume and DDP
RESUME_ARGS = ["--cfg", "multitask_shapes", "--set", "data.subset=6", "--set", "data.image_size=64",
               "--set", "model.width_mult=0.35", "--set", "data.num_workers=0", "--set", "data.batch_size=4",
               "--set", "data.val_batch_size=8", "--set", "trainer.max_epochs=2",
               "--set", "trainer.check_val_every_n_epoch=1", "--set", "trainer.log_every_n_steps=1",
               "--set", "trainer.ckpt_every_n_steps=1", *COMBINED]  # 6 + 6 samples / 4 = 3 steps per epoch


def test_killed_mid_epoch_resumes_exactly(tmp_path, shapes_root):
    """SIGKILL after step 4 (the 2nd epoch's 1st batch) and ``--resume last``: the same final weights, optimiser,
    schedule and loader position as an uninterrupted run, with both sources' augmentation seeded per sample."""
    import test_resume as h  # the kill/resume driver

    ref, run, at_kill = h._killed_and_uninterrupted("train_multitask", tmp_path, RESUME_ARGS, kill_at="4")
    assert (at_kill["epoch"], at_kill["global_step"]) == (1, 4)
    assert at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 1}]
    h._assert_same_final_state(ref, run)
    assert (h._load(ref)["epoch"], h._load(ref)["global_step"]) == (1, 6)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available in this build")
def test_ddp_metrics_equal_single_process_evaluation(tmp_path, shapes_root):
    """2 CPU ranks (gloo): the mAP and mIoU logged by the distributed validation equal eval_det / eval_seg of the
    same checkpoint in one process, every validation image counted once."""
    import test_ddp as h  # the DDP driver

    out = tmp_path / "mt"
    stdout = h._run_ddp("train_multitask", "multitask_shapes", out, "--set", "data.image_size=64",
                        "--set", "model.width_mult=0.35")
    assert stdout.count("evaluation of") == 1  # rank 0 reports
    row = h._val_rows(out, "val/miou")[0]
    assert float(row["val/num_images"]) == h.N and float(row["val/num_seg_images"]) == h.N
    best = str(h._best(out))
    det = _tool("eval_det").main(["--ckpt", best, "--out", str(tmp_path / "eval"), "--set", "data.num_workers=0"])
    seg = _tool("eval_seg").main(["--ckpt", best, "--set", "data.num_workers=0", "--device", "cpu"])
    assert abs(det["map"] - float(row["val/map"])) <= 1e-6 and abs(seg["miou"] - float(row["val/miou"])) <= 1e-6


def test_compare_multitask_smoke(tmp_path, shapes_root):
    """tools/compare_multitask.py end to end on a tiny budget: every model trained and scored, the latency /
    complexity rows measured, the table and JSON written; the ratios are the rows' own quotients."""
    result = _tool("compare_multitask").main([
        "--steps", "2", "--out", str(tmp_path), "--latency-runs", "1", "--threads", "1",
        "--set", "data.subset=8", "--set", "data.image_size=64", "--set", "model.width_mult=0.35",
        "--set", "data.batch_size=4", "--set", "data.val_batch_size=4"])
    runs, both = result["runs"], result["ssdlite + deeplab"]
    assert set(runs) == {"ssdlite", "deeplab", "pair os32"}
    for row in runs.values():
        assert row["params_m"] > 0 and row["madds_b"] > 0 and row["fused_ms"] > 0 and row["cpu_s"] > 0
    # the pair at α = 1 / 320² against SSDLite: the os32 decoder adds a little (docs/design.md#sharing, option a)
    assert 1.0 < runs["pair os32"]["madds_b"] / runs["ssdlite"]["madds_b"] < 1.3
    assert both["madds_b"] == pytest.approx(runs["ssdlite"]["madds_b"] + runs["deeplab"]["madds_b"])
    r = result["ratios"]["pair os32"]
    assert r["map / ssdlite"] == pytest.approx(runs["pair os32"]["map"] / max(runs["ssdlite"]["map"], 1e-12))
    assert r["fused_ms / (ssdlite + deeplab)"] == pytest.approx(runs["pair os32"]["fused_ms"] / both["fused_ms"])
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["ratios"]["pair os32"] == pytest.approx(r)
    assert "| pair os32 |" in (tmp_path / "comparison.md").read_text()
