"""CPU benchmark: params, MAdds and median batch-1 latency of SSDLite-MobileNetV2 (320²) and DeepLabv3-MobileNetV2
lite (513²) as eager PyTorch, fused PyTorch, ONNX Runtime fp32 and int8, against the machine's compute floor.

    python tools/benchmark.py                                  # our models, floor, memory-efficient mode
    python tools/benchmark.py --peers --train --data           # + torchvision peers, training step, data pipeline
    python tools/benchmark.py --peers --det-ckpt D.ckpt --seg-ckpt S.ckpt --json runs/benchmark.json
    MNV2_REAL_DATA=../shared/data python tools/benchmark.py --data-only  # data pipelines alone (perf/data.py)
    python tools/benchmark.py --multitask                      # + the SSDLite + DeepLab pair on one backbone pass
    python tools/benchmark.py --runtimes-only                  # per model: PyTorch CPU graph, ONNX Runtime,
                                                               # OpenVINO, LiteRT, fp32 and int8 (perf/runtimes.py)

Every model runs in this process on ``--threads`` threads (PyTorch and ONNX Runtime alike), with random weights
(the networks' timing does not depend on them; detection's post-processing does, and random scores put every
class's top-k above the 0.001 threshold: its worst case, for every model alike) and the same detection
post-processing settings (``--score-thresh`` etc.). The candidates are timed round-robin in blocks of ``--block``
calls after warm-up, so load from other processes hits all of them alike while each timed call finds the cores and
caches as a deployment running one model would; training-step candidates each run in a process of their own. The
compute floor of a model is its MAdds divided by the multiply-add rate of a large fp32 matrix product on the same
threads.
ONNX Runtime's profiler then splits each fp32 model's time into convolution kinds (1×1, depthwise, other; each with
its multiply-add rate as a fraction of the matrix product's) and the other operators, which says where the gap to
the floor is.
``--det-ckpt/--seg-ckpt`` add the int8 accuracy change of trained checkpoints on their validation sets (via
``tools/export.py --int8``). ``--data`` adds the data pipelines' images/s per loader worker with a per-stage
breakdown, ours against the albumentations pipelines they replace and torchvision's v2 detection reference
(``mnv2_vision/perf/data.py``). Results go to stdout and ``--json``.
"""
from __future__ import annotations

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
from mnv2_vision.config import EvalCfg
from mnv2_vision.files import write_json
from mnv2_vision.models import build_model
from mnv2_vision.ops.postprocess import PostprocessSettings
from mnv2_vision.perf import network
from mnv2_vision.perf.coco_eval import coco_eval_benchmark, format_coco_eval_benchmark
from mnv2_vision.perf.data import data_benchmark, format_data_benchmark
from mnv2_vision.perf.memory import format_memory_table, memory_table

try:  # the deploy extra (onnx, onnxruntime): without it main() names the install command instead of a traceback
    import onnxruntime

    from mnv2_vision.perf import latency
    _NO_DEPLOY: ImportError | None = None
