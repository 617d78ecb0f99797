"""ONNX export (deploy/onnx_export.py, deploy/quantize.py, tools/export.py): ONNX Runtime parity for both models,
NMS in the graph = postprocess_detections, dynamic batch, metadata, int8 with per-channel weights."""
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mnv2_vision.config import load_config, to_dict
from mnv2_vision.deploy.onnx_export import (DetectionExport, ParityError, SegmentationExport, check_parity, export_onnx,
                                            match_detections, ort_session, read_metadata)
from mnv2_vision.deploy.quantize import quantize_int8
from mnv2_vision.models import build_model
from mnv2_vision.ops.boxes import BoxCoder
from mnv2_vision.ops.postprocess import PostprocessSettings, postprocess_detections

from helpers import tool as _tool
from test_fuse import randomise_bn

SIZE = (128, 128)
PP = PostprocessSettings(score_thresh=0.05, nms_iou=0.5, topk_candidates=50, detections_per_img=20)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = randomise_bn(build_model("ssdlite320_mobilenet_v2", num_classes=5, width_mult=0.35))
    with torch.no_grad():  # spread the class scores: a random head scores every class ~1/K, all near-ties
        for head in model.head.cls_heads:
            head[1].weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def det_onnx(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "det.onnx"
    meta = {"model_name": "ssdlite320_mobilenet_v2", "input_size": list(SIZE), "mean": [0.485, 0.456, 0.406],
            "class_names": ["background", "a", "b", "c", "d"]}
    return export_onnx(DetectionExport(detector, SIZE, "nms", PP), path, SIZE, meta)


def test_nms_graph_matches_postprocess_with_dynamic_batch(detector, det_onnx):
    session = ort_session(det_onnx)
    for batch in (1, 3):
        x = torch.randn(batch, 3, *SIZE)
        boxes, scores, labels, counts = session.run(None, {"images": x.numpy()})
        assert boxes.shape == (batch, PP.detections_per_img, 4) and labels.dtype == np.int64
        with torch.no_grad():
            raw = detector(x)
        ref = postprocess_detections(raw["cls_logits"], raw["bbox_regression"], detector.anchors(SIZE), BoxCoder(),
                                     SIZE, [SIZE] * batch, PP)
        for i, r in enumerate(ref):
            n = int(counts[i])
            assert n == len(r["scores"]) and n > 0
            assert (labels[i, n:] == 0).all() and (scores[i, n:] == 0).all()  # padding rows
            got = {k: torch.from_numpy(v[i, :n]) for k, v in (("boxes", boxes), ("scores", scores),
                                                              ("labels", labels))}
            assert match_detections(r, got) == []
            np.testing.assert_allclose(scores[i, :n], r["scores"].numpy(), atol=1e-5)  # same order: sorted scores
        report = check_parity(det_onnx, detector, "detection", x, mode="nms", postprocess=PP)
        assert report["detections"] == report["reference_detections"] > 0


def test_parity_check_fails_loudly(detector, det_onnx):
    tampered = build_model("ssdlite320_mobilenet_v2", num_classes=5, width_mult=0.35).eval()
    tampered.load_state_dict(detector.state_dict())
    with torch.no_grad():
        tampered.head.cls_heads[1][1].bias[1::5] += 20.0  # class 1 on the second level now wins everywhere
    with pytest.raises(ParityError, match="differ"):
        check_parity(det_onnx, tampered, "detection", torch.randn(2, 3, *SIZE), mode="nms", postprocess=PP)


def test_metadata_round_trip(det_onnx):
    meta = read_metadata(det_onnx)
    assert meta["model_name"] == "ssdlite320_mobilenet_v2"
    assert meta["input_size"] == [128, 128] and meta["class_names"][0] == "background"
    assert meta["mean"] == [0.485, 0.456, 0.406]


def test_raw_outputs_and_anchors(detector, tmp_path):
    path = export_onnx(DetectionExport(detector, SIZE, "raw"), tmp_path / "raw.onnx", SIZE, {})
    x = torch.randn(2, 3, *SIZE)
    cls_logits, bbox_regression, anchors = ort_session(path).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = detector(x)
    assert float(ref["cls_logits"].abs().max()) > 1.0
    assert np.abs(cls_logits - ref["cls_logits"].numpy()).max() <= 1e-4
    assert np.abs(bbox_regression - ref["bbox_regression"].numpy()).max() <= 1e-4
    assert anchors.shape == (2, *detector.anchors(SIZE).shape)
    np.testing.assert_array_equal(anchors[1], detector.anchors(SIZE).numpy())


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return randomise_bn(build_model("deeplabv3_mobilenet_v2", num_classes=5, width_mult=0.5))


@pytest.fixture(scope="module")
def seg_onnx(segmenter, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "seg.onnx"
    return export_onnx(SegmentationExport(segmenter), path, (65, 65), {"model_name": "m"})


def test_segmentation_dynamic_size_parity(segmenter, seg_onnx):
    for shape in ((2, 3, 65, 65), (1, 3, 120, 75)):
        x = torch.randn(*shape)
        report = check_parity(seg_onnx, segmenter, "segmentation", x)
        assert report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] == 1.0
        logits = ort_session(seg_onnx).run(None, {"images": x.numpy()})[0]
        assert logits.shape == (shape[0], 5, *shape[2:])


def test_match_detections_forgives_ties_only():
    ref = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
           "scores": torch.tensor([0.9, 0.5, 0.5]), "labels": torch.tensor([1, 2, 2])}
    swapped = {"boxes": torch.tensor([[0.0, 0, 10, 10], [21, 21, 31, 31]]), "scores": torch.tensor([0.9, 0.5]),
               "labels": torch.tensor([1, 2])}
    assert match_detections(ref, swapped) == []  # equal scores at the cut: either box may survive
    moved = dict(ref, boxes=ref["boxes"] + torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 0], [5, 5, 5, 5]]))
    moved["scores"] = torch.tensor([0.9, 0.6, 0.5])
    problems = match_detections(dict(ref, scores=torch.tensor([0.9, 0.6, 0.5])), moved)
    assert problems == []  # the moved box scores at the cut (0.5): a tie there is allowed
    wrong = dict(ref, labels=torch.tensor([3, 2, 2]))
    assert len(match_detections(ref, wrong)) == 2  # the 0.9 detection changed class: missing + extra


