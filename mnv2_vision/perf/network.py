"""Building blocks of ``tools/benchmark.py``: end-to-end inference callables, torchvision peers and training-step
throughput.

Every latency is "preprocessed tensor in, final result out" at batch 1: detection ends at the final boxes (the same
score threshold, per-class top-k, NMS IoU and detection count for every model), segmentation at the logits upsampled
to the input size. torchvision's detection models take their resize-and-normalise transform and post-processing
inside ``forward``; they are fed a tensor already at their input size and given our post-processing settings.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..ops.boxes import BoxCoder
from ..ops.losses import ssd_multibox_loss
from ..ops.postprocess import PostprocessSettings, postprocess_detections
from .timing import time_round_robin

__all__ = ["detection_runner", "segmentation_runner", "ort_runner", "torchvision_peers", "synthetic_targets",
           "TRAIN_CANDIDATES", "training_steps", "training_throughput", "isolated_training_throughput",
           "format_training_throughput"]


def detection_runner(model: nn.Module, x: Tensor, postprocess: PostprocessSettings,
                     fast_nms: bool = False) -> Callable[[], list[dict]]:
    """Our SSDLite end to end: network → ``postprocess_detections`` (with ``fast_nms``, its prefix NMS, the fused
    path's choice: the same detections), boxes in network-input pixels."""
    size = tuple(x.shape[-2:])
    anchors, coder = model.anchors(size), BoxCoder()

    def run() -> list[dict]:
        out = model(x)
        return postprocess_detections(out["cls_logits"], out["bbox_regression"], anchors, coder, size,
                                      [size] * x.shape[0], postprocess, prefix_nms=fast_nms)

    return run


def segmentation_runner(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    return lambda: model(x)["out"]


def ort_runner(session, x: Tensor) -> Callable[[], list[np.ndarray]]:
    feed = {"images": np.ascontiguousarray(x.numpy())}
    return lambda: session.run(None, feed)


def torchvision_peers(postprocess: PostprocessSettings, det_classes: int = 91,
                      seg_classes: int = 21) -> dict[str, nn.Module]:
    """torchvision's MobileNetV3 models with random weights (no download), in eval mode, detection post-processing
    set to ``postprocess``."""
    from torchvision.models import detection, segmentation

    ssd = detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=det_classes, score_thresh=postprocess.score_thresh,
        nms_thresh=postprocess.nms_iou, topk_candidates=postprocess.topk_candidates,
        detections_per_img=postprocess.detections_per_img)
    return {
        "ssdlite320_mobilenet_v3_large": ssd.eval(),
        "lraspp_mobilenet_v3_large": segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=seg_classes).eval(),
        "deeplabv3_mobilenet_v3_large": segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=seg_classes, aux_loss=False).eval(),
    }


