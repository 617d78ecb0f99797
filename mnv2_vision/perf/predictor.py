"""``tools/benchmark.py --predictor``: the predictor's default CPU path against the fused eager path, and batched
against one-by-one prediction on a folder of real images.

- Network: SSDLite at 320², batch 1 — eager, ``fuse_for_inference`` (the fused eager path), the frozen TorchScript
  of the BN-folded model (``deploy.fuse.freeze_folded``: the popular MobileNetV2-SSDLite's recipe) and the
  predictor's default CPU path (``deploy.fuse.freeze_for_cpu``: fused, prepacked oneDNN convolutions in a frozen
  graph), timed round-robin in one run, with each one's largest difference from the eager outputs.
- End to end: ``Predictor.predict`` on the same images with ``batch_size=1`` and ``batch_size=8`` (decoding,
  preprocessing, network and post-processing), rounds interleaved; images per second and the ratio. On the CPU
  graph ``batch_size=8`` runs single-image streams, one per thread (``Predictor._detect_streams``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .timing import time_round_robin

__all__ = ["predictor_network_benchmark", "predictor_throughput", "format_predictor_benchmark", "video_throughput",
           "format_video_benchmark"]


@torch.no_grad()
def predictor_network_benchmark(model: torch.nn.Module, size: int = 320, runs: int = 10, block: int = 11
                                ) -> dict[str, Any]:
    """Median ms of eager / fused / frozen folded / the predictor's frozen graph on one (1, 3, size, size) input, and
    each one's max abs difference from eager (all outputs)."""
    from ..deploy.fuse import freeze_folded, freeze_for_cpu, fuse_for_inference

    model = model.eval()
    x = torch.randn(1, 3, size, size)
    fused = fuse_for_inference(model)
    folded = freeze_folded(model, x)
    frozen = freeze_for_cpu(model, x)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runners = {"eager": lambda: model(x), "fused eager (fuse_for_inference)": lambda: fused(x),
               "frozen BN-folded graph (peer recipe)": lambda: folded(x_cl),
               "predictor default (frozen graph)": lambda: frozen(x_cl)}
    ref = model(x)
    diffs = {k: max(float((f()[n] - ref[n]).abs().max()) for n in ref) for k, f in runners.items()}
    timing = time_round_robin(runners, runs=runs, block=block)
    ms = {k: t["median_ms"] for k, t in timing.items()}
    return {"input": [1, 3, size, size], "median_ms": ms, "max_abs_diff_vs_eager": diffs,
            "predictor / fused": ms["predictor default (frozen graph)"] / ms["fused eager (fuse_for_inference)"],
            "predictor / frozen BN-folded": (ms["predictor default (frozen graph)"]
                                             / ms["frozen BN-folded graph (peer recipe)"])}


