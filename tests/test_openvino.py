"""OpenVINO export (deploy/openvino_export.py, tools/export.py --format openvino) and the runtime's OpenVINO backend
(runtime/mnv2_runtime/backends/openvino.py): predictions equal the checkpoint's predictor, the NMS graph converts,
metadata round trip in rt_info, bad files as one line, NNCF int8 per channel and its accuracy check.

Skipped without the ``openvino`` extra (``pip install "mnv2_vision[openvino]"``: openvino, nncf)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason='the openvino extra is not installed: pip install "mnv2_vision[openvino]"')

import mnv2_runtime  # noqa: E402
from mnv2_runtime.backends.openvino import OpenVINOBackend, compile_ir, ir_props, read_ir, set_ir_props  # noqa: E402
from mnv2_runtime.errors import ModelError  # noqa: E402

from mnv2_vision.config import load_config, to_dict  # noqa: E402
from mnv2_vision.deploy import onnx_export  # noqa: E402
from mnv2_vision.deploy.onnx_export import (DetectionExport, SegmentationExport, check_outputs,  # noqa: E402
                                            export_onnx, match_detections)
from mnv2_vision.deploy.openvino_export import (accuracy_control_layers, export_openvino, openvino_run,  # noqa: E402
                                                quantize_openvino, read_metadata, save_ir)
from mnv2_vision.models import build_model  # noqa: E402
from mnv2_vision.ops.postprocess import PostprocessSettings  # noqa: E402

from helpers import SHAPE_NAMES, tool  # noqa: E402
from test_fuse import randomise_bn  # noqa: E402

SIZE = (96, 96)
PP = PostprocessSettings(score_thresh=0.05, nms_iou=0.5, topk_candidates=50, detections_per_img=20)
IDS = [1, 3, 4, 7]


def _spread_heads(model: torch.nn.Module, num_classes: int = 5) -> torch.nn.Module:
    """Random BatchNorm statistics and class layers with a real spread: a fresh head scores every class ~1/K, so
    every detection and pixel would be a near-tie."""
    model = randomise_bn(model)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d) and re.fullmatch(r"head\.cls_heads\.\d+\.1", name):
                m.weight.mul_(20.0)  # SSDLite's class layers
            elif isinstance(m, torch.nn.Conv2d) and m.out_channels == num_classes:
                _centre_classifier(model, m)
    return model


def _centre_classifier(model: torch.nn.Module, conv: torch.nn.Conv2d) -> None:
    """DeepLab's classifier with random weights and the bias that puts every class at 0 for the mean feature (of a
    noise image): its inputs share a large positive part (after ReLU), which would make one class win everywhere."""
    features = []
    hook = conv.register_forward_hook(lambda _m, args, _out: features.append(args[0]))
    torch.nn.init.normal_(conv.weight, std=1.0)
    model.eval()(torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    hook.remove()
    conv.bias.copy_(-conv.weight.flatten(1) @ features[0].mean((0, 2, 3)))


def _checkpoint(path: Path, cfg_name: str, overrides: list[str]) -> Path:
    """A checkpoint as the train tools write it (model.* weights, config and label map in hyper_parameters)."""
    from mnv2_vision.checkpoint import build_from_config

    cfg = load_config(cfg_name, ["model.width_mult=0.35", "data.num_workers=0", "data.subset=4", *overrides])
    torch.manual_seed(0)
    model = _spread_heads(build_from_config(cfg, pretrained=False))
    labels = {"segmentation": {"class_names": SHAPE_NAMES},
              "detection": {"category_ids": IDS, "category_names": SHAPE_NAMES[1:]},
              "multitask": {"category_ids": IDS, "category_names": SHAPE_NAMES[1:], "class_names": SHAPE_NAMES}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_dict(cfg), **labels[cfg.task]}}, path)
    return path


def _runtime_predictions(path: Path, files: list[Path], batch_size: int = 1) -> list[dict]:
    """``mnv2_runtime.load(path).predict`` (what ``mnv2_vision.load("model.xml")`` delegates to), its arrays as
    tensors for ``match_detections``."""
    return [{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in r.items()}
            for r in mnv2_runtime.load(path, threads=2).predict(files, batch_size=batch_size)]


def _same_predictions(ref: list[dict], got: list[dict]) -> None:
    """fp32 equality: the same labels, boxes within 0.01 px of the original image (ties as match_detections rules
    them), masks ≥ 99.9 % equal."""
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a["size"] == b["size"]
        if "boxes" in a:
            assert len(a["scores"]) == len(b["scores"]) > 0
            assert match_detections(a, b, box_atol=1e-2, score_atol=1e-4) == []
            assert b["category_ids"] == [IDS[k - 1] for k in b["labels"].tolist()]
        if "mask" in a:
            assert b["mask"].shape == a["mask"].shape == tuple(a["size"])
            assert float((a["mask"] == b["mask"]).float().mean()) >= 0.999
    masks = [a["mask"] for a in ref if "mask" in a]
    assert all(len(m.unique()) > 1 for m in masks)  # masks of one class each would agree trivially


def _files(shapes_root: Path, task: str, n: int) -> list[Path]:
    folder = shapes_root / ("VOC2012/JPEGImages" if task == "segmentation" else "coco/val2017")
    return sorted(folder.glob("*.jpg"))[:n]


# ---------------------------------------------------------------------------------------------- the tool, per task
def test_detection_export_equals_the_checkpoints_predictor(tmp_path, shapes_root):
    import mnv2_vision

    ckpt = _checkpoint(tmp_path / "det.ckpt", "ssdlite_shapes", ["model.num_classes=5", "data.image_size=96"])
    out = tmp_path / "export"
    report = tool("export").main(["--ckpt", str(ckpt), "--out", str(out), "--format", "openvino",
                                  "--check-images", "2"])
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.bin", "model.xml"]
    assert [p["images"] for p in report["parity"]] == [[2, 3, 96, 96], [2, 3, 96, 96]]
    assert all(p["detections"] == p["reference_detections"] > 0 for p in report["parity"])
    ops = {op.get_type_name() for op in read_ir(out / "model.xml").get_ops()}
    assert "NonMaxSuppression" in ops  # ONNX NonMaxSuppression became OpenVINO's: the NMS graph ships whole
    files = _files(shapes_root, "detection", 6)
    ref = mnv2_vision.load(ckpt, device="cpu").predict(files)
    _same_predictions(ref, _runtime_predictions(out / "model.xml", files, batch_size=2))


@pytest.mark.slow  # NNCF calibration and three validation passes: ~1 min on a loaded 2-core machine
def test_segmentation_int8_reports_and_enforces_its_accuracy(tmp_path, shapes_root, capsys):
    import mnv2_vision

    # the shapes' COCO layout with painted masks: calibration and check images come from the segmentation datamodule
    ckpt = _checkpoint(tmp_path / "seg.ckpt", "deeplabv3_shapes", ["model.num_classes=5", "data.format=coco",
                                                                   "data.masks=all", "data.train_split=train2017",
                                                                   "data.val_split=val2017"])
    out = tmp_path / "export"
    # an impossible bound: the export must write everything, report, then exit non-zero with the advice
    with pytest.raises(SystemExit) as e:
        tool("export").main(["--ckpt", str(ckpt), "--out", str(out), "--format", "openvino", "--int8",
                             "--calib-images", "2", "--runs", "2", "--check-images", "1", "--int8-max-drop", "-1"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert str(out / "model_int8.xml") in lines[0] and "--calib-images" in lines[0] and "heads" in lines[0]
    report = json.loads((out / "export_report.json").read_text())
    acc = report["accuracy"]
    assert acc["openvino_fp32"]["miou"] == pytest.approx(acc["pytorch"]["miou"], abs=1e-6)
    assert 0.0 <= acc["openvino_int8"]["miou"] <= 1.0 and report["latency_ms"]["int8"] > 0
    assert len(report["parity"]) == 2  # a random batch of 2, and a validation image at its own size
    meta = read_metadata(out / "model_int8.xml")
    assert meta["task"] == "segmentation" and "per-channel" in meta["quantization"]
    assert meta["class_names"] == SHAPE_NAMES and meta["config"]["model"]["width_mult"] == 0.35
    fp32 = OpenVINOBackend(out / "model.xml")
    assert fp32.fixed_input is None  # any height and width, as the ONNX export
    files = _files(shapes_root, "segmentation", 3)
    ref = mnv2_vision.load(ckpt, device="cpu").predict(files)
    _same_predictions(ref, _runtime_predictions(out / "model.xml", files))


@pytest.mark.slow  # NNCF calibration and three validation passes: ~1 min on a loaded 2-core machine
def test_multitask_export_equals_the_checkpoints_predictor(tmp_path, shapes_root):
    import mnv2_vision

    ckpt = _checkpoint(tmp_path / "pair.ckpt", "multitask_shapes",
                       ["model.num_classes=5", "model.seg_num_classes=5", "data.image_size=96"])
    out = tmp_path / "export"
    # int8 of the pair is scored on both tasks (an allowed drop of 1: random weights score anything)
    report = tool("export").main(["--ckpt", str(ckpt), "--out", str(out), "--format", "openvino", "--int8",
                                  "--calib-images", "2", "--runs", "2", "--check-images", "2",
                                  "--int8-max-drop", "1"])
    assert all(p["segmentation"]["argmax_agreement"] >= 0.999 for p in report["parity"])
    acc = report["accuracy"]
    for key in ("map", "miou"):  # fp32 scores as PyTorch; int8 is a score
        assert acc["openvino_fp32"][key] == pytest.approx(acc["pytorch"][key], abs=1e-4), key
        assert 0.0 <= acc["openvino_int8"][key] <= 1.0
    assert 0.0 < acc["pytorch"]["miou"] < 1.0  # masks of more than one class, some of them wrong
    assert read_metadata(out / "model_int8.xml")["task"] == "multitask"
    backend = OpenVINOBackend(out / "model.xml")
    assert backend.fixed_input == SIZE and backend.metadata["seg_class_names"] == SHAPE_NAMES
    assert backend.outputs == ["boxes", "scores", "labels", "num_detections", "logits"]
    files = _files(shapes_root, "detection", 4)
    ref = mnv2_vision.load(ckpt, device="cpu").predict(files)
    _same_predictions(ref, _runtime_predictions(out / "model.xml", files))


def test_without_the_extra_one_line_names_it(tmp_path, capsys, monkeypatch):
    from mnv2_vision.commands import export

    monkeypatch.setattr(export, "_installed", lambda package: package != "openvino")
    module = tool("export")
    # checked first: a checkpoint that is not there is not even looked for
    with pytest.raises(SystemExit) as e:
        module.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "export"), "--format",
                     "openvino"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "openvino is not installed" in err[0] and 'pip install "mnv2_vision[openvino]"' in err[0]
    assert not (tmp_path / "export" / "model.xml").exists()


# ---------------------------------------------------------------------------------------------- the module
@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return _spread_heads(build_model("ssdlite320_mobilenet_v2", num_classes=5, width_mult=0.35)).eval()


META = {"model_name": "ssdlite320_mobilenet_v2", "task": "detection", "input_size": list(SIZE),
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "class_names": ["background", "a <b> & \"c\"", "naïve", "two\nlines", "日本"], "category_ids": IDS,
        "postprocess": PP.as_dict(), "config": {"model": {"num_classes": 5}, "nested": {"s": "x'y</z>"}}}


@pytest.fixture(scope="module")
def det_ir(detector, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openvino")
    onnx = export_onnx(DetectionExport(detector, SIZE, "nms", PP), tmp / "det.onnx", SIZE, META)
    return export_openvino(onnx, tmp / "det.xml"), onnx


def test_nms_graph_gives_postprocess_detections_with_dynamic_batch(detector, det_ir):
    backend = OpenVINOBackend(det_ir[0])
    assert backend.fixed_input == SIZE
    for batch in (1, 3):
        x = torch.randn(batch, 3, *SIZE)
        report = check_outputs(backend.run, detector, "detection", x, mode="nms", postprocess=PP,
                                   source=str(det_ir[0]), runtime="OpenVINO")
        assert report["detections"] == report["reference_detections"] > 0
        out = backend.run(x.numpy())
        assert out["boxes"].shape == (batch, PP.detections_per_img, 4) and out["labels"].dtype == np.int64


def test_raw_heads_within_1e4_and_the_fp32_hint(detector, tmp_path):
    onnx = export_onnx(DetectionExport(detector, SIZE, "raw"), tmp_path / "raw.onnx", SIZE, {})
    xml = export_openvino(onnx, tmp_path / "raw.xml")
    x = torch.randn(2, 3, *SIZE)
    report = check_outputs(openvino_run(xml), detector, "detection", x, mode="raw", source=str(xml))
    assert max(report["max_abs_diff"].values()) <= 1e-4 and report["max_abs_diff"]["anchors"] == 0.0
    # without the hint the CPU plugin runs bf16 where the CPU has it: ~1e-2 off, outside the parity tolerance
    assert str(compile_ir(read_ir(xml)).get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_metadata_round_trip_in_rt_info(det_ir):
    xml, onnx = det_ir
    meta = read_metadata(xml)
    assert meta == onnx_export.read_metadata(onnx)
    assert meta["class_names"] == META["class_names"] and meta["config"] == META["config"]
    assert meta["postprocess"] == PP.as_dict() and meta["input_size"] == [96, 96]
    assert OpenVINOBackend(xml).metadata == meta  # validated, and against the graph
    # the .xml alone holds it: a copy of the pair elsewhere reads the same
    moved = xml.parent / "copy" / "m.xml"
    moved.parent.mkdir()
    moved.write_bytes(xml.read_bytes())
    moved.with_suffix(".bin").write_bytes(xml.with_suffix(".bin").read_bytes())
    assert read_metadata(moved) == meta


def _one_line(path: Path, match: str) -> str:
    with pytest.raises(ModelError) as e:
        OpenVINOBackend(path)
    message = str(e.value)
    assert "\n" not in message and match in message, message
    return message


def test_bad_files_are_one_line_naming_the_file(det_ir, tmp_path):
    xml = det_ir[0]
    text, weights = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()

    def pair(name: str, xml_bytes: bytes, bin_bytes: bytes | None) -> Path:
        path = tmp_path / f"{name}.xml"
        path.write_bytes(xml_bytes)
        if bin_bytes is not None:
            path.with_suffix(".bin").write_bytes(bin_bytes)
        return path

    assert str(tmp_path / "truncated.xml") in _one_line(pair("truncated", text[: len(text) // 2], weights),
                                                         "is not a model OpenVINO can read")
    for name, data in (("random", np.random.default_rng(0).bytes(5000)), ("empty", b"")):
        assert str(tmp_path / f"{name}.xml") in _one_line(pair(name, data, weights), "is not an OpenVINO IR")
    assert str(tmp_path / "nobin.bin") in _one_line(pair("nobin", text, None), "is missing")
    assert "short.bin" in _one_line(pair("short", text, weights[: len(weights) // 3]), "short.xml")
    # a bad value in the metadata: the file and the key
    model = read_ir(xml)
    set_ir_props(model, {"class_names": "[\"background\", \"a\""})
    message = _one_line(save_ir(model, tmp_path / "badmeta.xml"), "metadata key 'class_names'")
    assert str(tmp_path / "badmeta.xml") in message and "not valid JSON" in message
    bare = export_openvino(export_onnx(SegmentationExport(build_model("deeplabv3_mobilenet_v2", num_classes=3,
                                                                      width_mult=0.35)),
                                       tmp_path / "bare.onnx", (64, 64), {}), tmp_path / "bare.xml")
    assert ir_props(read_ir(bare), str(bare)) == []
    _one_line(bare, "has no mnv2_vision metadata")


# ---------------------------------------------------------------------------------------------- int8
def test_nncf_int8_weights_per_channel_or_per_tensor(tmp_path):
    pytest.importorskip("nncf", reason='the openvino extra is not installed: pip install "mnv2_vision[openvino]"')
    torch.manual_seed(0)
    seg = randomise_bn(build_model("deeplabv3_mobilenet_v2", num_classes=5, width_mult=0.35)).eval()
    onnx = export_onnx(SegmentationExport(seg), tmp_path / "seg.onnx", (64, 64), {"model_name": "m"})
    fp32 = export_openvino(onnx, tmp_path / "seg.xml")
    calib = [np.random.default_rng(i).standard_normal((1, 3, 64, 64)).astype(np.float32) for i in range(4)]
    x = calib[0]
    ref = openvino_run(fp32)(x)["logits"]
    for per_channel in (True, False):
        int8 = quantize_openvino(fp32, tmp_path / f"int8_{per_channel}.xml", calib, per_channel=per_channel)
        model = read_ir(int8)
        scales = []  # each depthwise convolution's weights: int8 constant → Convert → Multiply by its scales
        for op in model.get_ordered_ops():
            if op.get_type_name() == "GroupConvolution":
                mul = op.input_value(1).get_node()
                assert mul.get_type_name() == "Multiply"
                scales.append(mul.input_value(1).get_node().get_data().size)
        assert len(scales) >= 17 and all((s > 1) == per_channel for s in scales), scales
        assert read_metadata(int8)["model_name"] == "m"
        out = openvino_run(int8)(x)["logits"]
        if per_channel:  # close to fp32: a collapsed model would correlate near 0
            assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.98
            assert "per-channel" in read_metadata(int8)["quantization"]


@pytest.mark.slow  # NNCF ranks every quantised layer by the metric: ~1 min on a loaded 2-core machine
def test_accuracy_control_finds_the_layers_to_keep_in_float(tmp_path):
    pytest.importorskip("nncf", reason='the openvino extra is not installed: pip install "mnv2_vision[openvino]"')
    torch.manual_seed(0)
    seg = randomise_bn(build_model("deeplabv3_mobilenet_v2", num_classes=5, width_mult=0.35)).eval()
    fp32 = export_openvino(export_onnx(SegmentationExport(seg), tmp_path / "seg.onnx", (64, 64), {"model_name": "m"}),
                           tmp_path / "seg.xml")
    calib = [np.random.default_rng(i).standard_normal((1, 3, 64, 64)).astype(np.float32) for i in range(4)]
    ref = openvino_run(fp32)(calib[0])["logits"]

    def closeness(run) -> float:  # a metric that int8 lowers: minus the mean absolute logit error
        return -float(np.abs(run(calib[0])["logits"] - ref).mean())

    plain = closeness(openvino_run(quantize_openvino(fp32, tmp_path / "plain.xml", calib)))
    assert plain < 0.0
    layers = accuracy_control_layers(fp32, calib, closeness, max_drop=-plain / 2)
    assert layers and all(name.startswith("/model/") for name in layers), layers
    kept = quantize_openvino(fp32, tmp_path / "kept.xml", calib, fp32_layers=layers)
    assert closeness(openvino_run(kept)) > plain  # the named layers in float: closer to fp32
    assert f"{len(layers)} layers fp32" in read_metadata(kept)["quantization"]


@pytest.mark.slow  # NNCF calibration and three validation passes: ~1 min on a loaded 2-core machine
def test_accuracy_control_layers_stay_float_in_the_shipped_nms_graph(tmp_path, monkeypatch):
    pytest.importorskip("nncf", reason='the openvino extra is not installed: pip install "mnv2_vision[openvino]"')
    from mnv2_vision.commands.exporting import openvino as export

    # the layers NNCF would pick (its search is accuracy_control_layers' test): a depthwise and a class layer
    chosen = ["/model/head/box_heads.0/box_heads.0.0/box_heads.0.0.0/Conv/WithoutBiases",
              "/model/head/cls_heads.0/cls_heads.0.1/Conv/WithoutBiases"]
    seen = {}

    def pick(xml, images, validate, max_drop):
        seen.update(xml=Path(xml), metric=validate(openvino_run(xml)), max_drop=max_drop)
        return chosen

    monkeypatch.setattr(export, "accuracy_control_layers", pick)
    ckpt = _checkpoint(tmp_path / "det.ckpt", "ssdlite_shapes", ["model.num_classes=5", "data.image_size=96"])
    out = tmp_path / "export"
    report = tool("export").main(["--ckpt", str(ckpt), "--out", str(out), "--format", "openvino", "--int8",
                                  "--int8-accuracy-control", "--calib-images", "2", "--runs", "2",
                                  "--check-images", "2", "--int8-max-drop", "1"])
    assert seen["max_drop"] == 1.0 and seen["xml"].name == "raw.xml"  # scored as the gate scores: raw outputs
    assert seen["metric"] == pytest.approx(report["accuracy"]["openvino_fp32"]["map"], abs=1e-6)
    assert report["fp32_layers"] == chosen
    int8 = read_ir(out / "model_int8.xml")
    names = {op.get_friendly_name() for op in int8.get_ops()}
    assert set(chosen) <= names  # the raw graph's names are the NMS graph's
    quantized = {op.get_friendly_name() for op in int8.get_ops()
                 if any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())}
    assert not set(chosen) & quantized and len(quantized) > 20
    assert "2 layers fp32" in read_metadata(out / "model_int8.xml")["quantization"]
