"""Export a checkpoint to ONNX (verified against PyTorch with ONNX Runtime), optionally also int8; or a state dict.

    python tools/export.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt                   # → <run>/export/model.onnx
    python tools/export.py --ckpt CKPT --detection-output raw --opset 13               # logits + offsets + anchors
    python tools/export.py --ckpt CKPT --int8 --calib-images 64                        # + model_int8.onnx, mAP/mIoU
    python tools/export.py --ckpt CKPT --format state_dict                             # model.pt + config.yaml
    python tools/export.py --ckpt CKPT --format litert --int8                          # model.tflite + int8
    python tools/export.py --ckpt CKPT --format openvino --int8                        # model.xml/.bin + int8

The multi-task pair exports one graph with the detection outputs and the segmentation logits (one pass).
Detection exports the whole post-processing (decode, per-class NMS, best ``eval.detections_per_img``) by default,
with the checkpoint's ``eval.*`` settings; ``--detection-output raw`` leaves it out. Every export has a dynamic batch
(segmentation also dynamic height and width) and carries its preprocessing in ``metadata_props``: input size, RGB
order, mean/std, class names, model name and the full config. After writing, the tool runs ONNX Runtime on validation
images and stops with an error if the outputs differ from PyTorch's (raw tensors by more than ``--atol``, or other
boxes after NMS). ``--int8`` quantises statically (per-channel weights) on ``--calib-images`` training images and
reports the validation mAP/mIoU of PyTorch, ONNX fp32 and int8, and the fp32 vs int8 ONNX Runtime latency.

``--format litert`` writes ``model.tflite`` (LiteRT, the ``litert`` extra): one fixed input size, detection as raw
heads (the runtime decodes and runs the per-class NMS), checked in the LiteRT interpreter against PyTorch the same
way; its ``--int8`` (PT2E, per-channel weights) writes ``model_int8.tflite`` and exits non-zero when the validation
mAP/mIoU drops by more than ``--int8-max-drop``. ``--format openvino`` writes the OpenVINO IR ``model.xml`` +
``model.bin`` (the ``openvino`` extra) converted from the ONNX graph (NMS included), checked in OpenVINO; its ``--int8``
(NNCF) writes ``model_int8.xml`` under the same gate. The formats' own steps are in ``exporting/litert.py`` and
``exporting/openvino.py``; what they share in ``exporting/inputs.py``.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mnv2_vision.checkpoint import load_model
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser, require_extra
from mnv2_vision.config import save_config
from mnv2_vision.files import output_folder, save_torch, write_json
from mnv2_vision.ops.postprocess import PostprocessSettings

try:  # the deploy extra (onnx, onnxruntime): without it main() names the install command instead of a traceback
    from mnv2_runtime.metadata import decode_props, encode_props, validate_metadata
    from mnv2_vision.commands.exporting.inputs import (calibration, export_metadata, int8_latency, report_int8,
                                                       sample_inputs, score_exports)
    from mnv2_vision.deploy.onnx_export import (
        DetectionExport, MultiTaskExport, SegmentationExport, check_parity, export_onnx, ort_run, ort_session)
    from mnv2_vision.deploy.quantize import quantize_int8
    _NO_DEPLOY: ImportError | None = None
except ImportError as e:
    _NO_DEPLOY = e

# what each format beyond ONNX imports: (its extra, the packages it needs, and those --int8 adds)
_FORMAT_PACKAGES = {"litert": (("ai_edge_litert", "litert_torch"), ()), "openvino": (("openvino",), ("nncf",))}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _require_format(fmt: str, int8: bool) -> None:
    """One line naming the extra to install when ``fmt``'s packages are missing (before minutes of loading)."""
    if fmt not in _FORMAT_PACKAGES:
        return
    needed, for_int8 = _FORMAT_PACKAGES[fmt]
    for package in (*needed, *(for_int8 if int8 else ())):
        if not _installed(package):
            require_extra(ImportError(package, name=package), f"tools/export.py --format {fmt}"
                          + (" --int8" if package in for_int8 else ""), fmt)



