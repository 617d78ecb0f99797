"""Use a trained model from Python: ``mnv2_vision.load(path).predict(inputs)``.

    import mnv2_vision
    model = mnv2_vision.load("runs/ssdlite_coco/ckpt/best.ckpt")     # or model.pt (+ its run folder), model.onnx
    [result] = model.predict("photo.jpg")                             # result["boxes"], ["scores"], ["labels"], ...
    results = model.predict(["a.jpg", "photos/", pil_image, rgb_array, tensor], batch_size=8)
    for r in model.stream("clip.mp4", track=True):                   # or 0 (a camera), "rtsp://...": a generator
        r["frame"], r["time"], r["track_ids"], r["image"]             # per frame: predict()'s result and more

Outputs follow torchvision's conventions, in the pixels of each original image (after its EXIF orientation):
detection ``boxes`` (D, 4) float xyxy, ``scores`` (D,), ``labels`` (D,) int64 (1..C, 0 is background), plus ``names``
and COCO ``category_ids``; segmentation a ``mask`` (H, W) int64 of label indices (and ``probs`` (K, H, W) on
request); a multi-task checkpoint (``tools/train_multitask.py``) both, from one forward pass. Every result also
carries ``size`` (H, W) and, for a file, its ``path``.

Inputs are preprocessed exactly as in evaluation (``data.io.images.load_rgb``'s conversions — EXIF orientation,
grayscale / RGBA / palette / CMYK / 16-bit to RGB — then the evaluation resize and normalisation stored in the
checkpoint's config or the exported file's metadata), so ``predict`` gives ``tools/eval_det.py``'s detections.
Backends: PyTorch for checkpoints and ``model.pt`` (fused, and a frozen graph on CPU; autocast on GPU); files written
by ``tools/export.py`` (``.onnx``; ``.tflite`` and OpenVINO ``.xml`` where their backends are installed) run through
``mnv2_runtime``, the runtime without PyTorch, so their pre- and post-processing exist once: its numpy results become
the tensors above, and its errors this package's (``CheckpointError`` for a bad file).
"""
from __future__ import annotations

import itertools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mnv2_runtime
import numpy as np
import torch
from mnv2_runtime.backends import FORMATS
from mnv2_runtime.images import IMAGE_SUFFIXES, expand_inputs
from mnv2_runtime.model import check_score_thresh
from mnv2_runtime.preprocess import segmentation_input
from torch import Tensor, nn

from .data.io.decode import EncodedImage, to_rgb
from .data.io.video import describe_source, is_video_source, read_frames
from .errors import CheckpointError, ModelError, UserError
from .ops.postprocess import PostprocessSettings, postprocess_detections

# IMAGE_SUFFIXES, expand_inputs (a folder → its images, a 4-D tensor or array → its images) and check_score_thresh
# are the runtime's, shared so that both read inputs alike
__all__ = ["load", "Predictor", "IMAGE_SUFFIXES", "expand_inputs", "check_score_thresh"]

# the mnv2_vision extra that installs each exported format's runtime (mnv2_runtime names its own extras)
_EXTRAS = {"onnx": "deploy", "litert": "litert", "openvino": "openvino"}


def _batches(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


# ---------------------------------------------------------------------------------------------- what a model needs
@dataclass
class _Spec:
    """What preprocessing and post-processing need, from a checkpoint's config or an ONNX file's metadata."""

    task: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    names: list[str]  # index = label (0 = background)
    category_ids: list[int]  # label i ↔ category_ids[i - 1] (detection)
    postprocess: PostprocessSettings | None  # detection and multitask
    mask_names: list[str]  # segmentation label i's name (segmentation: = names; multitask: the mask head's)


def _spec_from_config(cfg: Any, hparams: dict[str, Any]) -> _Spec:
    from .data.classes import segmentation_class_names

    pp = None if cfg.task == "segmentation" else PostprocessSettings.from_eval(cfg.eval)
    ids = [int(c) for c in hparams.get("category_ids", [])]
    mask_names: list[str] = []
    if cfg.task == "multitask":
        from .data.classes import multitask_seg_class_names

        mask_names = list(hparams.get("class_names") or multitask_seg_class_names(cfg))
    if cfg.task == "segmentation":
        names = list(hparams.get("class_names") or segmentation_class_names(cfg))
        mask_names = names
    elif ids:
        names = ["background", *map(str, hparams.get("category_names", ids))]
    else:
        k = cfg.model.num_classes or 1
        names = ["background", *(f"class{i}" for i in range(1, k))]
        ids = list(range(1, k))
    return _Spec(cfg.task, cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std), names, ids, pp, mask_names)