def synthetic_targets(batch: int, size: int, num_classes: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """Three random boxes per image (xyxy pixels, 10 %–60 % of the side), labels in 1..num_classes-1."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        wh = (torch.rand(3, 2, generator=g) * 0.5 + 0.1) * size
        xy = torch.rand(3, 2, generator=g) * (size - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(1, num_classes, (3,), generator=g)})
    return targets


TRAIN_CANDIDATES = ("ours", "ours NCHW", "peer", "peer channels-last")


def training_steps(ours: nn.Module, peer: nn.Module | None, batch: int = 8, size: int = 320,
                   only: Sequence[str] = TRAIN_CANDIDATES) -> tuple[dict[str, Callable[[], None]], list[nn.Module]]:
    """One SGD training step (forward, loss, backward, update) per candidate in ``only``, as zero-argument callables,
    and the models they train (in train mode).

    ``"ours"`` is the step ``DetectionModule`` takes on a CPU: network and images in channels-last layout (the module
    converts both, since oneDNN's depthwise kernels train much faster on NHWC), then ``ssd_multibox_loss`` on the
    raw outputs; ``ours`` itself is converted and trained. ``"peer"`` is torchvision's SSD (it computes its loss in
    ``forward(images, targets)``) in its default layout, the one torchvision's reference training script uses. For
    transparency each model can also run in the other layout, on a copy: ``"ours NCHW"``, ``"peer channels-last"``.
    All see the same images and boxes.
    """
    import copy

    unknown = set(only) - set(TRAIN_CANDIDATES)
    if unknown:
        raise ValueError(f"unknown training candidates {sorted(unknown)}; choose from {TRAIN_CANDIDATES}")
    images = torch.randn(batch, 3, size, size)
    targets = synthetic_targets(batch, size, ours.num_classes)
    coder, anchors = BoxCoder(), ours.anchors((size, size))
    nhwc = torch.channels_last

    def step_ours(model: nn.Module, x: Tensor) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            out = model(x)
            loss = ssd_multibox_loss(out["cls_logits"], out["bbox_regression"], anchors, targets, coder)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def step_peer(model: nn.Module, x: Tensor) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        peer_images = list(x)

        def step() -> None:
            loss = sum(model(peer_images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    steps: dict[str, Callable[[], None]] = {}
    models: list[nn.Module] = []
    for name in only:
        if name.startswith("peer") and peer is None:
            continue
        if name == "ours NCHW":
            model, x, make = copy.deepcopy(ours), images, step_ours
        elif name == "ours":
            model, x, make = ours.to(memory_format=nhwc), images.contiguous(memory_format=nhwc), step_ours
        elif name == "peer":
            model, x, make = peer, images, step_peer
        else:
            model, x = copy.deepcopy(peer).to(memory_format=nhwc), images.contiguous(memory_format=nhwc)
            make = step_peer
        steps[name] = make(model.train(), x)
        models.append(model)
    return steps, models


def training_throughput(ours: nn.Module, peer: nn.Module | None, batch: int = 8, size: int = 320, rounds: int = 2,
                        block: int = 4, warmup: int = 2) -> dict[str, float]:
    """Images/s of the ``training_steps`` candidates in this process, timed by ``timing.time_round_robin``:
    ``rounds`` rounds of ``block`` consecutive steps per candidate, the first of each block untimed. The models are
    left in eval mode. ``isolated_training_throughput`` gives each candidate a process of its own (what the
    benchmark reports)."""
    steps_fn, models = training_steps(ours, peer, batch, size)
    try:
        timing = time_round_robin(steps_fn, runs=rounds, warmup=warmup, block=block)
    finally:
        for m in models:
            m.eval()
    return {k: batch / (t["median_ms"] / 1e3) for k, t in timing.items()}


def _time_one_training_candidate(name: str, batch: int, size: int, steps: int, warmup: int, threads: int,
                                 postprocess: dict[str, Any] | None) -> list[float]:
    """Seconds per step of one candidate (``python -m mnv2_vision.perf.network``), in this fresh process."""
    from ..models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = build_model("ssdlite320_mobilenet_v2")
    peer = None
    if name.startswith("peer"):
        peer = torchvision_peers(PostprocessSettings.from_dict(postprocess))["ssdlite320_mobilenet_v3_large"]
    step = training_steps(ours, peer, batch, size, only=(name,))[0][name]
    return [t / 1e3 for t in time_round_robin({name: step}, runs=steps, warmup=warmup)[name]["samples_ms"]]


def isolated_training_throughput(candidates: Sequence[str] = TRAIN_CANDIDATES, batch: int = 8, size: int = 320,
                                 rounds: int = 2, steps: int = 3, warmup: int = 2, threads: int = 2,
                                 postprocess: PostprocessSettings | None = None) -> dict[str, float]:
    """Images/s of each training candidate (``training_steps``), each run in a fresh Python process, the candidates
    taking turns for ``rounds`` rounds (median of all timed steps). The torchvision candidates (``"peer"``...) need
    ``postprocess``: their constructor takes it (a training step does not use it).

    A training job trains one model; in one process the candidates' gigabyte of activations per step and their
    weights compete for the allocator and the caches, which slowed our step by a fifth to a third in round-robin
    against the others (measured: 10.1 images/s there, 12.7 alone) and the peer's by a few per cent.
    """
    import json
    import subprocess
    import sys

    if postprocess is None and any(c.startswith("peer") for c in candidates):
        raise ValueError("the torchvision training candidates need the post-processing settings (postprocess)")
    pp = postprocess.as_dict() if postprocess is not None else None
    samples: dict[str, list[float]] = {c: [] for c in candidates}
    for _ in range(rounds):
        for c in candidates:
            cmd = [sys.executable, "-m", "mnv2_vision.perf.network", json.dumps(
                {"name": c, "batch": batch, "size": size, "steps": steps, "warmup": warmup, "threads": threads,
                 "postprocess": pp})]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            samples[c] += json.loads(out.stdout.strip().splitlines()[-1])
    return {c: batch / float(np.median(v)) for c, v in samples.items()}


def format_training_throughput(ips: dict[str, float], batch: int, size: int) -> str:
    """``isolated_training_throughput``'s images/s as printed by ``tools/benchmark.py``."""
    text = (f"training step, batch {batch} at {size}², images/s, each candidate in a process of its own (ours: "
            f"channels-last, as DetectionModule trains on a CPU; peer: torchvision's default layout): "
            + ", ".join(f"{k} {v:.2f}" for k, v in ips.items()))
    if "peer" in ips:
        text += f"\n  ours / torchvision: {ips['ours'] / ips['peer']:.2f}"
    return text


if __name__ == "__main__":  # one training candidate in a fresh process, for isolated_training_throughput
    import json
    import sys

    print(json.dumps(_time_one_training_candidate(**json.loads(sys.argv[1]))))