def test_int8_per_channel_and_close(seg_onnx, tmp_path):
    fp32 = seg_onnx
    calib = [np.random.default_rng(i).standard_normal((1, 3, 65, 65)).astype(np.float32) for i in range(4)]
    int8 = quantize_int8(fp32, tmp_path / "seg_int8.onnx", calib)
    graph = onnx.load(str(int8)).graph
    inits = {t.name: t for t in graph.initializer}
    weight_scales = [onnx.numpy_helper.to_array(inits[n.input[1]]) for n in graph.node
                     if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                     and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weight_scales and all(s.ndim == 1 and s.size > 1 for s in weight_scales)  # per output channel
    assert read_metadata(int8)["model_name"] == "m" and "per-channel" in read_metadata(int8)["quantization"]
    ref = ort_session(fp32).run(None, {"images": calib[0]})[0]
    out = ort_session(int8).run(None, {"images": calib[0]})[0]
    # Per-channel int8 keeps the logits close: a collapsed model would correlate near 0.
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.98


def _fake_checkpoint(path: Path, cfg_name: str, overrides: list[str], extra: dict) -> Path:
    """A checkpoint as the train tools write it: model.* weights and the resolved config in hyper_parameters."""
    from mnv2_vision.checkpoint import build_from_config

    cfg = load_config(cfg_name, overrides)
    torch.manual_seed(0)
    model = randomise_bn(build_from_config(cfg, pretrained=False))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"config": to_dict(cfg), **extra}}, path)
    return path


def _run_tool(argv: list[str]) -> dict:
    return _tool("export").main(argv)


def test_export_tool_segmentation_int8(tmp_path, shapes_root):
    ckpt = _fake_checkpoint(tmp_path / "seg.ckpt", "deeplabv3_shapes",
                            ["model.num_classes=5", "model.width_mult=0.35", "data.subset=4", "data.num_workers=0",
                             "export.int8_max_drop=0.5"],
                            {"class_names": ["background", "circle", "square", "star", "triangle"]})
    out = tmp_path / "export"
    report = _run_tool(["--ckpt", str(ckpt), "--out", str(out), "--int8", "--calib-images", "2", "--runs", "2",
                        "--check-images", "1"])
    assert report["int8_max_drop"] == 0.5  # the checkpoint config's export.int8_max_drop, no flag given
    meta = read_metadata(out / "model.onnx")
    assert meta["task"] == "segmentation" and meta["color_order"] == "RGB"
    assert meta["class_names"][1] == "circle" and meta["config"]["model"]["width_mult"] == 0.35
    assert len(report["parity"]) == 2  # a random batch of 2, and a validation image at its own size
    acc = report["accuracy"]
    assert acc["onnx_fp32"]["miou"] == pytest.approx(acc["pytorch"]["miou"], abs=1e-6)
    assert 0.0 <= acc["onnx_int8"]["miou"] <= 1.0 and report["latency_ms"]["int8"] > 0
    assert json.loads((out / "export_report.json").read_text())["onnx"] == str(out / "model.onnx")


