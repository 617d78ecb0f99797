"""``tools/export.py --format openvino``: the ONNX graph converted to the OpenVINO IR pair ``model.xml`` +
``model.bin`` (the ``openvino`` extra), checked in the runtime's OpenVINO backend against PyTorch; ``--int8`` adds
``model_int8.xml`` (NNCF) with its validation accuracy gated by ``--int8-max-drop`` (both metrics for the pair), and
``--int8-accuracy-control`` keeps in float the layers NNCF's accuracy-controlled search picks. ``export.py`` checks
the extra is installed before it imports this module.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from mnv2_runtime.backends.openvino import OpenVINOBackend
from mnv2_vision.commands.exporting.inputs import (calibration, int8_latency, report_int8, sample_inputs,
                                                   score_exports)
from mnv2_vision.data.classes import segmentation_class_names
from mnv2_vision.deploy.onnx_export import DetectionExport, MultiTaskExport, check_outputs, export_onnx
from mnv2_vision.deploy.openvino_export import (accuracy_control_layers, export_openvino, openvino_run,
                                                quantize_openvino)
from mnv2_vision.files import write_json
from mnv2_vision.lit.detection import build_det_datamodule, categories_from
from mnv2_vision.lit.segmentation import build_seg_datamodule
from mnv2_vision.perf import accuracy as ev

__all__ = ["export_openvino_format"]


def export_openvino_format(args, cfg, hparams, model, wrapper, meta: dict, out_dir: Path) -> dict:
    """``--format openvino``: the ONNX graph (kept out of ``out_dir``) converted to ``model.xml`` + ``.bin``, checked
    against PyTorch through the runtime's OpenVINO backend; with ``--int8`` also ``model_int8.xml`` (NNCF), its
    validation accuracy against fp32 (exit non-zero beyond ``--int8-max-drop``) and the fp32 / int8 latency."""
    kind, size = cfg.task, tuple(meta["input_size"])
    mode = getattr(wrapper, "mode", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_openvino(export_onnx(wrapper, Path(tmp) / "model.onnx", size, meta, args.opset),
                               out_dir / "model.xml")
    print(f"wrote {path} and {path.with_suffix('.bin').name} ({kind}{', ' + mode if mode else ''}, OpenVINO IR)")
    fp32 = OpenVINOBackend(path, args.threads)  # what a user loads: the metadata is checked as it will be
    inputs = sample_inputs(cfg, kind, size, args.check_images)
    checks = [check_outputs(fp32.run, model, kind, x, mode=mode or "nms", atol=args.atol, rtol=args.rtol,
                            postprocess=wrapper.postprocess if mode else None, source=str(path),
                            runtime="OpenVINO") for x in inputs]
    print(f"OpenVINO parity OK on {len(inputs)} input batches: {json.dumps(checks)}")
    report = {"openvino": str(path), "parity": checks}
    if args.int8:
        d = cfg.data
        calib = calibration(cfg, kind, args.calib_images)
        layers = _accuracy_control(cfg, hparams, model, wrapper, path, calib, args) if args.int8_accuracy_control \
            else []
        if layers:
            print(f"--int8-accuracy-control keeps {len(layers)} layers in float: {', '.join(layers)}")
        int8_path = quantize_openvino(path, out_dir / "model_int8.xml", calib, fp32_heads=args.int8_fp32_heads,
                                      fp32_layers=layers)
        print(f"wrote {int8_path} (NNCF, calibrated on {len(calib)} images of {d.train_split!r})")
        int8 = OpenVINOBackend(int8_path, args.threads)
        x = np.ascontiguousarray(inputs[-1][:1].numpy())
        report.update(int8_latency(lambda: fp32.run(x), lambda: int8.run(x), args.runs))
        report["fp32_layers"] = layers
        report["accuracy"] = _openvino_accuracy(cfg, hparams, model, wrapper, fp32, int8, calib, inputs, args,
                                                      layers)
        report_int8(out_dir, report, kind, "openvino", "OpenVINO", args.threads, args.int8_max_drop,
                    f"{int8_path} (on {d.val_split!r})")
    write_json(out_dir / "export_report.json", report, indent=1)
    return report


def _accuracy_control(cfg, hparams, model, wrapper, path: Path, calib, args) -> list[str]:
    """``--int8-accuracy-control``: the layers to keep in float (``accuracy_control_layers``) for the validation
    metric the gate checks; a detector is scored on a raw-mode IR of the same network (the names are the same)."""
    if cfg.task == "segmentation":
        dm, names = build_seg_datamodule(cfg), list(hparams.get("class_names") or segmentation_class_names(cfg))
        return accuracy_control_layers(path, calib, lambda run: ev.evaluate_segmentation(
            ev.ExportedSegmenter(run), dm, names)["miou"], args.int8_max_drop)
    ids, _ = categories_from(hparams)
    dm, size = build_det_datamodule(cfg, category_ids=ids), (cfg.data.image_size, cfg.data.image_size)
    k = model.num_classes
    with tempfile.TemporaryDirectory() as tmp:
        raw = path if wrapper.mode == "raw" else export_openvino(
            export_onnx(DetectionExport(model, size, "raw"), Path(tmp) / "raw.onnx", size, {}, args.opset),
            Path(tmp) / "raw.xml")
        return accuracy_control_layers(raw, calib, lambda run: ev.evaluate_detection(
            ev.ExportedDetector(run, k), dm, ids, wrapper.postprocess, cfg.eval.coco_evaluator)["map"],
            args.int8_max_drop)


def _openvino_accuracy(cfg, hparams, model, wrapper, fp32, int8, calib, inputs, args, layers: list[str]) -> dict:
    """Validation accuracy of the PyTorch model and the fp32 and int8 IRs (``OpenVINOBackend``, ``score_exports``).
    The mAP path needs raw outputs: an ``"nms"`` export is scored through a raw-mode IR of the same network quantised
    with the same images, which is first checked to give the shipped int8 file's detections; masks (segmentation, the
    pair) are the shipped files' own."""
    shipped = {"openvino_fp32": fp32.run, "openvino_int8": int8.run}
    if cfg.task == "segmentation":
        return score_exports(cfg, hparams, model, None, {}, shipped)
    k, size, pp = model.num_classes, tuple(fp32.fixed_input), wrapper.postprocess
    if wrapper.mode == "raw":
        return score_exports(cfg, hparams, model, pp, shipped, shipped)
    with tempfile.TemporaryDirectory() as tmp:
        raw_wrapper = (MultiTaskExport if cfg.task == "multitask" else DetectionExport)(model, size, "raw")
        raw = export_openvino(export_onnx(raw_wrapper, Path(tmp) / "raw.onnx", size, {}, args.opset),
                              Path(tmp) / "raw.xml")
        raw_int8 = quantize_openvino(raw, Path(tmp) / "raw_int8.xml", calib, fp32_heads=args.int8_fp32_heads,
                                     fp32_layers=layers)
        runs = {"openvino_fp32": openvino_run(raw, args.threads), "openvino_int8": openvino_run(raw_int8, args.threads)}
        for x in inputs:  # the raw int8 graph scored below is the shipped one's network
            check_outputs(int8.run, ev.ExportedDetector(runs["openvino_int8"], k), "detection", x,
                          mode="nms", postprocess=pp, source=str(int8.path), runtime="OpenVINO int8")
        return score_exports(cfg, hparams, model, pp, runs, shipped)