def predictor_throughput(predictor: Any, images: Sequence[Path], batch_sizes: Sequence[int] = (1, 8),
                         rounds: int = 3, score_thresh: float | None = None) -> dict[str, Any]:
    """Images per second of ``predictor.predict(images, batch_size=b)`` for each b, rounds interleaved (medians)."""
    import time

    for b in batch_sizes:  # warm-up: the frozen graph, the stream threads, caches
        predictor.predict(list(images[:b]), batch_size=b, score_thresh=score_thresh)
    if len(images) % max(batch_sizes):
        predictor.predict(list(images[: len(images) % max(batch_sizes)]), batch_size=max(batch_sizes),
                          score_thresh=score_thresh)
    seconds: dict[int, list[float]] = {b: [] for b in batch_sizes}
    for _ in range(rounds):
        for b in batch_sizes:
            t0 = time.perf_counter()
            predictor.predict(list(images), batch_size=b, score_thresh=score_thresh)
            seconds[b].append(time.perf_counter() - t0)
    med = {b: sorted(v)[len(v) // 2] for b, v in seconds.items()}
    ips = {f"batch_size={b}": len(images) / med[b] for b in batch_sizes}
    lo, hi = min(batch_sizes), max(batch_sizes)
    return {"images": len(images), "images_per_s": ips, "rounds": rounds, "score_thresh": score_thresh,
            f"batch_size={hi} / batch_size={lo}": med[lo] / med[hi]}


def format_predictor_benchmark(net: dict[str, Any], thr: dict[str, Any] | None) -> str:
    lines = [f"Predictor, SSDLite network at {net['input'][-1]}² batch 1 (median ms, max |diff| vs eager):"]
    for k, ms in net["median_ms"].items():
        lines.append(f"  {k:<38} {ms:8.2f} ms   {net['max_abs_diff_vs_eager'][k]:.1e}")
    lines.append(f"  predictor default / fused eager: {net['predictor / fused']:.2f}")
    lines.append(f"  predictor default / frozen BN-folded graph: {net['predictor / frozen BN-folded']:.2f}")
    if thr is not None:
        lines.append(f"Predictor end to end on {thr['images']} images (decode + network + post-processing):")
        for k, v in thr["images_per_s"].items():
            lines.append(f"  {k:<14} {v:7.1f} images/s")
        key = next(k for k in thr if " / " in k)
        lines.append(f"  {key}: {thr[key]:.2f}")
    return "\n".join(lines)


def video_throughput(predictor: Any, video: Path, rounds: int = 3, score_thresh: float | None = None
                     ) -> dict[str, Any]:
    """Frames per second of ``predictor.stream(video)`` (decoding in its thread), of ``predictor.predict(frame)`` on
    each of the same frames decoded beforehand, and of the decoder alone; rounds interleaved.

    Two figures each: from the median time per frame (for the stream, the time between two results, waiting for the
    decoder included), which a stall of the machine during a few frames does not move, and from the median time of
    a whole pass. The ratio stream / pre-decoded is given for both."""
    import statistics
    import time

    from ..data.io.video import read_frames

    frames = [f.image for f in read_frames(video)]
    for image in frames[:3]:  # warm-up: the frozen graph, caches
        predictor.predict(image, score_thresh=score_thresh)

    def intervals(items: Any) -> list[float]:
        out, t0 = [], time.perf_counter()
        for _ in items:
            t1 = time.perf_counter()
            out.append(t1 - t0)
            t0 = t1
        return out

    def predecoded() -> Any:
        for image in frames:
            yield predictor.predict(image, score_thresh=score_thresh)

    runners = {"stream(video)": lambda: intervals(predictor.stream(video, score_thresh=score_thresh)),
               "predict() on pre-decoded frames": lambda: intervals(predecoded()),
               "decoding alone": lambda: intervals(read_frames(video))}
    per_frame: dict[str, list[float]] = {k: [] for k in runners}
    passes: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            times = run()
            per_frame[k] += times
            passes[k].append(sum(times))
    fps = {k: 1.0 / statistics.median(v) for k, v in per_frame.items()}
    fps_pass = {k: len(frames) / statistics.median(v) for k, v in passes.items()}
    key, ref = "stream(video)", "predict() on pre-decoded frames"
    return {"video": str(video), "frames": len(frames), "size": list(frames[0].shape[:2]), "rounds": rounds,
            "score_thresh": score_thresh, "frames_per_s": fps, "frames_per_s_whole_pass": fps_pass,
            "stream / pre-decoded": fps[key] / fps[ref],
            "stream / pre-decoded, whole pass": fps_pass[key] / fps_pass[ref]}


def format_video_benchmark(v: dict[str, Any]) -> str:
    lines = [f"Video: {v['frames']} frames of {v['size'][1]}×{v['size'][0]} ({v['video']}), {v['rounds']} "
             "interleaved rounds:"]
    lines.append(f"  {'':<34} {'median frame':>14} {'whole pass':>12}")
    for k, fps in v["frames_per_s"].items():
        lines.append(f"  {k:<34} {fps:8.1f} fps   {v['frames_per_s_whole_pass'][k]:8.1f} fps")
    lines.append(f"  stream / pre-decoded: {v['stream / pre-decoded']:.2f} by the median frame, "
                 f"{v['stream / pre-decoded, whole pass']:.2f} by the whole pass (target ≥ 0.9)")
    return "\n".join(lines)
