"""LiteRT (TFLite) export and runtime (deploy/litert_export.py, mnv2_runtime/backends/litert.py): per task the
converted graph in the LiteRT interpreter equals PyTorch (raw outputs within tolerance, the same detections after
NMS, masks), the metadata round trip, int8 per channel, bad files as one line, the missing-extra line; and DeepLab's
image pooling written so that LiteRT can run it."""
import copy
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("litert_torch", reason="the litert extra (litert-torch) is not installed")
pytest.importorskip("ai_edge_litert", reason="the litert extra (ai-edge-litert) is not installed")

from mnv2_runtime.backends.litert import METADATA_NAME, LiteRTBackend, read_metadata_props  # noqa: E402
from mnv2_runtime.errors import MissingRuntime, ModelError  # noqa: E402

from mnv2_vision.deploy.litert_export import export_litert, litert_runner, write_metadata  # noqa: E402
from mnv2_vision.deploy.onnx_export import (DetectionExport, MultiTaskExport, ParityError,  # noqa: E402
                                            SegmentationExport, check_outputs)
from mnv2_vision.models import build_model  # noqa: E402
from mnv2_vision.models.deeplabv3 import ImagePooling  # noqa: E402
from mnv2_vision.ops.postprocess import PostprocessSettings  # noqa: E402

from helpers import fails, tool as _tool  # noqa: E402
import test_export  # noqa: E402
from test_fuse import randomise_bn  # noqa: E402

SIZE = (128, 128)
PP = PostprocessSettings(score_thresh=0.05, nms_iou=0.5, topk_candidates=50, detections_per_img=20)
NAMES = ["background", "a", "b", "c", "d"]
BASE = {"model_name": "m", "input_size": list(SIZE), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
DET_META = {**BASE, "task": "detection", "class_names": NAMES, "category_ids": [1, 2, 3, 4],
            "detection_output": "raw", "postprocess": PP.as_dict(), "box_coder_weights": [10.0, 10.0, 5.0, 5.0]}
SEG_META = {**BASE, "task": "segmentation", "class_names": ["background", "v", "x", "y", "z"]}
MT_META = {**DET_META, "task": "multitask", "seg_class_names": ["background", "x", "y", "z"]}


detector, segmenter = test_export.detector, test_export.segmenter  # the fixtures: SSDLite (5 classes), DeepLab (5)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def det_tflite(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("litert") / "det.tflite"
    return export_litert(DetectionExport(detector, SIZE, "raw"), path, SIZE, DET_META)


@pytest.fixture(scope="module")
def seg_tflite(segmenter, tmp_path_factory):
    path = tmp_path_factory.mktemp("litert") / "seg.tflite"
    return export_litert(SegmentationExport(segmenter), path, SIZE, SEG_META)


def test_image_pooling_broadcast_is_exactly_the_upsampled_map():
    """The multiply-by-ones broadcast (which LiteRT runs; ``expand`` became a BROADCAST_TO it refuses) gives the very
    values of the old ``expand``, bit for bit; torchvision's bilinear upsampling of the 1×1 map rounds its weights
    (w + (1 − w) ≠ 1 exactly) and lands within 2 float32 ulps of them."""
    torch.manual_seed(0)
    pool = randomise_bn(ImagePooling(16, 8))
    x = torch.randn(2, 16, 9, 13) * 3.0
    with torch.no_grad():
        got = pool(x)
        pooled = torch.nn.Sequential.forward(pool, x)  # the (N, C, 1, 1) map before the broadcast
    assert pooled.shape == (2, 8, 1, 1) and got.shape == (2, 8, 9, 13)
    assert float(pooled.abs().max()) > 0.1  # not all zero: the comparison below has values to get wrong
    assert torch.equal(got, pooled.expand(-1, -1, 9, 13))
    upsampled = F.interpolate(pooled, size=(9, 13), mode="bilinear", align_corners=False).numpy()
    assert (np.abs(upsampled - got.numpy()) <= 2 * np.spacing(np.abs(got.numpy()))).all()


def test_detection_equals_pytorch(detector, det_tflite):
    backend = LiteRTBackend(det_tflite, threads=1)
    assert backend.name == "litert" and backend.fixed_input == SIZE and backend.channels_last
    assert backend.output_names == ["anchors", "bbox_regression", "cls_logits"]
    x = _images(2, 1)
    report = check_outputs(backend.run, detector, "detection", x, mode="raw", atol=1e-4, rtol=1e-4, postprocess=PP,
                           source=str(det_tflite), runtime="LiteRT")
    assert report["detections"] == report["reference_detections"] > 0  # same labels, boxes within 0.01 px
    out = backend.run(x.numpy())
    with torch.no_grad():
        ref = detector(x)
    assert float(ref["cls_logits"].abs().max()) > 1.0
    assert out["cls_logits"].shape == tuple(ref["cls_logits"].shape) and out["cls_logits"].dtype == np.float32
    np.testing.assert_array_equal(out["anchors"][1], detector.anchors(SIZE).numpy())


def test_parity_check_fails_loudly(detector, det_tflite):
    tampered = copy.deepcopy(detector)
    with torch.no_grad():
        tampered.head.cls_heads[1][1].bias[1::5] += 20.0  # class 1 on the second level now wins everywhere
    with pytest.raises(ParityError, match="LiteRT outputs differ"):
        check_outputs(litert_runner(det_tflite, 1), tampered, "detection", _images(1, 2), mode="raw",
                      postprocess=PP, source=str(det_tflite), runtime="LiteRT")


def test_metadata_round_trip(det_tflite):
    backend = LiteRTBackend(det_tflite, threads=1)
    for key, value in DET_META.items():
        assert backend.metadata[key] == value, key
    pairs = dict(read_metadata_props(det_tflite.read_bytes(), str(det_tflite)))
    assert json.loads(pairs["class_names"]) == NAMES and pairs["task"] == "detection"  # strings, as ONNX stores
    # large buffers go after the flatbuffer at 16-byte aligned offsets (what the interpreter wants for weights)
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(det_tflite.read_bytes(), 0)
    offsets = [model.Buffers(i).Offset() for i in range(model.BuffersLength()) if model.Buffers(i).Offset()]
    assert len(offsets) > 10 and all(o % 16 == 0 for o in offsets)
    # writing again replaces the entry instead of adding a second one
    again = write_metadata(det_tflite.read_bytes(), {**{k: str(v) for k, v in pairs.items()}, "model_name": "n"})
    names = [schema.Model.GetRootAs(again, 0).Metadata(i).Name()
             for i in range(schema.Model.GetRootAs(again, 0).MetadataLength())]
    assert names.count(METADATA_NAME.encode()) == 1
    assert dict(read_metadata_props(again, "x"))["model_name"] == "n"


def test_segmentation_equals_pytorch(segmenter, seg_tflite):
    backend = LiteRTBackend(seg_tflite, threads=1)
    assert backend.fixed_input == SIZE and backend.metadata["class_names"] == SEG_META["class_names"]
    report = check_outputs(backend.run, segmenter, "segmentation", _images(2, 3), atol=1e-4, rtol=1e-4,
                           source=str(seg_tflite), runtime="LiteRT")
    assert report["argmax_agreement"] >= 0.999 and report["max_abs_diff"] <= report["allowed"]
    with pytest.raises(ValueError, match=r"takes \(N, 3, 128, 128\)"):
        backend.run(np.zeros((1, 3, 64, 64), np.float32))


def _as_torch(result: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(result[k])) for k in ("boxes", "scores", "labels")}