@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("--ckpt", required=True,
                   help="a checkpoint written by tools/train_det.py, train_seg.py or train_multitask.py")
    p.add_argument("--format", choices=("onnx", "litert", "openvino", "state_dict"), default="onnx",
                   help="onnx: model.onnx; litert: model.tflite at the fixed input size, detection as raw heads; "
                        "openvino: the IR pair model.xml + model.bin (converted from the ONNX graph)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint's run folder>/export)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--detection-output", choices=("nms", "raw"), default="nms")
    p.add_argument("--atol", type=float, default=1e-4, help="raw outputs must agree within atol + rtol · max |output|")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--check-images", type=int, default=2, help="validation images for the parity check (0: random)")
    p.add_argument("--int8", action="store_true",
                   help="also write model_int8.onnx (.xml) and report accuracy and speed")
    p.add_argument("--calib-images", type=int, default=64, help="training images for int8 calibration")
    p.add_argument("--int8-max-drop", type=float, default=None,
                   help="exit non-zero when int8 loses more validation mAP / mIoU than this (absolute; default: the "
                        "checkpoint config's export.int8_max_drop, 0.01 unless set)")
    p.add_argument("--int8-fp32-heads", action="store_true",
                   help="LiteRT / OpenVINO int8: keep the prediction layers (class / box heads) in float")
    p.add_argument("--int8-accuracy-control", action="store_true",
                   help="OpenVINO int8 of a single-task model: keep in float the layers NNCF's accuracy-controlled "
                        "quantisation picks so that the validation metric drops at most --int8-max-drop (slow: "
                        "a validation pass per layer)")
    p.add_argument("--threads", type=int, default=2, help="threads for ONNX Runtime, LiteRT, OpenVINO and PyTorch")
    p.add_argument("--runs", type=int, default=30, help="timed runs (in blocks of 10) for the fp32 vs int8 latency")
    args = add_debug_flag(p).parse_args(argv)
    require_extra(_NO_DEPLOY, "tools/export.py")
    _require_format(args.format, args.int8)  # before minutes of loading and exporting

    torch.set_num_threads(args.threads)
    cfg, model, hparams = load_model(args.ckpt)
    if args.int8_max_drop is None:
        args.int8_max_drop = cfg.export.int8_max_drop
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
    pp = PostprocessSettings.from_eval(cfg.eval)
    boxes = kind in ("detection", "multitask")
    if args.format == "litert":  # TFLite holds no NMS of postprocess_detections' semantics: the runtime runs it
        args.detection_output = "raw"
    wrapper = (MultiTaskExport if kind == "multitask" else DetectionExport)(model, size, args.detection_output, pp) \
        if boxes else SegmentationExport(model)
    target = str(out_dir / {"openvino": "model.xml", "litert": "model.tflite"}.get(args.format, "model.onnx"))
    meta = export_metadata(cfg, hparams, kind, size, wrapper)
    # what load would refuse is refused before anything is written, naming where the value comes from
    validate_metadata(decode_props(encode_props(meta).items(), target), target,
                      fix=f"it comes from {args.ckpt} (its config's data.image_size, data.mean, data.std, eval.* "
                          "or its label map): give values within these limits")
    if args.format == "litert":
        from mnv2_vision.commands.exporting.litert import export_litert_format
        return export_litert_format(args, cfg, hparams, model, wrapper, meta, out_dir)
    if args.format == "openvino":
        from mnv2_vision.commands.exporting.openvino import export_openvino_format
        return export_openvino_format(args, cfg, hparams, model, wrapper, meta, out_dir)
    path = export_onnx(wrapper, out_dir / "model.onnx", size, meta, args.opset)
    print(f"wrote {path} ({kind}{', ' + args.detection_output if boxes else ''}, opset {args.opset})")
    inputs = sample_inputs(cfg, kind, size, args.check_images)
    checks = [check_parity(path, model, kind, x, mode=args.detection_output, atol=args.atol, rtol=args.rtol,
                           postprocess=pp, threads=args.threads) for x in inputs]
    print(f"ONNX Runtime parity OK on {len(inputs)} input batches: {json.dumps(checks)}")
    report = {"onnx": str(path), "parity": checks}

    if args.int8:
        d = cfg.data
        calib = calibration(cfg, kind, args.calib_images)
        int8_path = quantize_int8(path, out_dir / "model_int8.onnx", calib)
        print(f"wrote {int8_path} (calibrated on {len(calib)} images of {d.train_split!r})")
        sessions = {"fp32": ort_session(path, args.threads), "int8": ort_session(int8_path, args.threads)}
        x = np.ascontiguousarray(inputs[-1][:1].numpy())
        report.update(int8_latency(*(lambda s=s: s.run(None, {"images": x}) for s in sessions.values()), args.runs))
        report["accuracy"] = _accuracy(cfg, hparams, model, kind, size, pp, out_dir, calib, args, sessions)
        report_int8(out_dir, report, kind, "onnx", "ONNX Runtime", args.threads, args.int8_max_drop,
                    f"{int8_path} (on {d.val_split!r})")
    write_json(out_dir / "export_report.json", report, indent=1)
    return report


def _accuracy(cfg, hparams, model, kind, size, pp, out_dir: Path, calib, args, sessions: dict) -> dict:
    """Validation accuracy of the PyTorch model, the fp32 and the int8 ONNX models (``sessions``: their ONNX Runtime
    sessions; ``score_exports``). The mAP path is the validation loop's (raw outputs → postprocess_detections), so
    boxes are scored on raw-mode exports of the same network, quantised with the same calibration images; masks on
    the shipped files' logits."""
    shipped = {f"onnx_{k}": ort_run(session) for k, session in sessions.items()}
    if kind == "segmentation":
        return score_exports(cfg, hparams, model, pp, {}, shipped)
    if args.detection_output == "raw":  # the shipped files are the raw-mode graphs
        return score_exports(cfg, hparams, model, pp, shipped, shipped)
    wrapper = (MultiTaskExport if kind == "multitask" else DetectionExport)(model, size, "raw")
    raw = export_onnx(wrapper, out_dir / "eval_raw.onnx", size, {}, args.opset)
    raw_int8 = quantize_int8(raw, out_dir / "eval_raw_int8.onnx", calib)
    try:
        detectors = {"onnx_fp32": ort_run(ort_session(raw, args.threads)),
                     "onnx_int8": ort_run(ort_session(raw_int8, args.threads))}
        return score_exports(cfg, hparams, model, pp, detectors, shipped)
    finally:
        raw.unlink()
        raw_int8.unlink()


def console() -> int:
    """The ``mnv2-export`` command and ``python tools/export.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
