"""Multi-object tracking of per-frame detections: ByteTrack (Zhang et al., 2022) from Roboflow's ``trackers``.

``trackers`` is where ``supervision``'s ``sv.ByteTrack`` moved (supervision 0.31 no longer has it); its
``ByteTrackTracker`` is the same two-stage association (high-score boxes first, then the low-score ones against the
tracks left, a Kalman filter predicting each track's box), kept by the same maintainers. This module only adapts it
to this package's results: boxes in, one track id per box back in the boxes' own order.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ByteTracker"]


class ByteTracker:
    """ByteTrack over a sequence of frames; ``update`` once per frame, in order.

    Args:
        fps: the frames' rate: a lost track is kept ``lost_seconds`` seconds (``lost_seconds × fps`` frames).
        lost_seconds: how long a track may go undetected and still take its object back.
        high_score: detections at least this confident are matched first and may start tracks.
        new_track_score: the lowest score that starts a new track.
        min_iou: the lowest IoU between a track's predicted box and a detection that still matches them.
        confirm_frames: frames in a row an object must be detected in before its track gets an id (until then
            ``-1``); the library counts the first frame of a track as unconfirmed in any case, so 1 and 2 both give
            the id from an object's second frame on.
    """

    def __init__(self, fps: float = 30.0, *, lost_seconds: float = 1.0, high_score: float = 0.5,
                 new_track_score: float = 0.5, min_iou: float = 0.1, confirm_frames: int = 2) -> None:
        try:
            from trackers import ByteTrackTracker
        except ImportError:
            from ..errors import UserError

            raise UserError("tracking needs the trackers package, which is not installed: pip install "
                            "'mnv2_vision[video]'") from None
        fps = float(fps) if fps and fps > 0 else 30.0
        self._tracker = ByteTrackTracker(lost_track_buffer=max(1, round(lost_seconds * fps)), frame_rate=fps,
                                         track_activation_threshold=new_track_score,
                                         minimum_consecutive_frames=confirm_frames,
                                         minimum_iou_threshold=min_iou, high_conf_det_threshold=high_score)

    def update(self, boxes: Any, scores: Any, labels: Any) -> np.ndarray:
        """Track ids (D,) int64 for this frame's ``boxes`` (D, 4) xyxy, ``scores`` (D,) and ``labels`` (D,), in their
        order: an object keeps its id from frame to frame; ``-1`` for a box no confirmed track holds (a low-score
        box that matched nothing, or a track still being confirmed)."""
        import supervision as sv

        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        n = len(boxes)
        dets = sv.Detections(xyxy=boxes, confidence=np.asarray(scores, np.float32).reshape(n),
                             class_id=np.asarray(labels, np.int64).reshape(n), data={"index": np.arange(n)})
        tracked = self._tracker.update(dets)
        ids = np.full(n, -1, np.int64)
        if len(tracked):  # the tracker returns its own order: map each back through the index carried along
            ids[np.asarray(tracked.data["index"], np.int64)] = np.asarray(tracked.tracker_id, np.int64)
        return ids

    def reset(self) -> None:
        """Forget every track (a new video)."""
        self._tracker.reset()