def test_runtime_predict_equals_onnx(detector, det_tflite, segmenter, seg_tflite, tmp_path):
    """``mnv2_runtime.load(...).predict`` of the ``.tflite`` files gives the predictions of the same networks exported
    to ONNX (whose runtime path equals the PyTorch predictor's): detections on an image of another size (the same
    labels, boxes within 0.01 px of the original image), masks on an image at the graph's size (>= 99.9 %)."""
    import mnv2_runtime
    from mnv2_vision.deploy.onnx_export import export_onnx, match_detections

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)  # (H, W, RGB), resized to 128² by the runtime
    onnx_det = export_onnx(DetectionExport(detector, SIZE, "raw"), tmp_path / "det.onnx", SIZE, DET_META)
    [got] = mnv2_runtime.load(det_tflite, threads=1).predict(photo)
    [ref] = mnv2_runtime.load(onnx_det, threads=1).predict(photo)
    assert len(ref["scores"]) > 0 and got["size"] == ref["size"] == (150, 200)
    assert match_detections(_as_torch(ref), _as_torch(got)) == []
    assert list(got["names"]) == list(ref["names"])
    scene = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    onnx_seg = export_onnx(SegmentationExport(segmenter), tmp_path / "seg.onnx", SIZE, SEG_META)
    [got] = mnv2_runtime.load(seg_tflite, threads=1).predict(scene)
    [ref] = mnv2_runtime.load(onnx_seg, threads=1).predict(scene)
    assert got["mask"].shape == SIZE and float((got["mask"] == ref["mask"]).mean()) >= 0.999