def test_export_tool_detection_nms_and_state_dict(tmp_path, shapes_root):
    ckpt = _fake_checkpoint(tmp_path / "det.ckpt", "ssdlite_shapes",
                            ["model.num_classes=5", "model.width_mult=0.35", "data.image_size=96"],
                            {"category_ids": [1, 2, 3, 4], "category_names": ["circle", "square", "star", "triangle"]})
    out = tmp_path / "export"
    report = _run_tool(["--ckpt", str(ckpt), "--out", str(out), "--check-images", "2"])
    meta = read_metadata(out / "model.onnx")
    assert meta["task"] == "detection" and meta["detection_output"] == "nms"
    assert meta["class_names"] == ["background", "circle", "square", "star", "triangle"]
    assert meta["input_size"] == [96, 96] and meta["postprocess"]["nms_iou"] == 0.6
    assert [p["images"] for p in report["parity"]] == [[2, 3, 96, 96], [2, 3, 96, 96]]  # random + 2 val images
    _run_tool(["--ckpt", str(ckpt), "--out", str(out), "--format", "state_dict"])
    sd = torch.load(out / "model.pt", weights_only=True)
    assert torch.equal(sd["head.cls_heads.0.1.bias"], torch.load(ckpt, weights_only=True)["state_dict"][
        "model.head.cls_heads.0.1.bias"])
    assert (out / "config.yaml").is_file()


def test_export_tool_detection_raw_int8_scores_the_shipped_files(tmp_path, shapes_root):
    ckpt = _fake_checkpoint(tmp_path / "det.ckpt", "ssdlite_shapes",
                            ["model.num_classes=5", "model.width_mult=0.35", "data.image_size=96", "data.subset=4",
                             "data.num_workers=0"],
                            {"category_ids": [1, 2, 3, 4], "category_names": ["circle", "square", "star", "triangle"]})
    out = tmp_path / "export"
    report = _run_tool(["--ckpt", str(ckpt), "--out", str(out), "--detection-output", "raw", "--int8",
                        "--calib-images", "2", "--runs", "2", "--check-images", "1", "--int8-max-drop", "1"])
    acc = report["accuracy"]
    assert acc["onnx_fp32"]["map"] == pytest.approx(acc["pytorch"]["map"], abs=1e-6)
    assert report["int8_change"] == {"map": pytest.approx(acc["onnx_int8"]["map"] - acc["onnx_fp32"]["map"])}
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx", "model_int8.onnx"]


@pytest.mark.skipif(not os.environ.get("MNV2_REAL_DATA"), reason="MNV2_REAL_DATA not set (real COCO/VOC subsets)")
def test_parity_on_real_images(detector, det_onnx, segmenter, seg_onnx):
    from mnv2_vision.deploy.quantize import detection_calibration, segmentation_calibration

    root = Path(os.environ["MNV2_REAL_DATA"])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = detection_calibration(root / "coco128", "val2017", SIZE[0], mean, std, 3)
    check_parity(det_onnx, detector, "detection", torch.from_numpy(np.concatenate(images)), postprocess=PP)
    for image in segmentation_calibration(root / "voc_coco" / "VOC2012", "val", mean, std, 2, 21):
        report = check_parity(seg_onnx, segmenter, "segmentation", torch.from_numpy(image))
        assert report["max_abs_diff"] <= 1e-4  # VOC images at their own size, e.g. 500 × 375


def test_int8_leaves_postprocessing_float(det_onnx, tmp_path):
    calib = [np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)]
    graph = onnx.load(str(quantize_int8(det_onnx, tmp_path / "det_int8.onnx", calib))).graph
    producer = {out: node for node in graph.node for out in node.output}
    quantized_inputs = [producer[n.input[0]].name for n in graph.node
                        if n.op_type == "QuantizeLinear" and n.input[0] in producer]
    assert quantized_inputs and all(name.startswith("/model/") for name in quantized_inputs)
    assert any(n.op_type == "NonMaxSuppression" for n in graph.node)
