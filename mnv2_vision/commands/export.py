"""Export a checkpoint to ONNX (verified against PyTorch with ONNX Runtime), optionally also int8; or a state dict.

    python tools/export.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt                   # → <run>/export/model.onnx
    python tools/export.py --ckpt CKPT --detection-output raw --opset 13               # logits + offsets + anchors
    python tools/export.py --ckpt CKPT --int8 --calib-images 64                        # + model_int8.onnx, mAP/mIoU
    python tools/export.py --ckpt CKPT --format state_dict                             # model.pt + config.yaml

The multi-task pair exports one graph with the detection outputs and the segmentation logits (one pass).
Detection exports the whole post-processing (decode, per-class NMS, best ``eval.detections_per_img``) by default,
with the checkpoint's ``eval.*`` settings; ``--detection-output raw`` leaves it out. Every export has a dynamic batch
(segmentation also dynamic height and width) and carries its preprocessing in ``metadata_props``: input size, RGB
order, mean/std, class names, model name and the full config. After writing, the tool runs ONNX Runtime on validation
images and stops with an error if the outputs differ from PyTorch's (raw tensors by more than ``--atol``, or other
boxes after NMS). ``--int8`` quantises statically (per-channel weights) on ``--calib-images`` training images and
reports the validation mAP/mIoU of PyTorch, ONNX fp32 and int8, and the fp32 vs int8 ONNX Runtime latency.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mnv2_vision.checkpoint import load_model
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser, require_extra
from mnv2_vision.config import save_config, to_dict
from mnv2_vision.data import resolve_root
from mnv2_vision.files import output_folder, save_torch, write_json
from mnv2_vision.lit.detection import build_det_datamodule, categories_from
from mnv2_vision.data.classes import segmentation_class_names
from mnv2_vision.lit.segmentation import build_seg_datamodule
from mnv2_vision.ops.postprocess import PostprocessSettings
from mnv2_vision.perf.timing import time_round_robin
from mnv2_vision.version import __version__

try:  # the deploy extra (onnx, onnxruntime): without it main() names the install command instead of a traceback
    from mnv2_vision.perf import accuracy as ev
    from mnv2_vision.deploy.metadata import decode_props, encode_props, validate_metadata
    from mnv2_vision.deploy.onnx_export import (
        DetectionExport, MultiTaskExport, SegmentationExport, check_outputs, check_parity,
        export_onnx, ort_session)
    from mnv2_vision.deploy.quantize import detection_calibration, quantize_int8, segmentation_calibration
    _NO_DEPLOY: ImportError | None = None
except ImportError as e:
    _NO_DEPLOY = e
try:  # the openvino extra (openvino; nncf for --int8, imported when used)
    from mnv2_runtime.backends.openvino import OpenVINOBackend
    from mnv2_vision.deploy.openvino_export import (accuracy_control_layers, export_openvino, openvino_run,
                                                    quantize_openvino)
    _NO_OPENVINO: ImportError | None = None
except ImportError as e:
    _NO_OPENVINO = e


def _metadata(cfg, hparams, kind: str, size: tuple[int, int], wrapper) -> dict:
    """What the ONNX file carries in ``metadata_props``: preprocessing, labels and, for a detector, the wrapper's
    output mode, box coder and post-processing settings (a raw-mode export's runtime applies them itself)."""
    meta = {"model_name": cfg.model.name, "task": kind, "producer": f"mnv2_vision {__version__}",
            "input_name": "images", "input_layout": "NCHW", "input_size": list(size), "color_order": "RGB",
            "pixel_scaling": "x / 255, then (x - mean) / std per channel", "mean": list(cfg.data.mean),
            "std": list(cfg.data.std), "config": to_dict(cfg)}
    if kind in ("detection", "multitask"):
        ids, names = categories_from(hparams)
        meta.update(class_names=["background", *names], category_ids=ids, resize="plain resize to input_size",
                    box_format="xyxy, pixels of the network input (scale by original / input_size)",
                    detection_output=wrapper.mode, box_coder_weights=list(wrapper.coder.weights),
                    postprocess=wrapper.postprocess.as_dict())
        if kind == "multitask":
            meta.update(seg_class_names=list(hparams.get("class_names") or []), ignore_index=255,
                        seg_output="logits (N, K, H, W) at input_size: upsample to the original image, then argmax")
    else:
        meta.update(class_names=list(hparams.get("class_names") or segmentation_class_names(cfg)),
                    resize="none: any height and width (input_size is the training crop)", ignore_index=255)
    return meta


def _sample_inputs(cfg, kind: str, size: tuple[int, int], n: int) -> list[torch.Tensor]:
    """Preprocessed validation images (a batch of ``n`` for detection, one per image for segmentation's varying
    sizes), plus a random batch of 2 at ``size`` so the dynamic batch is always exercised."""
    inputs = [torch.randn(2, 3, *size)]
    if n > 0:
        d = cfg.data
        root = resolve_root(d)
        if kind in ("detection", "multitask"):
            inputs.append(torch.from_numpy(np.concatenate(
                detection_calibration(root, d.val_split, d.image_size, d.mean, d.std, n))))
        else:
            inputs += [torch.from_numpy(a) for a in _segmentation_images(cfg, d.val_split, n)]
    return inputs


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("--ckpt", required=True,
                   help="a checkpoint written by tools/train_det.py, train_seg.py or train_multitask.py")
    p.add_argument("--format", choices=("onnx", "openvino", "state_dict"), default="onnx",
                   help="onnx: model.onnx; openvino: the IR pair model.xml + model.bin (converted from the ONNX graph)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint's run folder>/export)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--detection-output", choices=("nms", "raw"), default="nms")
    p.add_argument("--atol", type=float, default=1e-4, help="raw outputs must agree within atol + rtol · max |output|")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--check-images", type=int, default=2, help="validation images for the parity check (0: random)")
    p.add_argument("--int8", action="store_true",
                   help="also write model_int8.onnx (.xml) and report accuracy and speed")
    p.add_argument("--calib-images", type=int, default=64, help="training images for int8 calibration")
    p.add_argument("--int8-max-drop", type=float, default=0.01,
                   help="OpenVINO: exit non-zero when int8 loses more validation mAP / mIoU than this (absolute)")
    p.add_argument("--int8-fp32-heads", action="store_true",
                   help="OpenVINO int8: keep the prediction layers (class / box heads, classifier) in float")
    p.add_argument("--int8-accuracy-control", action="store_true",
                   help="OpenVINO int8 of a single-task model: keep in float the layers NNCF's accuracy-controlled "
                        "quantisation picks so that the validation metric drops at most --int8-max-drop (slow: "
                        "a validation pass per layer)")
    p.add_argument("--threads", type=int, default=2, help="threads for ONNX Runtime, OpenVINO and PyTorch")
    p.add_argument("--runs", type=int, default=30, help="timed runs (in blocks of 10) for the fp32 vs int8 latency")
    args = add_debug_flag(p).parse_args(argv)
    require_extra(_NO_DEPLOY, "tools/export.py")
    if args.format == "openvino":  # before minutes of loading and exporting
        require_extra(_NO_OPENVINO, "tools/export.py --format openvino", "openvino")
        if args.int8 and importlib.util.find_spec("nncf") is None:
            require_extra(ImportError("nncf", name="nncf"), "tools/export.py --format openvino --int8", "openvino")

    torch.set_num_threads(args.threads)
    cfg, model, hparams = load_model(args.ckpt)
    out_dir = output_folder(Path(args.out) if args.out else Path(args.ckpt).resolve().parent.parent / "export")
    if args.format == "state_dict":
        save_torch(model.state_dict(), out_dir / "model.pt")
        save_config(cfg, out_dir / "config.yaml")
        print(f"wrote {out_dir / 'model.pt'} and {out_dir / 'config.yaml'}")
        return {"state_dict": str(out_dir / "model.pt")}

    kind, size = cfg.task, (cfg.data.image_size, cfg.data.image_size)
    if kind not in ("detection", "segmentation", "multitask"):
        raise SystemExit(f"error: ONNX export covers detection, segmentation and multi-task checkpoints, not {kind!r}")
    if kind == "multitask" and args.int8_accuracy_control:
        raise SystemExit("error: --int8-accuracy-control covers single-task checkpoints (it controls one metric)")
    if kind == "multitask" and args.int8 and args.format != "openvino":
        raise SystemExit("error: --int8 of the multi-task pair is scored for --format openvino only; export the pair "
                         "in fp32 here (its accuracy check needs both metrics per precision)")
    pp = PostprocessSettings.from_eval(cfg.eval)
    boxes = kind in ("detection", "multitask")
    wrapper = (MultiTaskExport if kind == "multitask" else DetectionExport)(model, size, args.detection_output, pp) \
        if boxes else SegmentationExport(model)
    target = str(out_dir / ("model.xml" if args.format == "openvino" else "model.onnx"))
    meta = _metadata(cfg, hparams, kind, size, wrapper)
    # what load would refuse is refused before anything is written, naming where the value comes from
    validate_metadata(decode_props(encode_props(meta).items(), target), target,
                      fix=f"it comes from {args.ckpt} (its config's data.image_size, data.mean, data.std, eval.* "
                          "or its label map): give values within these limits")
    if args.format == "openvino":
        return _export_openvino(args, cfg, hparams, model, wrapper, meta, out_dir)
    path = export_onnx(wrapper, out_dir / "model.onnx", size, meta, args.opset)
    print(f"wrote {path} ({kind}{', ' + args.detection_output if boxes else ''}, opset {args.opset})")
    inputs = _sample_inputs(cfg, kind, size, args.check_images)
    checks = [check_parity(path, model, kind, x, mode=args.detection_output, atol=args.atol, rtol=args.rtol,
                           postprocess=pp, threads=args.threads) for x in inputs]
    print(f"ONNX Runtime parity OK on {len(inputs)} input batches: {json.dumps(checks)}")
    report = {"onnx": str(path), "parity": checks}

    if args.int8:
        d = cfg.data
        calib = _calibration(cfg, kind, args.calib_images)
        int8_path = quantize_int8(path, out_dir / "model_int8.onnx", calib)
        print(f"wrote {int8_path} (calibrated on {len(calib)} images of {d.train_split!r})")
        sessions = {"fp32": ort_session(path, args.threads), "int8": ort_session(int8_path, args.threads)}
        x = np.ascontiguousarray(inputs[-1][:1].numpy())
        # Blocks of 11 calls, the first untimed: each timed call finds the cores and caches to itself (see timing.py).
        timing = time_round_robin({k: (lambda s=s: s.run(None, {"images": x})) for k, s in sessions.items()},
                                  runs=max(1, args.runs // 10), block=11)
        report["latency_ms"] = {k: v["median_ms"] for k, v in timing.items()}
        report["speedup"] = timing["fp32"]["median_ms"] / timing["int8"]["median_ms"]
        report["accuracy"] = _accuracy(cfg, hparams, model, kind, size, pp, out_dir, calib, args)
        key = "map" if kind == "detection" else "miou"
        acc = report["accuracy"]
        print(f"{key}: PyTorch {acc['pytorch'][key]:.4f}  ONNX fp32 {acc['onnx_fp32'][key]:.4f}  "
              f"ONNX int8 {acc['onnx_int8'][key]:.4f}  (change {acc['onnx_int8'][key] - acc['onnx_fp32'][key]:+.4f})")
        print(f"ONNX Runtime latency, batch 1 at {tuple(x.shape[-2:])}, {args.threads} threads: fp32 "
              f"{report['latency_ms']['fp32']:.1f} ms, int8 {report['latency_ms']['int8']:.1f} ms "
              f"(speed-up {report['speedup']:.2f}x)")
    write_json(out_dir / "export_report.json", report, indent=1)
    return report


def _calibration(cfg, kind: str, n: int) -> list[np.ndarray]:
    """The first ``n`` training images, preprocessed by the evaluation pipeline, for int8 calibration."""
    d = cfg.data
    if kind in ("detection", "multitask"):  # the pair takes the detector's fixed input size
        return detection_calibration(resolve_root(d), d.train_split, d.image_size, d.mean, d.std, n)
    return _segmentation_images(cfg, d.train_split, n)


def _segmentation_images(cfg, split: str, n: int) -> list[np.ndarray]:
    """The first ``n`` images of ``split`` normalised at their own size: ``(1, 3, H, W)`` arrays. A VOC layout by
    ``segmentation_calibration``; COCO with painted masks (``data.masks``), which that reader lacks, by the
    segmentation datamodule's evaluation dataset of ``split``."""
    d = cfg.data
    if d.format != "coco":
        return segmentation_calibration(resolve_root(d), split, d.mean, d.std, n, cfg.model.num_classes)
    dm = build_seg_datamodule(dataclasses.replace(cfg, data=dataclasses.replace(d, val_split=split)))
    dataset = dm.val_dataset()
    return [dataset[i]["image"].unsqueeze(0).numpy() for i in range(min(n, len(dataset)))]


def _export_openvino(args, cfg, hparams, model, wrapper, meta: dict, out_dir: Path) -> dict:
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
    inputs = _sample_inputs(cfg, kind, size, args.check_images)
    checks = [check_outputs(fp32.run, model, kind, x, mode=mode or "nms", atol=args.atol, rtol=args.rtol,
                            postprocess=wrapper.postprocess if mode else None, source=str(path),
                            runtime="OpenVINO") for x in inputs]
    print(f"OpenVINO parity OK on {len(inputs)} input batches: {json.dumps(checks)}")
    report = {"openvino": str(path), "parity": checks}
    if args.int8:
        d = cfg.data
        calib = _calibration(cfg, kind, args.calib_images)
        layers = _accuracy_control(cfg, hparams, model, wrapper, path, calib, args) if args.int8_accuracy_control \
            else []
        if layers:
            print(f"--int8-accuracy-control keeps {len(layers)} layers in float: {', '.join(layers)}")
        int8_path = quantize_openvino(path, out_dir / "model_int8.xml", calib, fp32_heads=args.int8_fp32_heads,
                                      fp32_layers=layers)
        print(f"wrote {int8_path} (NNCF, calibrated on {len(calib)} images of {d.train_split!r})")
        int8 = OpenVINOBackend(int8_path, args.threads)
        x = np.ascontiguousarray(inputs[-1][:1].numpy())
        timing = time_round_robin({"fp32": lambda: fp32.run(x), "int8": lambda: int8.run(x)},
                                  runs=max(1, args.runs // 10), block=11)
        report["latency_ms"] = {k: v["median_ms"] for k, v in timing.items()}
        report["speedup"] = timing["fp32"]["median_ms"] / timing["int8"]["median_ms"]
        report["fp32_layers"] = layers
        report["accuracy"] = acc = _openvino_accuracy(cfg, hparams, model, wrapper, fp32, int8, calib, inputs, args,
                                                      layers)
        keys = {"detection": ["map"], "segmentation": ["miou"], "multitask": ["map", "miou"]}[kind]
        for key in keys:
            print(f"{key}: PyTorch {acc['pytorch'][key]:.4f}  OpenVINO fp32 {acc['openvino_fp32'][key]:.4f}  "
                  f"OpenVINO int8 {acc['openvino_int8'][key]:.4f}  "
                  f"(change {acc['openvino_int8'][key] - acc['openvino_fp32'][key]:+.4f})")
        print(f"OpenVINO latency, batch 1 at {tuple(x.shape[-2:])}, {args.threads} threads: fp32 "
              f"{report['latency_ms']['fp32']:.1f} ms, int8 {report['latency_ms']['int8']:.1f} ms "
              f"(speed-up {report['speedup']:.2f}x)")
        write_json(out_dir / "export_report.json", report, indent=1)
        for key in keys:  # the pair must keep both
            ev.check_int8_drop({key: acc["openvino_fp32"][key]}, {key: acc["openvino_int8"][key]}, args.int8_max_drop,
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
    """Validation accuracy of the PyTorch model and the fp32 and int8 IRs (``OpenVINOBackend``), by the project's
    eval code. The mAP path needs raw outputs: an ``"nms"`` export is scored through a raw-mode IR of the same
    network quantised with the same images, which is first checked to give the shipped int8 file's detections. The
    multi-task pair gets both: mAP as a detector, mIoU of the shipped files' logits (``_pair_segmentation``)."""
    if cfg.task == "segmentation":
        dm, names = build_seg_datamodule(cfg), list(hparams.get("class_names") or segmentation_class_names(cfg))
        models = {"pytorch": model, "openvino_fp32": ev.ExportedSegmenter(fp32.run),
                  "openvino_int8": ev.ExportedSegmenter(int8.run)}
        return {k: ev.evaluate_segmentation(m, dm, names) for k, m in models.items()}
    k, size, pp = model.num_classes, tuple(fp32.fixed_input), wrapper.postprocess
    ids, _ = categories_from(hparams)
    dm = build_det_datamodule(cfg, category_ids=ids)
    pair = cfg.task == "multitask"
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"openvino_fp32": fp32.run, "openvino_int8": int8.run}
        if wrapper.mode == "nms":
            raw_wrapper = (MultiTaskExport if pair else DetectionExport)(model, size, "raw")  # the same network
            raw = export_openvino(export_onnx(raw_wrapper, Path(tmp) / "raw.onnx", size, {}, args.opset),
                                  Path(tmp) / "raw.xml")
            raw_int8 = quantize_openvino(raw, Path(tmp) / "raw_int8.xml", calib, fp32_heads=args.int8_fp32_heads,
                                         fp32_layers=layers)
            runs = {"openvino_fp32": openvino_run(raw, args.threads),
                    "openvino_int8": openvino_run(raw_int8, args.threads)}
            for x in inputs:  # the raw int8 graph scored below is the shipped one's network
                check_outputs(int8.run, ev.ExportedDetector(runs["openvino_int8"], k), "detection", x,
                              mode="nms", postprocess=pp, source=str(int8.path), runtime="OpenVINO int8")
        models = {"pytorch": model, **{name: ev.ExportedDetector(run, k) for name, run in runs.items()}}
        acc = {name: ev.evaluate_detection(m, dm, ids, pp, cfg.eval.coco_evaluator) for name, m in models.items()}
    if pair:  # the masks of the shipped files themselves
        masks = {"pytorch": model, "openvino_fp32": ev.ExportedSegmenter(fp32.run),
                 "openvino_int8": ev.ExportedSegmenter(int8.run)}
        for name, m in masks.items():
            acc[name].update(_pair_segmentation(cfg, m, ids, model.seg_num_classes))
    return acc


def _pair_segmentation(cfg, model, category_ids, num_classes: int) -> dict:
    """mIoU and pixel accuracy of a multi-task ``model`` (``{"out": logits}`` at the network size) on the pair's
    validation split, as its training module's validation scores them (``segmentation_pairs``)."""
    from mnv2_vision.data.io.labels import IGNORE_INDEX
    from mnv2_vision.eval.miou import ConfusionMatrix
    from mnv2_vision.lit.multitask import build_mt_datamodule, segmentation_pairs

    dm = build_mt_datamodule(cfg, category_ids=category_ids)
    dm.setup("validate")
    confmat = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for pred, mask, _ in segmentation_pairs(model.eval(), dm.val_dataloader()):
        confmat.update(pred, mask)
    metrics = confmat.compute()
    return {"miou": metrics.miou, "pixel_acc": metrics.pixel_acc}


def _accuracy(cfg, hparams, model, kind, size, pp, out_dir: Path, calib, args) -> dict:
    """Validation accuracy of the PyTorch model, the fp32 and the int8 ONNX models, by the project's eval code."""
    if kind == "segmentation":
        dm, names = build_seg_datamodule(cfg), list(hparams.get("class_names") or segmentation_class_names(cfg))
        models = {"pytorch": model, "onnx_fp32": ev.OrtSegmenter(ort_session(out_dir / "model.onnx", args.threads)),
                  "onnx_int8": ev.OrtSegmenter(ort_session(out_dir / "model_int8.onnx", args.threads))}
        return {k: ev.evaluate_segmentation(m, dm, names) for k, m in models.items()}
    # The mAP path is the validation loop's (raw outputs → postprocess_detections), so score raw-mode exports of the
    # same network, quantised with the same calibration images.
    raw = export_onnx(DetectionExport(model, size, "raw"), out_dir / "eval_raw.onnx", size, {}, args.opset)
    raw_int8 = quantize_int8(raw, out_dir / "eval_raw_int8.onnx", calib)
    ids, _ = categories_from(hparams)
    dm = build_det_datamodule(cfg, category_ids=ids)
    k = model.num_classes
    models = {"pytorch": model, "onnx_fp32": ev.OrtDetector(ort_session(raw, args.threads), k),
              "onnx_int8": ev.OrtDetector(ort_session(raw_int8, args.threads), k)}
    out = {name: ev.evaluate_detection(m, dm, ids, pp, cfg.eval.coco_evaluator) for name, m in models.items()}
    raw.unlink()
    raw_int8.unlink()
    return out


def console() -> int:
    """The ``mnv2-export`` command and ``python tools/export.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