@pytest.mark.slow  # a minute on a CPU: a third conversion; detection and segmentation cover its two halves
def test_multitask_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(build_model("ssdlite320_deeplabv3_mobilenet_v2", num_classes=5, seg_num_classes=4,
                                     width_mult=0.35))
    with torch.no_grad():
        for head in model.head.cls_heads:
            head[1].weight.mul_(20.0)
    path = export_litert(MultiTaskExport(model, SIZE, "raw"), tmp_path / "mt.tflite", SIZE, MT_META)
    backend = LiteRTBackend(path, threads=1)
    assert backend.output_names == ["anchors", "bbox_regression", "cls_logits", "logits"]
    report = check_outputs(backend.run, model, "multitask", _images(1, 4), mode="raw", postprocess=PP,
                           source=str(path), runtime="LiteRT")
    assert report["segmentation"]["argmax_agreement"] >= 0.999
    assert report["detections"] == report["reference_detections"] > 0


@pytest.mark.slow  # a minute on a CPU: calibration and a quantised conversion; the export tool's test runs int8 too
def test_int8_per_channel_weights_and_close(segmenter, tmp_path):
    calib = [_images(1, 10 + i).numpy() for i in range(4)]
    path = export_litert(SegmentationExport(segmenter), tmp_path / "seg_int8.tflite", SIZE, SEG_META,
                         calibration=calib)
    backend = LiteRTBackend(path, threads=1)
    assert backend.metadata["class_names"] == SEG_META["class_names"]
    tensors = backend._interpreter.get_tensor_details()
    weights = [t for t in tensors if t["dtype"] == np.int8 and len(t["shape"]) == 4
               and t["quantization_parameters"]["scales"].size > 1]
    # per output channel: one scale per filter (the depthwise ones too, whose channels are the last axis)
    assert len(weights) > 20
    assert all(t["quantization_parameters"]["scales"].size == t["shape"][t["quantization_parameters"]
                                                                         ["quantized_dimension"]] for t in weights)
    x = calib[0]
    with torch.no_grad():
        ref = segmenter(torch.from_numpy(x))["out"].numpy()
    out = backend.run(x)["logits"]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.98  # a collapsed model would correlate near 0


@pytest.mark.slow  # a minute on a CPU: calibration and a quantised conversion
def test_int8_float_heads(detector, tmp_path):
    from mnv2_vision.models.ssdlite import SSDLiteHead

    calib = [_images(1, 20 + i).numpy() for i in range(3)]
    path = export_litert(DetectionExport(detector, SIZE, "raw"), tmp_path / "det_int8.tflite", SIZE, DET_META,
                         calibration=calib, float_modules=(SSDLiteHead,))
    backend = LiteRTBackend(path, threads=1)
    filters = [t for t in backend._interpreter.get_tensor_details() if len(t["shape"]) == 4
               and t["shape"][0] > 1 and t["shape"][-1] > 0 and "head" in t["name"]]
    int8 = [t["name"] for t in filters if t["dtype"] == np.int8]
    assert filters and not int8, int8[:5]  # every head filter stayed float
    assert sum(t["dtype"] == np.int8 and len(t["shape"]) == 4 for t in backend._interpreter.get_tensor_details()) \
        > 20  # the backbone's are int8
    x = _images(1, 20)
    with torch.no_grad():
        ref = detector(x)["cls_logits"].numpy()
    out = backend.run(x.numpy())["cls_logits"]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