except ImportError as e:
    _NO_DEPLOY = e


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
                   help="data pipelines: images/s per loader worker, ours vs before vs torchvision's reference, by "
                        "stage (real images too when MNV2_REAL_DATA is set)")
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
    p.add_argument("--video", action="store_true",
                   help="the predictor on a video: Predictor.stream (decoding in a thread) vs predict() on the same "
                        "frames decoded beforehand, frames/s side by side (needs the video extra)")
    p.add_argument("--video-only", action="store_true", help="only the video table")
    p.add_argument("--video-rounds", type=int, default=7, help="interleaved rounds over the video (median)")
    p.add_argument("--video-path", default=None,
                   help="the video of --video (default: a generated 640×480 moving-shapes clip, 150 frames at 30 fps: "
                        "long enough that opening the file and the first frame, which nothing can hide, weigh little)")
    p.add_argument("--runtimes", action="store_true",
                   help="one table per model (SSDLite, DeepLab-lite, the pair): the PyTorch CPU graph and each export "
                        "format in fp32 and int8, networks on their raw outputs, post-processing in its own column")
    p.add_argument("--runtimes-only", action="store_true", help="only the runtime tables")
    p.add_argument("--formats", default="onnxruntime,openvino,litert",
                   help="export formats of the runtime tables (perf/formats.py FORMATS); missing packages are skipped "
                        "with the extra to install")
    p.add_argument("--runtime-models", default="ssdlite,deeplab,pair", help="models of the runtime tables")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the matrices measuring the fp32 peak")
    p.add_argument("--no-memory", action="store_true", help="skip the memory-efficient-mode table")
    p.add_argument("--calib-images", type=int, default=32, help="training images for int8 calibration")
    p.add_argument("--det-ckpt", action="append", default=[], help="trained detector: int8 mAP change (repeatable)")
    p.add_argument("--seg-ckpt", action="append", default=[], help="trained segmenter: int8 mIoU change (repeatable)")
    p.add_argument("--score-thresh", type=float, default=EvalCfg.score_thresh)
    p.add_argument("--nms-iou", type=float, default=EvalCfg.nms_iou)
    p.add_argument("--topk", type=int, default=EvalCfg.topk_candidates)
    p.add_argument("--detections", type=int, default=EvalCfg.detections_per_img)
    p.add_argument("--json", default="runs/benchmark.json")
    p.add_argument("--quiet", action="store_true", help="hide the export tool's output")
    args = add_debug_flag(p).parse_args(argv)
    require_extra(_NO_DEPLOY, "tools/benchmark.py")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), **_cpu(), "cores": os.cpu_count(),
                                "threads": args.threads, "torch": torch.__version__,
                                "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
                    "command": " ".join(["python tools/benchmark.py", *(argv if argv is not None else sys.argv[1:])])}
    if args.runtimes_only:
        _runtimes(args, result)
        return _written(args.json, result)
    if args.predictor_only:
        _predictor(args, result)
        return _written(args.json, result)
    if args.data_only:
        _data(args, result)
        return _written(args.json, result)
    if args.video_only:
        _video(args, result)
        return _written(args.json, result)
    pp = PostprocessSettings(args.score_thresh, args.nms_iou, args.topk, args.detections)
    _latency(args, pp, result)
    if not args.no_memory:
        result["memory"] = memory_table(args.det_size, args.seg_size)
        print("\n" + format_memory_table(result["memory"]))
    if args.train:
        candidates = network.TRAIN_CANDIDATES if args.peers else ("ours", "ours NCHW")
        ips = result["training_images_per_s"] = network.isolated_training_throughput(
            candidates, args.train_batch, args.det_size, args.train_rounds, args.train_steps, threads=args.threads,
            postprocess=pp)
        if "peer" in ips:
            result["ratios"]["ssdlite training images/s, ours / torchvision ssdlite320_mobilenet_v3_large"] = (
                ips["ours"] / ips["peer"])
        print("\n" + network.format_training_throughput(ips, args.train_batch, args.det_size))
    if args.data:
        _data(args, result)
    if args.predictor:
        _predictor(args, result)
    if args.video:
        _video(args, result)
    if args.runtimes:
        _runtimes(args, result)
    if args.det_ckpt or args.seg_ckpt:
        _int8_accuracy(args, result)
    return _written(args.json, result)


