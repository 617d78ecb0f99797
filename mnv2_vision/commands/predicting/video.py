"""``tools/predict.py`` on a video file, a camera or a stream URL: an annotated video and ``predictions.jsonl``.

Outputs in ``--out``:

- ``<name>.mp4``: every frame with its boxes (and track ids) drawn, over the mask overlay for segmentation and the
  pair; the source's frame rate, size and frame times (``<name>``: the file's stem, ``camera<N>`` or the URL's last
  path part);
- ``predictions.jsonl``: one JSON record per frame, written and flushed as the frame is done: ``frame`` (index from
  0), ``time`` (seconds, from the container's timestamps), detection: ``boxes`` (xyxy, original pixels, 2 decimals),
  ``scores``, ``labels``, ``names``, ``category_ids`` and with ``--track`` ``track_ids`` (``-1``: no confirmed
  track); segmentation: ``mask`` (the palette PNG label map of the frame, relative to ``--out``) and ``pixels``
  (pixels per predicted class);
- ``<name>_masks/<frame>.png`` (segmentation and the pair): the label map of each frame, as the image path writes.

A source that fails part-way (a truncated file, a stream that drops) ends the call with one line naming it and
exit status 1; the frames done by then are in both files (the video is finished so that it plays). Ctrl-C does the
same with exit status 130.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence, TextIO
from urllib.parse import urlparse

import numpy as np

from ...data.io.labels import write_label
from ...data.io.video import VideoError, VideoWriter, describe_source
from ...errors import DataError
from ...predictor import Predictor
from ...viz import draw_detections, overlay_segmentation

__all__ = ["source_argument", "source_name", "predict_video", "pixel_counts"]

log = logging.getLogger("mnv2_vision")


def source_argument(text: str) -> int | str:
    """A command-line input as a source: a whole number that names no file or folder is a camera index."""
    return int(text) if text.isdigit() and not os.path.lexists(text) else text


def source_name(source: int | str) -> str:
    """The stem of the outputs of ``source``: the file's stem, ``camera<N>``, or the URL's last path part."""
    if isinstance(source, int):
        return f"camera{source}"
    if "://" in source:
        return Path(urlparse(source).path).stem or "stream"
    return Path(source).stem


def _free(path: Path, ours: set[str], source: int | str) -> Path:
    """``path`` unless another file of that name is there that this tool did not write, or it is the source being
    read (an earlier call's annotated video predicted again into its folder): then ``<stem>_1`` ..."""
    reading = os.path.realpath(source) if isinstance(source, str) and "://" not in source else None
    for k in range(10000):
        p = path if k == 0 else path.with_name(f"{path.stem}_{k}{path.suffix}")
        if (not os.path.lexists(p) or p.name in ours) and os.path.realpath(p) != reading:
            return p
    raise FileExistsError(f"no free name for {path.name} in {path.parent}")


def pixel_counts(label_map: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    """``{class name (or its index past names): pixels}`` of a label map, in label order (a count, not a sort:
    ``np.unique`` took 20× as long on a 1080p map, and this runs per frame)."""
    counts = np.bincount(label_map.ravel())
    return {(names[i] if i < len(names) else str(i)): int(counts[i]) for i in np.flatnonzero(counts).tolist()}


def _record(r: dict[str, Any], predictor: Predictor, mask_file: str | None,
            label_map: np.ndarray | None) -> dict[str, Any]:
    record: dict[str, Any] = {"frame": int(r["frame"]), "time": round(float(r["time"]), 6)}
    if "boxes" in r:
        record.update(boxes=[[round(v, 2) for v in b] for b in r["boxes"].tolist()],
                      scores=[round(s, 4) for s in r["scores"].tolist()], labels=r["labels"].tolist(),
                      names=list(r["names"]), category_ids=list(r["category_ids"]))
        if "track_ids" in r:
            record["track_ids"] = r["track_ids"].tolist()
    if label_map is not None:
        record.update(mask=mask_file, pixels=pixel_counts(label_map, predictor.mask_names))
    return record


def _drawn(r: dict[str, Any], predictor: Predictor, label_map: np.ndarray | None) -> np.ndarray:
    image = r["image"]
    if label_map is not None:
        image = overlay_segmentation(image, label_map)
    if "boxes" in r:
        tracks = r["track_ids"].tolist() if "track_ids" in r else None
        image = draw_detections(image, r["boxes"].numpy(), r["labels"].tolist(), r["scores"].tolist(),
                                predictor.names, track_ids=tracks)
    return image


def predict_video(predictor: Predictor, source: int | str, out_dir: Path, ours: set[str], *, score_thresh: float,
                  track: bool, max_frames: int | None, timeout: float, log_outputs: Any) -> dict[str, Any]:
    """Predict every frame of ``source`` into ``out_dir`` (see the module's docstring); returns a summary:
    ``frames``, ``video``, ``jsonl``. ``ours``: the names this tool wrote there before (replaceable);
    ``log_outputs(paths)`` records output names before they are written."""
    name = source_name(source)
    video_path = _free(out_dir / f"{name}.mp4", ours, source)
    jsonl_path = _free(out_dir / "predictions.jsonl", ours, source)
    masks = _free(out_dir / f"{name}_masks", ours, source) if predictor.task != "detection" else None
    writer: VideoWriter | None = None
    jsonl: TextIO | None = None
    frames = 0
    summary = {"source": describe_source(source), "video": str(video_path), "jsonl": str(jsonl_path)}
    stream = predictor.stream(source, score_thresh=score_thresh, track=track, max_frames=max_frames,
                              timeout=timeout)
    try:
        for r in stream:
            if writer is None:  # the outputs exist once there is a frame: an unreachable source leaves nothing
                log_outputs([video_path, jsonl_path] + ([masks] if masks is not None else []))
                writer = VideoWriter(video_path, r["image"].shape[:2], r["fps"])
                jsonl = open(jsonl_path, "w", encoding="utf-8")
                if masks is not None:
                    masks.mkdir(exist_ok=True)
            mask_file, label_map = None, r["mask"].numpy().astype(np.uint8) if "mask" in r else None
            if masks is not None:
                mask_file = f"{masks.name}/{r['frame']:06d}.png"
                write_label(out_dir / mask_file, label_map)
            writer.write(_drawn(r, predictor, label_map), r["time"])
            jsonl.write(json.dumps(_record(r, predictor, mask_file, label_map)) + "\n")
            jsonl.flush()
            frames += 1
    except VideoError as e:
        raise DataError(f"{e}; the {frames} frame(s) before it are in {video_path} and {jsonl_path}"
                        if frames else str(e)) from None
    except KeyboardInterrupt:
        summary["stopped"] = True
    finally:
        stream.close()
        if writer is not None:
            writer.close()
        if jsonl is not None:
            jsonl.close()
    summary["frames"] = frames
    return summary