def _spec_from_metadata(meta: Mapping[str, Any]) -> _Spec:
    """The spec of an exported model's metadata, checked by ``mnv2_runtime.metadata.validate_metadata``."""
    names = list(meta["class_names"])
    mask_names = list(meta.get("seg_class_names") or (names if meta["task"] == "segmentation" else []))
    detection = meta["task"] != "segmentation"
    return _Spec(meta["task"], int(meta["input_size"][0]), tuple(float(v) for v in meta["mean"]),
                 tuple(float(v) for v in meta["std"]), names, list(meta["category_ids"]) if detection else [],
                 PostprocessSettings.from_dict(meta["postprocess"]) if detection else None, mask_names)


# ---------------------------------------------------------------------------------------------- backends
class _TorchBackend:
    """The network in PyTorch. On CPU (``fuse``) a frozen TorchScript graph per input shape
    (``deploy.fuse.freeze_for_cpu``: fused oneDNN convolutions with prepacked weights, channels-last; detection runs
    it on one image at a time, so one graph serves every batch size; segmentation, whose input is the whole image,
    once a shape has recurred ``FREEZE_AFTER`` times), else the fused eager model (``fuse_for_inference``); on GPU
    autocast (bf16 where supported, else fp16)."""

    # Freezing DeepLab-lite for one shape costs about as much as 12 fused eager passes at that shape (measured at
    # 513² and 375×500: 1.07 / 0.6 s against 85 / 60 ms per pass, loaded machine) and the graph then saves ~10 % per
    # pass: freezing once a shape has run this often eagerly bounds the cost for shapes that stop recurring to about
    # twice the eager time spent on them (the ski-rental rule), while a camera's or a resized folder's one shape gets
    # the graph after a few images.
    FREEZE_AFTER = 12

    def __init__(self, model: nn.Module, device: torch.device, fuse: bool, precision: str) -> None:
        self.device = device
        self.raw = model.eval().to(device)
        self.net: nn.Module = self.raw
        self.fuse = fuse
        self.frozen: dict[tuple[int, ...], Any] = {}
        self.seen: dict[tuple[int, ...], int] = {}  # eager calls per input shape without fixed_shape (segmentation)
        if fuse:
            from .deploy.fuse import fuse_for_inference

            self.net = fuse_for_inference(self.raw, channels_last=True)
        if precision == "auto":
            precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
        self.precision = precision
        self.freeze = fuse and device.type == "cpu" and precision == "fp32"
        self._lock = threading.Lock()  # one graph built per shape, even with several streams asking at once

    def anchors(self, size: tuple[int, int]) -> Tensor:
        return self.raw.anchors(size, self.device)

    def _graph(self, x: Tensor) -> Any:
        """The frozen graph for ``x``'s shape and the current intra-op thread count, or ``None`` where tracing is not
        available (the fused eager model runs instead; a PyTorch without TorchScript, say)."""
        # oneDNN packs weights for the thread count it runs on: a graph packed for 2 threads runs ~4× slower on 1
        key = (*x.shape, torch.get_num_threads())
        with self._lock:
            if key not in self.frozen:
                from .deploy.fuse import freeze_for_cpu

                try:
                    self.frozen[key] = freeze_for_cpu(self.raw, x)
                except Exception as e:  # noqa: BLE001 - any tracing failure: the eager path gives the same numbers
                    warnings.warn(f"no frozen graph for {key[:-1]} ({type(e).__name__}: {e}); using the fused eager "
                                  "model", stacklevel=3)
                    self.frozen[key] = None
        return self.frozen[key]

    def _recurs(self, x: Tensor) -> bool:
        """Whether ``x``'s shape has been seen ``FREEZE_AFTER`` times (counting this call)."""
        key = tuple(x.shape)
        with self._lock:
            self.seen[key] = self.seen.get(key, 0) + 1
            return self.seen[key] >= self.FREEZE_AFTER

    def __call__(self, x: Tensor, fixed_shape: bool = False) -> dict[str, Tensor]:
        """``fixed_shape``: inputs of this shape recur (detection), so a frozen graph for it pays off at once;
        otherwise (segmentation) the graph is built once the shape has recurred (``FREEZE_AFTER``)."""
        x = x.to(self.device)
        if self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(self.device.type, dtype=dtype), torch.inference_mode():
                return {k: v.float() for k, v in self.net(x).items()}
        graph = self._graph(x) if self.freeze and (fixed_shape or self._recurs(x)) else None
        if graph is not None:
            with torch.no_grad():
                return graph(x.contiguous(memory_format=torch.channels_last))
        with torch.inference_mode():
            return self.net(x)