def _cpu() -> dict[str, object]:
    """The CPU's model name and the instruction-set flags that decide fp32 / int8 kernels (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"cpu_model": fields.get("model name", ""),
            "cpu_flags": [f for f in wanted if f in fields.get("flags", "").split()]}


def _runtimes(args, result: dict) -> None:
    """``--runtimes``: one table per model, the PyTorch CPU graph and every export format (``perf/runtimes.py``)."""
    from mnv2_vision.perf.runtimes import format_runtime_tables, runtime_tables

    pp = PostprocessSettings(args.score_thresh, args.nms_iou, args.topk, args.detections)
    formats = [f for f in args.formats.split(",") if f]
    models = [m for m in args.runtime_models.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        tables = runtime_tables(models, args.det_size, args.seg_size, formats, pp, args.threads, args.calib_images,
                                args.runs, args.warmup, args.block, args.matmul_size, Path(tmp))
    result["runtimes"] = tables
    result["machine"].update({name: _version(name) for name in tables["formats"]})
    m = result["machine"]
    print(f"\nruntimes on {m.get('cpu_model', m['cpu'])} ({', '.join(m.get('cpu_flags', []))}), "
          f"{args.threads} threads:" + format_runtime_tables(tables))


def _version(module: str) -> str:
    import importlib.metadata

    dist = {"litert": "ai-edge-litert", "onnxruntime": "onnxruntime", "openvino": "openvino"}[module]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _written(path: str, result: dict) -> dict:
    write_json(path, result, indent=1)
    print(f"\nwrote {path}")
    return result


def _latency(args, pp: PostprocessSettings, result: dict) -> None:
    """The latency table (``perf/latency.py``): our models, ``--multitask``/``--mt-ckpt``'s pair, ``--peers``."""
    with tempfile.TemporaryDirectory() as tmp:
        groups, fp32 = latency.model_groups(pp, args.det_size, args.seg_size, args.calib_images, args.threads,
                                            Path(tmp))
        if args.multitask or args.mt_ckpt:
            pair, det, seg, size, tag = _multitask_models(args)
            groups.update(latency.multitask_groups(pair, det, seg, size, tag, pp, args.threads, Path(tmp),
                                                   with_detector=bool(args.mt_ckpt)))
        if args.peers:
            groups.update(latency.peer_groups(pp, groups[latency.DETECTOR][0], groups[latency.SEGMENTER][0]))
        runners = sum(len(variants) for _, _, variants in groups.values())
        print(f"timing {runners} candidates round-robin: {args.runs} rounds of {args.block} calls each (the first "
              f"untimed when > 1) after {args.warmup} warm-up rounds ...", flush=True)
        rows, rate = latency.time_groups(groups, args.runs, args.warmup, args.block, args.matmul_size)
        breakdown = latency.kernel_breakdowns(fp32, rate, runs=args.runs * max(1, args.block - 1),
                                              warmup=args.warmup, threads=args.threads)
    result.update(latency=rows, floor={"matmul_gmadds_per_s": rate / 1e9, "postprocess": pp.as_dict()},
                  ratios=latency.ratios(rows), onnxruntime_fp32_kernels=breakdown)
    print(f"\nfp32 matmul rate on {args.threads} threads: {rate / 1e9:.1f} G multiply-adds/s")
    print(latency.format_latency_table(rows))
    print("\nratios:\n" + "\n".join(f"  {k}: {v:.2f}" for k, v in result["ratios"].items()))
    print("\n" + latency.format_kernel_breakdown(breakdown))


def _multitask_models(args) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, int, str]:
    """The pair and the two single-task models it replaces, and the pair's input size and row tag: random α = 1
    models at ``--det-size`` (91 COCO / 21 VOC classes), or ``--mt-ckpt``'s network next to single-task models of its
    width and class counts at its training size."""
    if not args.mt_ckpt:
        pair = build_model(latency.MULTITASK).eval()
        det, seg = build_model("ssdlite320_mobilenet_v2").eval(), build_model("deeplabv3_mobilenet_v2").eval()
        return pair, det, seg, args.det_size, f" @{args.det_size}"
    from mnv2_vision.checkpoint import load_model

    cfg, pair, _ = load_model(args.mt_ckpt)
    size, m = cfg.data.image_size, cfg.model
    single = dict(width_mult=m.width_mult)
    det = build_model("ssdlite320_mobilenet_v2", num_classes=m.num_classes, **single).eval()
    seg = build_model("deeplabv3_mobilenet_v2", num_classes=m.seg_num_classes, **single).eval()
    return pair, det, seg, size, f" @{size} ({Path(args.mt_ckpt).name})"


