"""CPU benchmark: params, MAdds and median batch-1 latency of SSDLite-MobileNetV2 (320²) and DeepLabv3-MobileNetV2
lite (513²) as eager PyTorch, fused PyTorch, ONNX Runtime fp32 and int8, against the machine's compute floor.

    python tools/benchmark.py                                  # our models, floor, memory-efficient mode
    python tools/benchmark.py --peers --train --data           # + torchvision peers, training step, data pipeline
    python tools/benchmark.py --peers --det-ckpt D.ckpt --seg-ckpt S.ckpt --json runs/benchmark.json
    MNV2_REAL_DATA=../shared/data python tools/benchmark.py --data-only  # data pipelines alone (perf/data.py)
    python tools/benchmark.py --multitask                      # + the SSDLite + DeepLab pair on one backbone pass

Every model runs in this process on ``--threads`` threads (PyTorch and ONNX Runtime alike), with random weights
(the networks' timing does not depend on them; detection's post-processing does, and random scores put every
class's top-k above the 0.001 threshold: its worst case, for every model alike) and the same detection
post-processing settings (``--score-thresh`` etc.). The candidates are timed round-robin in blocks of ``--block``
calls after warm-up, so load from other processes hits all of them alike while each timed call finds the cores and
caches as a deployment running one model would; training-step candidates each run in a process of their own. The
compute floor of a model is its MAdds divided by the multiply-add rate of a large fp32 matrix product on the same threads.
ONNX Runtime's profiler then splits each fp32 model's time into convolution kinds (1×1, depthwise, other; each with
its multiply-add rate as a fraction of the matrix product's) and the other operators, which says where the gap to
the floor is.
``--det-ckpt/--seg-ckpt`` add the int8 accuracy change of trained checkpoints on their validation sets (via
``tools/export.py --int8``). ``--data`` adds the data pipelines' images/s per loader worker with a per-stage
breakdown, ours against the albumentations pipelines they replace and torchvision's v2 detection reference
(``mnv2_vision/perf/data.py``). Results go to stdout and ``--json``.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser, require_extra
from mnv2_vision.perf import network as bench
from mnv2_vision.deploy.fuse import fold_batchnorm, fuse_for_inference
from mnv2_vision.files import write_json
from mnv2_vision.perf.coco_eval import coco_eval_benchmark
from mnv2_vision.perf.data import data_benchmark, format_data_benchmark
from mnv2_vision.perf.timing import matmul_madd_rate, time_round_robin
from mnv2_vision.models import build_model
from mnv2_vision.perf.complexity import count_madds, count_params

try:  # the deploy extra (onnx, onnxruntime): without it main() names the install command instead of a traceback
    import onnxruntime

    from mnv2_vision.deploy.onnx_export import DetectionExport, SegmentationExport, export_onnx, ort_session
    from mnv2_vision.perf.ort_profile import kernel_breakdown
    from mnv2_vision.deploy.quantize import detection_calibration, quantize_int8, segmentation_calibration
    _NO_DEPLOY: ImportError | None = None
except ImportError as e:
    _NO_DEPLOY = e

MULTITASK = "ssdlite320_deeplabv3_mobilenet_v2"


def _ort_variants(name: str, wrapper, size: tuple[int, int], calib, tmp: Path) -> dict:
    fp32 = export_onnx(wrapper, tmp / f"{name}.onnx", size, {})
    int8 = quantize_int8(fp32, tmp / f"{name}_int8.onnx", calib)
    return {"onnxruntime fp32": fp32, "onnxruntime int8": int8}


def _latency_table(args, tmp: Path) -> tuple[list[dict], dict, dict]:
    from mnv2_vision.data.synthetic import SHAPE_CLASSES, ensure_shapes

    pp = dict(score_thresh=args.score_thresh, nms_iou=args.nms_iou, topk_candidates=args.topk,
              detections_per_img=args.detections)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    shapes = ensure_shapes()
    det, seg = build_model("ssdlite320_mobilenet_v2").eval(), build_model("deeplabv3_mobilenet_v2").eval()
    sd, ss = (args.det_size,) * 2, (args.seg_size,) * 2
    xd, xs = torch.randn(1, 3, *sd), torch.randn(1, 3, *ss)
    det_calib = detection_calibration(shapes / "coco", "train2017", args.det_size, mean, std, args.calib_images)
    seg_calib = segmentation_calibration(shapes / "VOC2012", "train", mean, std, args.calib_images,
                                         1 + len(SHAPE_CLASSES))
    det_ort = _ort_variants("det", DetectionExport(det, sd, "nms", **pp), sd, det_calib, tmp)
    seg_ort = _ort_variants("seg", SegmentationExport(seg), ss, seg_calib, tmp)
    groups = {  # model → (input, module, {variant: runner})
        "ssdlite320_mobilenet_v2": (xd, det, {
            "eager": bench.detection_runner(det, xd, pp),
            "fused": bench.detection_runner(fuse_for_inference(det), xd, pp, fast_nms=True),
            **{k: bench.ort_runner(ort_session(p, args.threads), xd) for k, p in det_ort.items()}}),
        "deeplabv3_mobilenet_v2 (lite)": (xs, seg, {
            "eager": bench.segmentation_runner(seg, xs),
            "fused": bench.segmentation_runner(fuse_for_inference(seg), xs),
            **{k: bench.ort_runner(ort_session(p, args.threads), xs) for k, p in seg_ort.items()}}),
    }
    if args.multitask or args.mt_ckpt:
        groups.update(_multitask_groups(args, pp, tmp, det_calib))
    if args.peers:
        peers = bench.torchvision_peers(pp)
        groups["ssdlite320_mobilenet_v3_large (torchvision)"] = (xd, peers["ssdlite320_mobilenet_v3_large"], {
            "eager": (lambda m=peers["ssdlite320_mobilenet_v3_large"]: m(list(xd)))})
        for name in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"):
            groups[f"{name} (torchvision)"] = (xs, peers[name], {"eager": bench.segmentation_runner(peers[name], xs)})
    runners = {(g, v): fn for g, (_, _, variants) in groups.items() for v, fn in variants.items()}
    print(f"timing {len(runners)} candidates round-robin: {args.runs} rounds of {args.block} calls each (the first "
          f"untimed when > 1) after {args.warmup} warm-up rounds ...", flush=True)
    rate = matmul_madd_rate(args.matmul_size)
    with torch.inference_mode():
        timing = time_round_robin({f"{g}|{v}": fn for (g, v), fn in runners.items()}, args.runs, args.warmup,
                                  args.block)
    rate = max(rate, matmul_madd_rate(args.matmul_size))  # before and after: the better estimate of the peak
    rows = []
    for g, (x, model, variants) in groups.items():
        madds = count_madds(model, tuple(x.shape[-2:]))
        for v in variants:
            t = timing[f"{g}|{v}"]
            floor_ms = madds / rate * 1e3
            rows.append({"model": g, "variant": v, "input": int(x.shape[-1]), "params_m": count_params(model) / 1e6,
                         "madds_b": madds / 1e9, "median_ms": t["median_ms"], "p10_ms": t["p10_ms"],
                         "p90_ms": t["p90_ms"], "floor_ms": floor_ms, "x_floor": t["median_ms"] / floor_ms})
    breakdown = {}
    for name, path, x in (("ssdlite320_mobilenet_v2", det_ort["onnxruntime fp32"], xd),
                          ("deeplabv3_mobilenet_v2 (lite)", seg_ort["onnxruntime fp32"], xs)):
        breakdown[name] = kernel_breakdown(path, {"images": x.numpy()}, runs=args.runs * max(1, args.block - 1),
                                           warmup=args.warmup, threads=args.threads)
        for r in breakdown[name]:
            if r["madds"] is not None:
                r.update(floor_ms=r["madds"] / rate * 1e3, of_matmul_rate=r["gmadds_per_s"] * 1e9 / rate)
    return rows, {"matmul_gmadds_per_s": rate / 1e9, "postprocess": pp}, breakdown


def _multitask_groups(args, pp: dict, tmp: Path, calib) -> dict:
    """The pair and the two single-task models it replaces, at the pair's input size: random α = 1 models at
    ``--det-size`` (91 COCO / 21 VOC classes), or ``--mt-ckpt``'s network next to single-task models of its width and
    class counts at its training size."""
    from mnv2_vision.deploy.onnx_export import MultiTaskExport

    if args.mt_ckpt:
        from mnv2_vision.checkpoint import load_model

        cfg, pair, _ = load_model(args.mt_ckpt)
        size, m = cfg.data.image_size, cfg.model
        single = dict(width_mult=m.width_mult)
        det = build_model("ssdlite320_mobilenet_v2", num_classes=m.num_classes, **single).eval()
        seg = build_model("deeplabv3_mobilenet_v2", num_classes=m.seg_num_classes, **single).eval()
        tag = f" @{size} ({Path(args.mt_ckpt).name})"
    else:
        size, tag = args.det_size, f" @{args.det_size}"
        pair = build_model("ssdlite320_deeplabv3_mobilenet_v2").eval()
        det, seg = build_model("ssdlite320_mobilenet_v2").eval(), build_model("deeplabv3_mobilenet_v2").eval()
    x = torch.randn(1, 3, size, size)
    s2 = (size, size)
    pair_onnx = export_onnx(MultiTaskExport(pair, s2, "nms", **pp), tmp / "pair.onnx", s2, {})
    seg_onnx = export_onnx(SegmentationExport(seg), tmp / "seg_pair_size.onnx", s2, {})
    groups = {f"{MULTITASK} ({pair.sharing}){tag}": (x, pair, {
        "eager": bench.detection_runner(pair, x, pp),
        "fused": bench.detection_runner(fuse_for_inference(pair), x, pp, fast_nms=True),
        "onnxruntime fp32": bench.ort_runner(ort_session(pair_onnx, args.threads), x)}),
        f"deeplabv3_mobilenet_v2 (lite){tag}": (x, seg, {
            "eager": bench.segmentation_runner(seg, x), "fused": bench.segmentation_runner(fuse_for_inference(seg), x),
            "onnxruntime fp32": bench.ort_runner(ort_session(seg_onnx, args.threads), x)})}
    if args.mt_ckpt:  # the default detector row is α = 1 at --det-size: time the matching one here
        det_onnx = export_onnx(DetectionExport(det, s2, "nms", **pp), tmp / "det_pair_size.onnx", s2, {})
        groups[f"ssdlite320_mobilenet_v2{tag}"] = (x, det, {
            "eager": bench.detection_runner(det, x, pp),
            "fused": bench.detection_runner(fuse_for_inference(det), x, pp, fast_nms=True),
            "onnxruntime fp32": bench.ort_runner(ort_session(det_onnx, args.threads), x)})
    return groups


def _multitask_ratios(rows: list[dict]) -> dict[str, float]:
    """The pair against SSDLite and DeepLab run one after the other at the same size, per variant, and MAdds."""
    pairs = [r for r in rows if r["model"].startswith(MULTITASK)]
    out: dict[str, float] = {}
    for r in pairs:
        tag = r["model"].split(")", 1)[1]
        det_name = f"ssdlite320_mobilenet_v2{tag}" if any(q["model"] == f"ssdlite320_mobilenet_v2{tag}"
                                                          for q in rows) else "ssdlite320_mobilenet_v2"
        det = {q["variant"]: q for q in rows if q["model"] == det_name}
        seg = {q["variant"]: q for q in rows if q["model"] == f"deeplabv3_mobilenet_v2 (lite){tag}"}
        v = r["variant"]
        if v in det and v in seg:
            out[f"multitask {v} / (ssdlite + deeplab {v}, one after the other){tag}"] = r["median_ms"] / (
                det[v]["median_ms"] + seg[v]["median_ms"])
        if v == "fused":
            out[f"multitask MAdds / ssdlite MAdds{tag}"] = r["madds_b"] / det[v]["madds_b"]
    return out


def _ratios(rows: list[dict]) -> dict[str, float]:
    ms = {(r["model"], r["variant"]): r["median_ms"] for r in rows}
    x = {(r["model"], r["variant"]): r["x_floor"] for r in rows}
    d, s = "ssdlite320_mobilenet_v2", "deeplabv3_mobilenet_v2 (lite)"
    out = {"ssdlite onnxruntime fp32 / floor": x[(d, "onnxruntime fp32")],
           "deeplab onnxruntime fp32 / floor": x[(s, "onnxruntime fp32")],
           "ssdlite int8 / fp32 (onnxruntime)": ms[(d, "onnxruntime int8")] / ms[(d, "onnxruntime fp32")],
           "deeplab int8 / fp32 (onnxruntime)": ms[(s, "onnxruntime int8")] / ms[(s, "onnxruntime fp32")]}
    peers = {"ssdlite fused / torchvision ssdlite320_mobilenet_v3_large": (d, "ssdlite320_mobilenet_v3_large"),
             "deeplab fused / torchvision lraspp_mobilenet_v3_large": (s, "lraspp_mobilenet_v3_large"),
             "deeplab fused / torchvision deeplabv3_mobilenet_v3_large": (s, "deeplabv3_mobilenet_v3_large")}
    for key, (ours, peer) in peers.items():
        if (f"{peer} (torchvision)", "eager") in ms:
            out[key] = ms[(ours, "fused")] / ms[(f"{peer} (torchvision)", "eager")]
    return {**out, **_multitask_ratios(rows)}


def _export_accuracy(ckpt: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mnv2_vision.commands.export", "--ckpt", ckpt, "--out", tmp, "--int8",
               "--calib-images", str(args.calib_images), "--threads", str(args.threads),
               "--runs", str(args.runs * max(1, args.block - 1))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
        report = json.loads((Path(tmp) / "export_report.json").read_text())
    return {"checkpoint": ckpt, "accuracy": report["accuracy"], "latency_ms": report["latency_ms"],
            "speedup": report["speedup"]}


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=6, help="round-robin rounds (median of rounds × (block − 1) calls)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--block", type=int, default=11,
                   help="calls per candidate in a row per round, the first untimed: right after a switch the other "
                        "runtimes' threads still spin and its weights are out of cache (measured: ONNX Runtime "
                        "SSDLite 9.7 ms alone, 19.9 ms interleaved call by call, 10.0 ms in blocks of 11); "
                        "1 = strict call-by-call interleaving")
    p.add_argument("--peers", action="store_true", help="add torchvision's MobileNetV3 SSDLite, LR-ASPP and DeepLabv3")
    p.add_argument("--multitask", action="store_true",
                   help="add the SSDLite + DeepLab pair (one backbone pass) and DeepLab at the pair's input size: "
                        "latency against the two models run one after the other, MAdds against SSDLite's")
    p.add_argument("--mt-ckpt", default=None, help="a train_multitask.py checkpoint: time its network (at its "
                   "training size) against single-task models of its width and classes (implies --multitask)")
    p.add_argument("--train", action="store_true", help="training-step images/s, ours vs torchvision's SSDLite")
    p.add_argument("--train-rounds", type=int, default=3,
                   help="rounds in which every training candidate runs once, each in a fresh process")
    p.add_argument("--train-steps", type=int, default=4, help="timed steps per candidate and round (after 2 warm-up)")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--det-size", type=int, default=320, help="SSDLite input side (the paper's 320)")
    p.add_argument("--seg-size", type=int, default=513, help="DeepLab input side (the paper's 513)")
    p.add_argument("--data", action="store_true",
                   help="data pipelines: images/s per loader worker, ours vs before vs torchvision's reference, by stage "
                        "(real images too when MNV2_REAL_DATA is set)")
    p.add_argument("--data-only", action="store_true", help="only the data pipelines (skips every model table)")
    p.add_argument("--data-images", type=int, default=100, help="images per pipeline and dataset")
    p.add_argument("--data-rounds", type=int, default=3, help="interleaved rounds over those images (median)")
    p.add_argument("--data-filter", default="", help="only the data pipelines whose name contains this text")
    p.add_argument("--predictor", action="store_true",
                   help="the predictor's default CPU path vs the fused eager path (SSDLite network), and predict() "
                        "on 64 real images (MNV2_REAL_DATA's coco128, else the shapes) batched vs one by one")
    p.add_argument("--predictor-only", action="store_true", help="only the predictor tables")
    p.add_argument("--predictor-images", type=int, default=64)
    p.add_argument("--predictor-score-thresh", type=float, default=0.3,
                   help="predict()'s score threshold in the throughput run (an application's, not mAP's 0.001)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the matrices measuring the fp32 peak")
    p.add_argument("--no-memory", action="store_true", help="skip the memory-efficient-mode table")
    p.add_argument("--calib-images", type=int, default=32, help="training images for int8 calibration")
    p.add_argument("--det-ckpt", action="append", default=[], help="trained detector: int8 mAP change (repeatable)")
    p.add_argument("--seg-ckpt", action="append", default=[], help="trained segmenter: int8 mIoU change (repeatable)")
    p.add_argument("--score-thresh", type=float, default=0.001)
    p.add_argument("--nms-iou", type=float, default=0.6)
    p.add_argument("--topk", type=int, default=400)
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--json", default="runs/benchmark.json")
    p.add_argument("--quiet", action="store_true", help="hide the export tool's output")
    args = add_debug_flag(p).parse_args(argv)
    require_extra(_NO_DEPLOY, "tools/benchmark.py")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "threads": args.threads, "torch": torch.__version__,
                                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
                    "command": " ".join(["python tools/benchmark.py", *(argv if argv is not None else sys.argv[1:])])}
    if args.predictor_only:
        _predictor(args, result)
        write_json(args.json, result, indent=1)
        print(f"\nwrote {args.json}")
        return result
    if args.data_only:
        _data(args, result)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")
        return result
    with tempfile.TemporaryDirectory() as tmp:
        rows, floor, breakdown = _latency_table(args, Path(tmp))
    result.update(latency=rows, floor=floor, ratios=_ratios(rows), onnxruntime_fp32_kernels=breakdown)
    print(f"\nfp32 matmul rate on {args.threads} threads: {floor['matmul_gmadds_per_s']:.1f} G multiply-adds/s")
    print("| model | variant | input | params (M) | MAdds (B) | median ms | floor ms | × floor |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['input']}² | {r['params_m']:.2f} | {r['madds_b']:.2f} | "
              f"{r['median_ms']:.1f} | {r['floor_ms']:.1f} | {r['x_floor']:.2f} |")
    print("\nratios:\n" + "\n".join(f"  {k}: {v:.2f}" for k, v in result["ratios"].items()))
    _print_breakdown(breakdown)

    if not args.no_memory:
        det, seg = build_model("ssdlite320_mobilenet_v2").eval(), build_model("deeplabv3_mobilenet_v2").eval()
        xd, xs = torch.randn(1, 3, args.det_size, args.det_size), torch.randn(1, 3, args.seg_size, args.seg_size)
        result["memory"] = {
            f"ssdlite320_mobilenet_v2 @{args.det_size}": bench.memory_rows(det, xd),
            f"deeplabv3_mobilenet_v2 @{args.seg_size}": bench.memory_rows(seg, xs),
            f"deeplabv3_mobilenet_v2 @{args.seg_size}, BN folded": bench.memory_rows(_folded(seg), xs),
        }
        print("\npeak tensor memory of one forward, expansion in k chunks (torch.profiler allocator events):")
        for name, mrows in result["memory"].items():
            print(f"  {name}: " + ", ".join(f"k={r['chunks']} {r['peak_mib']:.1f} MiB ({-100 * r['reduction']:+.0f} %, "
                                             f"max rel. diff {r['max_rel_diff']:.1e})" for r in mrows))
    if args.train:
        candidates = bench.TRAIN_CANDIDATES if args.peers else ("ours", "ours NCHW")
        result["training_images_per_s"] = bench.isolated_training_throughput(
            candidates, args.train_batch, args.det_size, args.train_rounds, args.train_steps, threads=args.threads,
            postprocess=floor["postprocess"])
        ips = result["training_images_per_s"]
        if "peer" in ips:
            result["ratios"]["ssdlite training images/s, ours / torchvision ssdlite320_mobilenet_v3_large"] = (
                ips["ours"] / ips["peer"])
        print(f"\ntraining step, batch {args.train_batch} at {args.det_size}², images/s, each candidate in a process "
              f"of its own (ours: channels-last, as DetectionModule trains on a CPU; peer: torchvision's default "
              f"layout): " + ", ".join(f"{k} {v:.2f}" for k, v in ips.items()))
        if "peer" in ips:
            print(f"  ours / torchvision: {ips['ours'] / ips['peer']:.2f}")
    if args.data or args.data_only:
        _data(args, result)
    if args.predictor:
        _predictor(args, result)
    if args.det_ckpt or args.seg_ckpt:
        result["int8_accuracy"] = [_export_accuracy(c, args) for c in [*args.det_ckpt, *args.seg_ckpt]]
        for a in result["int8_accuracy"]:
            key = "map" if "map" in a["accuracy"]["onnx_fp32"] else "miou"
            acc = a["accuracy"]
            print(f"\n{a['checkpoint']}: {key} fp32 {acc['onnx_fp32'][key]:.4f} → int8 {acc['onnx_int8'][key]:.4f} "
                  f"({acc['onnx_int8'][key] - acc['onnx_fp32'][key]:+.4f}); ONNX Runtime speed-up "
                  f"{a['speedup']:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result, indent=1)
    print(f"\nwrote {args.json}")
    return result


def _predictor(args, result: dict) -> None:
    """``--predictor``: the network on the predictor's default CPU path vs fused eager, and predict() throughput."""
    from mnv2_vision.checkpoint import load_model
    from mnv2_vision.config import load_config
    from mnv2_vision.data.synthetic import ensure_shapes
    from mnv2_vision.perf.predictor import format_predictor_benchmark, predictor_network_benchmark, \
        predictor_throughput
    from mnv2_vision.predictor import Predictor

    if args.det_ckpt:
        cfg, model, hparams = load_model(args.det_ckpt[0])
    else:
        cfg = load_config("ssdlite_coco", ["model.num_classes=91"])
        model, hparams = build_model("ssdlite320_mobilenet_v2", num_classes=91).eval(), {}
    net = predictor_network_benchmark(model, args.det_size, runs=args.runs, block=args.block)
    real = os.environ.get("MNV2_REAL_DATA")
    folder = Path(real) / "coco128" / "val2017" if real else ensure_shapes() / "coco" / "val2017"
    images = sorted(folder.glob("*.jpg"))[: args.predictor_images]
    predictor = Predictor.from_model(model, cfg, hparams, device="cpu")
    thr = predictor_throughput(predictor, images, (1, 8), rounds=max(3, args.runs // 2),
                               score_thresh=args.predictor_score_thresh)
    thr["folder"] = str(folder)
    result["predictor"] = {"network": net, "throughput": thr,
                           "weights": args.det_ckpt[0] if args.det_ckpt else "random (ImageNet-free SSDLite, 91)"}
    print("\n" + format_predictor_benchmark(net, thr) + f"\n  (images: {folder})")


def _print_breakdown(breakdown: dict[str, list[dict]]) -> None:
    print("\nwhere ONNX Runtime fp32 spends its time (profiler kernel times per run; MAdds as executed, channels "
          "padded to ONNX Runtime's SIMD blocks):")
    print("| model | part | nodes | ms | MAdds (B) | G MAdds/s | of matmul rate | floor ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, parts in breakdown.items():
        small = [r for r in parts if r["madds"] is None and r["ms"] < 0.1]
        for r in parts:
            if r in small:
                continue
            conv = r["madds"] is not None
            print(f"| {name} | {r['part']} | {r['nodes']} | {r['ms']:.2f} | "
                  + (f"{r['madds'] / 1e9:.3f} | {r['gmadds_per_s']:.0f} | {r['of_matmul_rate']:.2f} | "
                     f"{r['floor_ms']:.2f} |" if conv else "| | | |"))
        if small:
            print(f"| {name} | {len(small)} other op types | {sum(r['nodes'] for r in small)} | "
                  f"{sum(r['ms'] for r in small):.2f} | | | | |")
        print(f"| {name} | **all kernels** | {sum(r['nodes'] for r in parts)} | {sum(r['ms'] for r in parts):.2f} "
              f"| {sum(r['madds'] or 0 for r in parts) / 1e9:.3f} | | | "
              f"{sum(r.get('floor_ms', 0) for r in parts):.2f} |")


def _folded(model: torch.nn.Module) -> torch.nn.Module:
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    return folded


def _data(args, result: dict) -> None:
    real = os.environ.get("MNV2_REAL_DATA")
    print(f"\ntiming the data pipelines ({args.data_images} images each, {args.data_rounds} interleaved rounds, one "
          f"thread{'' if real else '; set MNV2_REAL_DATA for coco128 / voc_coco'}) ...", flush=True)
    result["data_pipeline"] = data_benchmark(args.data_images, args.data_rounds, args.det_size, args.seg_size,
                                             real=real, only=args.data_filter)
    print("\ndata pipelines, one loader worker (CPU time of one thread):\n"
          + format_data_benchmark(result["data_pipeline"]))
    anns = [Path(real, sub, "annotations", "instances_val2017.json") for sub in ("coco128", "coco_masks")] if real else []
    anns = [a for a in anns if a.is_file()]
    if anns:
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            print("\n(faster-coco-eval not installed: COCO evaluation timing skipped)")
            return
        result["coco_evaluation"] = coco_eval_benchmark(anns, rounds=args.data_rounds)
        print("\nCOCO bbox evaluation of realistic results (100 detections per image), seconds:")
        for ann, r in result["coco_evaluation"].items():
            print(f"  {ann}: {r['images']} images, {r['detections']} detections: pycocotools {r['pycocotools_s']:.2f}, "
                  f"faster-coco-eval {r['faster_coco_eval_s']:.2f} ({r['speedup']:.1f}×); "
                  f"largest difference of the 12 stats {r['max_stat_diff']:.1e}")


def console() -> int:
    """The ``mnv2-benchmark`` command and ``python tools/benchmark.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