@contextmanager
def _runtime_errors() -> Iterator[None]:
    """``mnv2_runtime``'s errors as this package's: a bad model file is a ``CheckpointError`` (the same line), a
    missing inference package a ``UserError`` naming the ``mnv2_vision`` extra that installs it."""
    try:
        yield
    except CheckpointError:
        raise
    except ModelError as e:
        raise CheckpointError(str(e)) from None
    except mnv2_runtime.MissingRuntime as e:
        raise UserError(f"running {e.path} needs {e.package}, which is not installed: pip install "
                        f"'mnv2_vision[{_EXTRAS.get(e.format, e.format)}]'") from None


def _runtime_result(r: dict[str, Any]) -> dict[str, Any]:
    """A result of ``mnv2_runtime`` with this predictor's tensors."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in r.items()}


# ---------------------------------------------------------------------------------------------- predictor
class Predictor:
    """A trained model ready for images (made by ``load``).

    Attributes:
        task: ``"detection"``, ``"segmentation"`` or ``"multitask"`` (boxes and a mask from one pass).
        names: class names by label (0 = background); of the boxes for a multi-task model.
        mask_names: the names of the mask's labels (segmentation and multi-task).
        category_ids: detection: the COCO category id of label ``i`` is ``category_ids[i - 1]``.
        device: where the network runs.
    """

    def __init__(self, backend: _TorchBackend | mnv2_runtime.Model, spec: _Spec, device: torch.device,
                 source: str) -> None:
        self.backend, self.spec, self.device, self.source = backend, spec, device, source
        self.task, self.names, self.category_ids = spec.task, spec.names, spec.category_ids
        self.mask_names = spec.mask_names
        self._exported = isinstance(backend, mnv2_runtime.Model)
        if self.task in ("detection", "multitask") and not self._exported:
            from .data.detection.pipeline import fast_detection_transform
            from .ops.boxes import BoxCoder

            # the evaluation preset the data module (so eval_det) runs
            self._det_tf = fast_detection_transform("none", False, spec.image_size, spec.mean, spec.std)
            self._coder = BoxCoder()
        self._pools: dict[int, ThreadPoolExecutor] = {}

    @classmethod
    def from_model(cls, model: nn.Module, cfg: Any, hparams: dict[str, Any] | None = None, *,
                   device: str | torch.device | None = None, fuse: bool | None = None, precision: str = "auto",
                   source: str = "a model in memory") -> "Predictor":
        """A predictor for a model in memory and its config (``hparams``: the label map, as in a checkpoint)."""
        dev = _device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend = _TorchBackend(model, dev, fuse if fuse is not None else dev.type == "cpu", precision)
        return cls(backend, _spec_from_config(cfg, hparams or {}), dev, source)

    def __repr__(self) -> str:
        backend = getattr(self.backend.backend, "name", "mnv2_runtime") if self._exported else "pytorch"
        return (f"Predictor({self.task}, {len(self.names) - 1} classes, {backend} on {self.device}, "
                f"source={self.source})")

    # ------------------------------------------------------------------ preprocessing
    def _det_input(self, item: Any) -> tuple[Tensor, tuple[int, int]]:
        """(network input, original (H, W)). A file goes through the evaluation pipeline exactly as the data module
        runs it (header first, a decode at the scale the resize needs), so the detections equal eval_det's."""
        none = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
        if isinstance(item, (str, os.PathLike)):
            encoded = EncodedImage(item)
            return self._det_tf.from_file(encoded, *none)[0], tuple(encoded.size)
        image = to_rgb(item)
        return self._det_tf(image, *none)[0], tuple(image.shape[:2])

    def memory_needed(self, size: tuple[int, int]) -> int:
        """A lower bound of the bytes predicting one image of ``size`` (H, W) holds at once: its decoded pixels, and
        for a mask the per-class scores at the image's full size (segmentation: with the network input; the network's
        own activations come on top: the shapes DeepLabv3 with 21 classes measured ~400 B/px in all, against the
        191 counted here). A detector runs at its input size, so its decoded image is what grows with the image."""
        px = int(size[0]) * int(size[1])
        k = len(self.mask_names)
        need = 3 * px  # the decoded RGB image
        if self.task == "segmentation":
            need += px * (12 + 8 * k + 8)  # float input, logits and their softmax, the int64 label map
        elif self.task == "multitask":
            need += px * (4 * k + 8)  # the logits upsampled to the image, the int64 label map
        return need

    def _seg_input(self, image: np.ndarray) -> Tensor:
        return torch.from_numpy(segmentation_input(image, self.spec.mean, self.spec.std))

    # ------------------------------------------------------------------ prediction
    def predict(self, inputs: Any, *, batch_size: int = 1, score_thresh: float | None = None,
                probs: bool = False) -> list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """Predictions for ``inputs``: a path, a folder, a PIL image, an (H, W, 3) uint8 array, a (3, H, W) tensor,
        a (N, 3, H, W) batch, or a list of any of these; one result per image, in order.

        A single video source — a video file, a camera index (``0``) or a stream URL — gives ``stream(source,
        score_thresh=...)`` instead: a generator of per-frame results (``stream`` takes the video options).

        Args:
            batch_size: images processed together (images of any sizes can share a batch): one forward pass on a
                GPU or in ONNX Runtime; on the CPU graph (detection) up to that many images in flight at once, one
                per intra-op thread (see ``_detect_streams``). Results do not depend on it.
            score_thresh: detection: the lowest score kept (default: the checkpoint's ``eval.score_thresh``, 0.001
                in every shipped config, the value its mAP was measured with: up to ``eval.detections_per_img``
                (100) boxes per image, most of them unlikely ones). Raise it to draw boxes: ``mnv2-predict`` keeps
                and draws ``score >= 0.3`` by default (its ``--score-thresh``).
            probs: segmentation: also return ``probs`` (K, H, W) softmax probabilities.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if is_video_source(inputs):
            return self.stream(inputs, score_thresh=score_thresh)
        for item in (inputs if isinstance(inputs, (list, tuple)) else []):
            if is_video_source(item):
                raise UserError(f"{describe_source(item)} is a video source in a list of images: predict() takes "
                                "one video source at a time (or Predictor.stream(source))")
        if score_thresh is not None:
            score_thresh = check_score_thresh(score_thresh)
        items = expand_inputs(inputs)
        if self._exported:  # numpy in, numpy out: a tensor becomes its RGB array first
            items = [to_rgb(x) if isinstance(x, Tensor) else x for x in items]
            with _runtime_errors():
                found = self.backend.predict(items, batch_size=batch_size, score_thresh=score_thresh, probs=probs)
            return [_runtime_result(r) for r in found]
        if self.task in ("detection", "multitask") and isinstance(self.backend, _TorchBackend) and self.backend.freeze:
            return self._detect_streams(items, batch_size, score_thresh, probs)
        results: list[dict[str, Any]] = []
        for chunk in _batches(items, batch_size):
            if self.task in ("detection", "multitask"):
                inputs, sizes = zip(*(self._det_input(x) for x in chunk))
                batch = self._detect(torch.stack(inputs), list(sizes), score_thresh, probs)
            else:
                images = [to_rgb(x) for x in chunk]
                sizes = [tuple(im.shape[:2]) for im in images]
                batch = self._segment(images, probs)
            for item, size, r in zip(chunk, sizes, batch):
                r["size"] = (int(size[0]), int(size[1]))
                if isinstance(item, (str, os.PathLike)):
                    r["path"] = str(item)
                results.append(r)
        return results

    __call__ = predict

    def stream(self, source: int | str | os.PathLike, *, score_thresh: float | None = None, track: bool = False,
               read_ahead: int = 8, timeout: float = 10.0, max_frames: int | None = None,
               tracker: Any = None) -> Iterator[dict[str, Any]]:
        """Per-frame results of a video file, a camera (its index: ``0``) or a stream URL (``rtsp://``,
        ``http://``, ...), as a generator: for each frame, ``predict()``'s result for that frame's image, plus
        ``frame`` (its index from 0), ``time`` (seconds, from the container's presentation timestamps), ``image``
        (the decoded (H, W, 3) uint8 RGB frame, to draw on), ``fps`` (the stream's average frame rate) and, with
        ``track``, ``track_ids`` (D,) int64.

        Frames are decoded by PyAV in a thread, up to ``read_ahead`` frames ahead, so the network does not wait for
        the decoder (``data.io.video.read_frames``). Stopping early (``break``, ``close()``) stops the decoder
        and closes the source. A source that cannot be opened or fails part-way raises ``VideoError``
        (a ``DataError``) naming it, after the frames read before the failure have been yielded.

        Args:
            score_thresh: as ``predict``'s (default: the checkpoint's ``eval.score_thresh``). With ``track``,
                boxes below it are neither returned nor tracked.
            track: ByteTrack track ids per box (``ops.tracking.ByteTracker`` at the source's frame rate; ``-1``
                for a box no confirmed track holds). Detection and multi-task models only.
            timeout: seconds a network stream may take to open, and between packets.
            max_frames: stop after this many frames (a camera or live stream never ends by itself).
            tracker: a ``ByteTracker`` of your settings (implies ``track``).
        """
        if (track or tracker is not None) and self.task == "segmentation":
            raise UserError("tracking needs boxes: this is a segmentation model")
        if score_thresh is not None:
            score_thresh = check_score_thresh(score_thresh)
        frames = read_frames(source, read_ahead=read_ahead, timeout=timeout)
        try:
            # islice stops before asking the decoder for one frame more (a stalled stream would wait or fail there)
            for frame in itertools.islice(frames, max_frames):
                if tracker is None and track:
                    from .ops.tracking import ByteTracker

                    tracker = ByteTracker(frame.fps)
                [r] = self.predict(frame.image, score_thresh=score_thresh)
                r.update(frame=frame.index, time=frame.time, image=frame.image, fps=frame.fps)
                if tracker is not None:
                    r["track_ids"] = torch.from_numpy(tracker.update(r["boxes"].numpy(), r["scores"].numpy(),
                                                                     r["labels"].numpy()))
                yield r
        finally:
            frames.close()

    def _detect_one(self, item: Any, score_thresh: float | None, probs: bool = False) -> dict[str, Any]:
        x, size = self._det_input(item)
        r = self._detect(x[None], [size], score_thresh, probs)[0]
        r["size"] = (int(size[0]), int(size[1]))
        if isinstance(item, (str, os.PathLike)):
            r["path"] = str(item)
        return r

    def _detect_streams(self, items: list[Any], batch_size: int, score_thresh: float | None,
                        probs: bool = False) -> list[dict[str, Any]]:
        """Detection on the CPU graph: each image goes through decode, the batch-1 frozen graph and post-processing
        on its own; with ``batch_size`` > 1 up to ``min(batch_size, torch.get_num_threads())`` images are in flight
        at once, each on one intra-op thread (throughput streams, as OpenVINO's throughput mode runs a CPU).

        Why not one batched forward pass: on a CPU a batch of 8 at 320² runs slower per image than 8 single images
        (its feature maps outgrow the caches; measured 47 vs 35 ms per image on one thread), and one image on two
        threads synchronises both at every layer, while two single-threaded streams never wait for each other and
        overlap one image's decoding and post-processing with another's network. Every image sees the same graph
        whatever the batch size, so batched and one-by-one results are identical."""
        threads = torch.get_num_threads()
        streams = min(batch_size, threads, len(items))
        if streams <= 1:
            return [self._detect_one(item, score_thresh, probs) for item in items]
        pool = self._pools.get(streams)
        if pool is None:  # each worker sets its own OpenMP threads (which oneDNN reads) to one, once
            pool = self._pools[streams] = ThreadPoolExecutor(streams, thread_name_prefix="mnv2-predict",
                                                             initializer=torch.set_num_threads, initargs=(1,))
        # torch.set_num_threads also sets the process-wide count PyTorch's own kernels split into: one while the
        # streams run (every core already has a stream), the caller's afterwards.
        torch.set_num_threads(1)
        try:
            return list(pool.map(lambda item: self._detect_one(item, score_thresh, probs), items))
        finally:
            torch.set_num_threads(threads)

    def _detect(self, x: Tensor, sizes: list[tuple[int, int]], score_thresh: float | None,
                probs: bool = False) -> list[dict[str, Any]]:
        pp = self.spec.postprocess
        if score_thresh is not None:
            pp = replace(pp, score_thresh=float(score_thresh))
        size = tuple(x.shape[-2:])
        out = self.backend(x, fixed_shape=True)
        dets = postprocess_detections(out["cls_logits"].float(), out["bbox_regression"].float(),
                                      self.backend.anchors(size), self._coder, size, sizes, pp)
        results = []
        for d in dets:
            labels = d["labels"].cpu().to(torch.int64)
            results.append({"boxes": d["boxes"].cpu().float(), "scores": d["scores"].cpu().float(), "labels": labels,
                            "names": [self.names[i] for i in labels.tolist()],
                            "category_ids": [self.category_ids[i - 1] for i in labels.tolist()]})
        if self.task == "multitask":  # the mask of the same pass: logits at the network size, upsampled to each image
            logits = out["out"].float()
            for i, (r, s) in enumerate(zip(results, sizes)):
                p = torch.nn.functional.interpolate(logits[i:i + 1], size=tuple(s), mode="bilinear",
                                                    align_corners=False)[0]
                r["mask"] = p.argmax(0).cpu().to(torch.int64)
                if probs:
                    r["probs"] = p.softmax(0).cpu()
        return results

    def _segment(self, images: list[np.ndarray], probs: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):  # images of one size share a forward pass; no padding enters the network
            groups.setdefault(tuple(im.shape[:2]), []).append(i)
        for idx in groups.values():
            x = torch.stack([self._seg_input(images[i]) for i in idx])
            logits = self.backend(x)["out"].float()
            if logits.shape[-2:] != x.shape[-2:]:
                logits = torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                                         align_corners=False)
            p = logits.softmax(1)
            for j, i in enumerate(idx):
                out[i]["mask"] = p[j].argmax(0).cpu().to(torch.int64)
                if probs:
                    out[i]["probs"] = p[j].cpu()
        return out


# ---------------------------------------------------------------------------------------------- load
def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _run_folder_files(path: Path) -> tuple[Path | None, Path | None]:
    """``config.yaml`` and ``classes.json`` of the run folder a ``model.pt`` lies in."""
    folder = path.parent
    cfg = folder / "config.yaml"
    classes = folder / "classes.json"
    return (cfg if cfg.is_file() else None), (classes if classes.is_file() else None)


def load(source: str | os.PathLike, *, device: str | torch.device | None = None, fuse: bool | None = None,
         precision: str = "auto", config: str | os.PathLike | None = None, threads: int | None = None) -> Predictor:
    """A ``Predictor`` for a trained model.

    Args:
        source: a training checkpoint (``ckpt/best-*.ckpt`` / ``last.ckpt``), a ``model.pt`` (its run folder's
            ``config.yaml`` and ``classes.json`` are read, or give ``config``), or a file written by
            ``tools/export.py``: ``.onnx`` (ONNX Runtime), ``.tflite`` (LiteRT), OpenVINO ``.xml``, run by
            ``mnv2_runtime`` with the preprocessing of its metadata.
        device: ``"cpu"``, ``"cuda"``, ...; default cuda when available (an exported file: ONNX Runtime's CUDA
            provider where installed, other formats the CPU).
        fuse: fold BatchNorm and fuse activations (default: on CPU).
        precision: ``"auto"`` (bf16/fp16 autocast on GPU, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        config: the config of a ``model.pt`` outside its run folder.
        threads: intra-op CPU threads (default: PyTorch's / ONNX Runtime's own choice).
    """
    from .checkpoint import build_from_config, load_model
    from .config import load_config

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    dev = _device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if path.suffix.lower() in FORMATS:
        with _runtime_errors():
            model = mnv2_runtime.load(path, threads, device="cuda" if dev.type == "cuda" and path.suffix.lower()
                                      == ".onnx" else "cpu")
        return Predictor(model, _spec_from_metadata(model.metadata), dev, str(path))
    if path.suffix == ".ckpt":
        cfg, model, hparams = load_model(path)
    else:
        cfg_path, classes_path = _run_folder_files(path)
        cfg_path = Path(config) if config is not None else cfg_path
        if cfg_path is None:
            raise UserError(f"{path} is a plain state dict: its model needs a config. Keep it in its run folder "
                            "(next to config.yaml) or pass config=<config.yaml>")
        cfg = load_config(cfg_path)
        hparams: dict[str, Any] = {}
        if classes_path is not None and cfg.task in ("detection", "segmentation", "multitask"):
            from mnv2_runtime.metadata import read_label_map

            with _runtime_errors():
                hparams = read_label_map(classes_path, cfg.task, cfg.model.num_classes, cfg.model.seg_num_classes)
        from .files import load_torch

        sd = load_torch(path, "weights file")
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise CheckpointError(f"{path} does not hold a state dict")
        model = build_from_config(cfg, pretrained=False)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit the model of {cfg_path}: {str(e).splitlines()[0]}") from None
    if cfg.task not in ("detection", "segmentation", "multitask"):
        raise CheckpointError(f"{path} holds a {cfg.task} model; the predictor serves detection, segmentation and "
                              "multi-task models")
    return Predictor.from_model(model, cfg, hparams, device=dev, fuse=fuse, precision=precision, source=str(path))