def test_bad_file_is_one_line(det_tflite, tmp_path, damage):
    data = det_tflite.read_bytes()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes({"empty": b"", "random": np.random.default_rng(0).bytes(4096),
                     "truncated": data[: len(data) // 2]}[damage])
    with pytest.raises(ModelError) as e:
        LiteRTBackend(bad, threads=1)
    message = str(e.value)
    assert "\n" not in message and str(bad) in message and "tools/export.py --format litert" in message


def test_missing_or_bad_metadata_names_file_and_key(det_tflite, tmp_path):
    data = det_tflite.read_bytes()
    pairs = dict(read_metadata_props(data, "x"))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(write_metadata(data, {**pairs, "input_size": "[96, 96]"}))
    with pytest.raises(ModelError, match=r"bad\.tflite: metadata key 'input_size'") as e:
        LiteRTBackend(bad, threads=1)
    assert "\n" not in str(e.value)
    bad.write_bytes(write_metadata(data, {**pairs, "class_names": json.dumps(NAMES[:3])}))
    with pytest.raises(ModelError, match="metadata key 'class_names'"):
        LiteRTBackend(bad, threads=1)
    # the same graph, its metadata entry renamed: the flatbuffer string (length, bytes, NUL) of the name, once
    name = len(METADATA_NAME).to_bytes(4, "little") + METADATA_NAME.encode() + b"\0"
    assert data.count(name) == 1
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(data.replace(name, name[:4] + b"x" * len(METADATA_NAME) + b"\0"))
    with pytest.raises(ModelError, match=r"bare\.tflite has no mnv2_vision metadata"):
        LiteRTBackend(bare, threads=1)


def test_missing_interpreter_names_the_extra(det_tflite, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingRuntime, match=r"pip install 'mnv2_runtime\[litert\]'") as e:
        LiteRTBackend(det_tflite, threads=1)
    assert str(det_tflite) in str(e.value) and "\n" not in str(e.value)


def test_export_tool_detection(tmp_path, shapes_root):
    ckpt = test_export._fake_checkpoint(tmp_path / "det.ckpt", "ssdlite_shapes",
                            ["model.num_classes=5", "model.width_mult=0.35", "data.image_size=96"],
                            {"category_ids": [1, 2, 3, 4], "category_names": ["circle", "square", "star", "triangle"]})
    out = tmp_path / "export"
    report = _tool("export").main(["--ckpt", str(ckpt), "--out", str(out), "--format", "litert", "--threads", "1",
                                   "--check-images", "2"])
    backend = LiteRTBackend(out / "model.tflite", 1)
    meta = backend.metadata
    assert meta["task"] == "detection" and meta["detection_output"] == "raw"  # the runtime runs the NMS
    assert meta["class_names"] == ["background", "circle", "square", "star", "triangle"]
    assert meta["input_size"] == [96, 96] and backend.fixed_input == (96, 96)
    assert meta["postprocess"]["nms_iou"] == 0.6 and meta["config"]["model"]["width_mult"] == 0.35
    assert [p["images"] for p in report["parity"]] == [[2, 3, 96, 96], [2, 3, 96, 96]]  # random + 2 val images
    assert all(p["max_abs_diff"]["cls_logits"] <= p["allowed"]["cls_logits"] for p in report["parity"])
    assert json.loads((out / "export_report.json").read_text())["litert"] == str(out / "model.tflite")
    assert not (out / "model.onnx").exists()


@pytest.mark.slow  # two minutes on a CPU: fp32 and int8 conversions, validation of PyTorch, fp32 and int8
def test_export_tool_segmentation_int8_gate(tmp_path, shapes_root, capsys):
    ckpt = test_export._fake_checkpoint(tmp_path / "seg.ckpt", "deeplabv3_shapes",
                            ["model.num_classes=5", "model.width_mult=0.35", "data.subset=4", "data.num_workers=0",
                             "data.image_size=96"],
                            {"class_names": ["background", "circle", "square", "star", "triangle"]})
    out = tmp_path / "export"
    # a negative allowed drop fails any int8 model that is not better than fp32: the gate must say so and exit 2
    line = fails(capsys, "export", ["--ckpt", str(ckpt), "--out", str(out), "--format", "litert", "--int8",
                                    "--calib-images", "2", "--runs", "2", "--check-images", "1", "--threads", "1",
                                    "--int8-max-drop", "-1"])
    assert "model_int8.tflite" in line and "int8 mIoU" in line and "allowed drop of -1" in line
    report = json.loads((out / "export_report.json").read_text())  # written before the gate
    acc = report["accuracy"]
    assert acc["litert_fp32"]["miou"] == pytest.approx(acc["pytorch"]["miou"], abs=1e-3)  # resized to 96 and back
    assert 0.0 <= acc["litert_int8"]["miou"] <= 1.0 and report["latency_ms"]["int8"] > 0
    assert report["int8_change"] == {"miou": pytest.approx(acc["litert_int8"]["miou"] - acc["litert_fp32"]["miou"])}
    meta = LiteRTBackend(out / "model_int8.tflite", 1).metadata
    assert "per-channel" in meta["quantization"] and meta["resize"].startswith("plain resize to input_size")


def test_export_tool_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mnv2_vision.commands.export._installed", lambda package: package != "ai_edge_litert")
    ckpt = test_export._fake_checkpoint(tmp_path / "det.ckpt", "ssdlite_shapes", ["model.num_classes=5", "model.width_mult=0.35"],
                            {"category_ids": [1, 2, 3, 4], "category_names": ["circle", "square", "star", "triangle"]})
    line = fails(capsys, "export", ["--ckpt", str(ckpt), "--out", str(tmp_path / "x"), "--format", "litert"])
    assert line == ("error: tools/export.py --format litert needs the optional 'litert' dependencies (ai_edge_litert "
                    "is not installed): pip install \"mnv2_vision[litert]\"")
    assert not (tmp_path / "x" / "model.tflite").exists()