def _int8_accuracy(args, result: dict) -> None:
    """``--det-ckpt/--seg-ckpt``: each checkpoint through ``tools/export.py --int8`` (its own process), which scores
    the fp32 and int8 exports on the validation split (``perf/accuracy.py``)."""
    result["int8_accuracy"] = []
    for ckpt in [*args.det_ckpt, *args.seg_ckpt]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "mnv2_vision.commands.export", "--ckpt", ckpt, "--out", tmp, "--int8",
                   "--calib-images", str(args.calib_images), "--threads", str(args.threads),
                   "--runs", str(args.runs * max(1, args.block - 1))]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
            report = json.loads((Path(tmp) / "export_report.json").read_text())
        result["int8_accuracy"].append({"checkpoint": ckpt, "accuracy": report["accuracy"],
                                        "latency_ms": report["latency_ms"], "speedup": report["speedup"]})
    for a in result["int8_accuracy"]:
        key = "map" if "map" in a["accuracy"]["onnx_fp32"] else "miou"
        acc = a["accuracy"]
        print(f"\n{a['checkpoint']}: {key} fp32 {acc['onnx_fp32'][key]:.4f} → int8 {acc['onnx_int8'][key]:.4f} "
              f"({acc['onnx_int8'][key] - acc['onnx_fp32'][key]:+.4f}); ONNX Runtime speed-up {a['speedup']:.2f}x")

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


def _video(args, result: dict) -> None:
    """``--video``: Predictor.stream on a video against predict() on its frames decoded beforehand."""
    from mnv2_vision.checkpoint import load_model
    from mnv2_vision.config import load_config
    from mnv2_vision.data.synthetic_video import render_moving_shapes, write_shapes_video
    from mnv2_vision.perf.predictor import format_video_benchmark, video_throughput
    from mnv2_vision.predictor import Predictor

    if args.det_ckpt:
        cfg, model, hparams = load_model(args.det_ckpt[0])
    else:
        cfg = load_config("ssdlite_coco", ["model.num_classes=91"])
        model, hparams = build_model("ssdlite320_mobilenet_v2", num_classes=91).eval(), {}
    predictor = Predictor.from_model(model, cfg, hparams, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video_path) if args.video_path else write_shapes_video(
            Path(tmp) / "shapes.mp4", render_moving_shapes(0, 150, (480, 640), num_objects=4), fps=30)
        v = video_throughput(predictor, video, rounds=args.video_rounds, score_thresh=args.predictor_score_thresh)
    v["weights"] = args.det_ckpt[0] if args.det_ckpt else "random (ImageNet-free SSDLite, 91)"
    result["video"] = v
    print("\n" + format_video_benchmark(v))


def _data(args, result: dict) -> None:
    real = os.environ.get("MNV2_REAL_DATA")
    print(f"\ntiming the data pipelines ({args.data_images} images each, {args.data_rounds} interleaved rounds, one "
          f"thread{'' if real else '; set MNV2_REAL_DATA for coco128 / voc_coco'}) ...", flush=True)
    result["data_pipeline"] = data_benchmark(args.data_images, args.data_rounds, args.det_size, args.seg_size,
                                             real=real, only=args.data_filter)
    print("\ndata pipelines, one loader worker (CPU time of one thread):\n"
          + format_data_benchmark(result["data_pipeline"]))
    subsets = ("coco128", "coco_masks") if real else ()
    anns = [Path(real, sub, "annotations", "instances_val2017.json") for sub in subsets]
    anns = [a for a in anns if a.is_file()]
    if anns:
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            print("\n(faster-coco-eval not installed: COCO evaluation timing skipped)")
            return
        result["coco_evaluation"] = coco_eval_benchmark(anns, rounds=args.data_rounds)
        print("\n" + format_coco_eval_benchmark(result["coco_evaluation"]))


def console() -> int:
    """The ``mnv2-benchmark`` command and ``python tools/benchmark.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
