"""Moving shapes: the built-in shapes drawn (``data.synthetic``'s backgrounds, polygons and paint) moving across a
fixed background, with each object's box and identity per frame: test and benchmark video for ``Predictor.stream``
and tracking, and COCO training scenes of the same look.

    from mnv2_vision.data.synthetic_video import render_moving_shapes, write_shapes_video
    clip = render_moving_shapes(seed=0, num_frames=40)      # clip.frames[i] (H, W, 3); clip.boxes[i] (N, 4) xyxy
    write_shapes_video("clip.mp4", clip, fps=10)

Each object has a lane of its own (a horizontal band of the image) and bounces between the left and right edges
at its own speed, drifting a little up and down inside its lane: objects never overlap, so every object is visible
in every frame and the ground-truth identities are unambiguous.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synthetic import SHAPE_CLASSES, _UNIT_SHAPES, _background, _object_colour, _paint, _rasterise

__all__ = ["MovingShapes", "render_moving_shapes", "write_shapes_video"]


@dataclass(frozen=True)
class MovingShapes:
    """``frames`` (T, H, W, 3) uint8; per frame ``boxes`` (N, 4) float xyxy (tight, inclusive bounds + 1), object
    ``labels`` (N,) (indices into ``SHAPE_CLASSES``, the same every frame), object ``i`` being row ``i`` of each."""

    frames: np.ndarray
    boxes: np.ndarray  # (T, N, 4)
    labels: np.ndarray  # (N,)


def render_moving_shapes(seed: int = 0, num_frames: int = 40, size: tuple[int, int] = (144, 192),
                         num_objects: int = 3, speed: tuple[float, float] = (2.0, 5.0)) -> MovingShapes:
    """``num_frames`` frames of ``num_objects`` shapes moving over one background; a pure function of its arguments.

    Args:
        size: (H, W) of the frames.
        speed: pixels per frame, each object's horizontal speed drawn uniformly from this range.
    """
    h, w = size
    rng = np.random.default_rng([seed, 7])
    background = _background(rng, h, w)
    bg_mean = background.reshape(-1, 3).mean(0)
    lane = h / num_objects
    diameter = min(lane * 0.8, w * 0.3)
    objects = []
    colours: list[np.ndarray] = []
    for i in range(num_objects):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        angle = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = _UNIT_SHAPES[SHAPE_CLASSES[label]] @ rot.T * (diameter / 2)
        pts -= (pts.min(0) + pts.max(0)) / 2  # centred on its box
        half = (pts.max(0) - pts.min(0)) / 2
        colour = _object_colour(rng, bg_mean, colours)
        colours.append(colour)
        x = rng.uniform(half[0] + 1, w - 1 - half[0])
        vx = rng.uniform(*speed) * rng.choice([-1.0, 1.0])
        phase = rng.uniform(0, 2 * np.pi)
        objects.append((label, pts, half, colour, x, vx, phase, lane * (i + 0.5)))
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    boxes = np.zeros((num_frames, num_objects, 4), np.float32)
    paint_rng = np.random.default_rng([seed, 8])
    for t in range(num_frames):
        image = background.copy()
        for i, (label, pts, half, colour, x0, vx, phase, cy) in enumerate(objects):
            lo, hi = half[0] + 1, w - 1 - half[0]
            x = lo + (x0 - lo + vx * t) % (2 * (hi - lo))  # along a path folded back at the right edge: a bounce
            x = x if x <= hi else 2 * hi - x
            drift = max(0.0, lane / 2 - half[1] - 1) * np.sin(phase + 0.15 * t)
            mask = _rasterise(pts + [x, cy + drift], w, h)
            _paint(paint_rng, image, mask, colour)
            ys, xs = np.nonzero(mask)
            boxes[t, i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        frames[t] = np.clip(image, 0, 255).round().astype(np.uint8)
    return MovingShapes(frames, boxes, np.array([o[0] for o in objects], np.int64))


def write_shapes_video(path: str | os.PathLike, clip: MovingShapes, fps: float = 10.0) -> Path:
    """``clip`` as an H.264 MP4 at ``fps`` (``data.io.video.VideoWriter``); returns the path."""
    from .io.video import VideoWriter

    with VideoWriter(path, clip.frames.shape[1:3], fps) as writer:
        for t, frame in enumerate(clip.frames):
            writer.write(frame, t / fps)
    return Path(path)
