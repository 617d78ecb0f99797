"""``tools/export.py --format litert``: ``model.tflite`` (LiteRT, the ``litert`` extra) at one fixed input size,
detection as raw heads (the runtime decodes and runs the per-class NMS), checked in the runtime's LiteRT backend
against PyTorch; ``--int8`` adds ``model_int8.tflite`` (PT2E) with its validation accuracy gated by
``--int8-max-drop``. ``export.py`` checks the extra is installed before it imports this module.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mnv2_runtime.backends.litert import LiteRTBackend
from mnv2_vision.commands.exporting.inputs import (calibration, fixed_size, int8_latency, report_int8, sample_inputs,
                                                   score_exports)
from mnv2_vision.deploy.litert_export import export_litert
from mnv2_vision.deploy.onnx_export import check_outputs
from mnv2_vision.files import write_json
from mnv2_vision.models.ssdlite import SSDLiteHead

__all__ = ["export_litert_format"]


def export_litert_format(args, cfg, hparams, model, wrapper, meta: dict, out_dir: Path) -> dict:
    """``--format litert``: ``model.tflite`` checked against PyTorch in the runtime's LiteRT backend; with ``--int8``
    also ``model_int8.tflite``, the validation accuracy of both (exit non-zero beyond ``--int8-max-drop``) and their
    latency."""
    kind, size = cfg.task, tuple(meta["input_size"])
    if kind == "segmentation":  # one traced size (see deploy/litert_export.py): the runtime resizes to it
        meta = {**meta, "resize": "plain resize to input_size; upsample the logits to the image, then argmax"}
    path = export_litert(wrapper, out_dir / "model.tflite", size, meta)
    print(f"wrote {path} ({kind}{', raw' if kind != 'segmentation' else ''}, LiteRT, {size[0]}x{size[1]})")
    fp32 = LiteRTBackend(path, args.threads)  # what a user loads: the metadata is checked as it will be
    pp = getattr(wrapper, "postprocess", None)
    inputs = [torch.from_numpy(np.concatenate(fixed_size([b.numpy() for b in x.split(1)], size)))
              for x in sample_inputs(cfg, kind, size, args.check_images)]
    checks = [check_outputs(fp32.run, model, kind, x, mode="raw", atol=args.atol, rtol=args.rtol, postprocess=pp,
                            source=str(path), runtime="LiteRT") for x in inputs]
    print(f"LiteRT parity OK on {len(inputs)} input batches: {json.dumps(checks)}")
    report: dict = {"litert": str(path), "parity": checks}
    if args.int8:
        d = cfg.data
        calib = fixed_size(calibration(cfg, kind, args.calib_images), size)
        heads = (SSDLiteHead,) if args.int8_fp32_heads and kind != "segmentation" else ()
        int8_path = export_litert(wrapper, out_dir / "model_int8.tflite", size, {**meta, "quantization": (
            "int8 PT2E (litert-torch): symmetric per-channel weights, per-tensor activations"
            + (", float heads" if heads else ""))}, calibration=calib, float_modules=heads)
        print(f"wrote {int8_path} (int8, calibrated on {len(calib)} images of {d.train_split!r})")
        int8 = LiteRTBackend(int8_path, args.threads)
        x = np.ascontiguousarray(inputs[-1][:1].numpy())
        report.update(int8_latency(lambda: fp32.run(x), lambda: int8.run(x), args.runs))
        runs = {"litert_fp32": fp32.run, "litert_int8": int8.run}  # raw heads: scored as shipped
        report["accuracy"] = score_exports(cfg, hparams, model, pp, {} if kind == "segmentation" else runs, runs,
                                                 seg_fixed=size)
        report_int8(out_dir, report, kind, "litert", "LiteRT", args.threads, args.int8_max_drop,
                    f"{int8_path} (on {d.val_split!r})")
    write_json(out_dir / "export_report.json", report, indent=1)
    return report
