"""Video in and out with PyAV (FFmpeg): frames of a file, a camera or a stream URL decoded ahead in a thread, and an
annotated video written at the source's frame rate and size.

    from mnv2_vision.data.io.video import read_frames
    for frame in read_frames("clip.mp4"):          # or 0 (a camera), "rtsp://host/stream", "http://..."
        frame.index, frame.time, frame.image        # 0, 1, ...; seconds from the container's pts; (H, W, 3) uint8 RGB
        frame.fps                                   # the stream's average frame rate

Why PyAV rather than OpenCV's ``VideoCapture``: it gives each frame's presentation timestamp exactly (``pts`` in the
stream's time base, not a ``CAP_PROP_POS_MSEC`` estimate), it raises FFmpeg's error (``Invalid data found``,
``Connection refused``, ``No such file``) where ``VideoCapture`` returns ``False`` and leaves the reason in a log,
it takes open and read timeouts for network streams, and it writes H.264 MP4 itself (its wheels carry FFmpeg with
libx264), so reading and writing need one dependency (``pip install 'mnv2_vision[video]'``).

A source that fails is one ``VideoError`` naming it: a file that cannot be opened or stops decoding part-way
(truncated: ``clip.mp4: decoding failed after frame 11: Invalid data found ...``, or fewer frames than its header
declares), a URL that cannot be reached within ``timeout``, a camera index with no device. Frames decoded before
the failure have already been yielded.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import DataError, UserError

__all__ = ["VIDEO_SUFFIXES", "Frame", "VideoError", "VideoWriter", "describe_source", "is_video_source",
           "read_frames"]

# file suffixes read as videos (by predict and tools/predict.py) rather than as images
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv",
                            ".flv", ".3gp"})
_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_END = object()  # the reader thread's last item after the final frame


class VideoError(DataError):
    """A video source that cannot be opened or stops part-way: one line naming it (exit status 1)."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` counts from 0 in decoding order, ``time`` is its presentation time in seconds
    from the stream's start (``pts × time_base`` less the first frame's; the index over the frame rate where a
    frame carries no pts), ``image`` is (H, W, 3) uint8 RGB, ``fps`` the stream's average frame rate (30 where the
    source does not tell)."""

    index: int
    time: float
    image: np.ndarray
    fps: float = 30.0


def is_video_source(source: Any) -> bool:
    """Whether ``source`` is read as a video: an ``int`` (a camera index), a URL of a streaming scheme, or a path with
    a video suffix (``VIDEO_SUFFIXES``)."""
    if isinstance(source, bool):
        return False
    if isinstance(source, int):
        return True
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return text.lower().startswith(_URL_SCHEMES) or Path(text).suffix.lower() in VIDEO_SUFFIXES
    return False


def describe_source(source: int | str | os.PathLike) -> str:
    """How messages name a source: ``camera 0``, the URL, or the path."""
    return f"camera {source}" if isinstance(source, int) else str(source)


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise UserError("reading and writing video needs PyAV, which is not installed: pip install "
                        "'mnv2_vision[video]'") from None
    return av


def _camera(index: int) -> tuple[str, str]:
    """FFmpeg's (device, input format) for camera ``index`` on this platform."""
    if sys.platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if sys.platform == "darwin":
        return str(index), "avfoundation"
    raise UserError(f"camera {index}: cameras by index are read on Linux (v4l2) and macOS (avfoundation); on "
                    "this platform give the device's FFmpeg URL instead")


def _open(source: int | str | os.PathLike, timeout: float) -> Any:
    av = _import_av()
    name = describe_source(source)
    try:
        if isinstance(source, int):
            device, fmt = _camera(source)
            return av.open(device, format=fmt)
        text = str(source)
        if text.lower().startswith(_URL_SCHEMES):
            return av.open(text, timeout=(timeout, timeout))  # (open, read) seconds: a dead stream cannot hang us
        if not Path(text).is_file():
            raise VideoError(f"{name}: no such video file")
        return av.open(text)
    except av.FFmpegError as e:
        raise VideoError(f"cannot open {name}: {e.strerror or e}") from None


def _frames(container: Any, name: str, is_file: bool, stop: threading.Event) -> Iterator[Frame]:
    """The frames of the container's first video stream, as ``Frame``; a decoding failure is a ``VideoError``."""
    import av

    if not container.streams.video:
        raise VideoError(f"{name}: no video stream")
    stream = container.streams.video[0]
    # one decoding thread: FFmpeg's default starts a thread per core, which preempt the network's threads
    stream.codec_context.thread_count = 1
    rate = stream.average_rate or stream.guessed_rate or Fraction(30)
    declared = int(stream.frames or 0)  # 0 where the container does not tell (streams, some formats)
    start = None
    index = -1
    try:
        for frame in container.decode(stream):
            if stop.is_set():
                return
            index += 1
            if frame.pts is not None and frame.time_base is not None:
                if start is None:
                    start = frame.pts
                t = float((frame.pts - start) * frame.time_base)
            else:
                t = float(index / rate)
            yield Frame(index, t, frame.to_ndarray(format="rgb24"), float(rate))
    except av.FFmpegError as e:
        where = f"after frame {index} ({index + 1} frame(s) read)" if index >= 0 else "at its first frame"
        raise VideoError(f"{name}: decoding failed {where}: {e.strerror or e}") from None
    if is_file and declared and index + 1 < declared:
        raise VideoError(f"{name}: truncated: {index + 1} of the {declared} frames its header declares were decoded")


def read_frames(source: int | str | os.PathLike, *, read_ahead: int = 8, timeout: float = 10.0) -> Iterator[Frame]:
    """The frames of a video file, a camera (its index) or a stream URL, decoded in a thread up to ``read_ahead``
    frames ahead of the consumer (a bounded queue: memory stays at most that many frames).

    The decoder opens on the first ``next``. Closing the generator (breaking out of a ``for`` loop, ``close()``,
    garbage collection) stops the thread and closes the container. A source that fails raises ``VideoError``
    after the frames decoded before the failure.

    Args:
        read_ahead: frames decoded ahead (≥ 1).
        timeout: seconds a network stream may take to open and between packets before it counts as unreachable.
    """
    if read_ahead < 1:
        raise ValueError(f"read_ahead must be ≥ 1, got {read_ahead}")
    name = describe_source(source)
    container = _open(source, timeout)
    is_file = not isinstance(source, int) and not str(source).lower().startswith(_URL_SCHEMES)
    items: queue.Queue = queue.Queue(maxsize=read_ahead)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand ``item`` to the consumer unless it has stopped listening (False then)."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for frame in _frames(container, name, is_file, stop):
                if not put(frame):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
            put(e)

    thread = threading.Thread(target=decode, name=f"mnv2-video-{name}", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
        container.close()


class VideoWriter:
    """An H.264 MP4 (``yuv420p``, or ``yuv444p`` for an odd width or height, which 4:2:0 cannot hold; its index
    first, as ``-movflags +faststart`` writes it) written frame by frame at a frame rate, each frame at its own
    time; ``close()`` (or the ``with`` block's end, also on an error) finishes the file so that it plays with the
    frames written so far.

    Args:
        path: the ``.mp4`` to write.
        size: (H, W) of every frame.
        fps: the frame rate (the source's average rate); frame times are kept at ``1 / (fps × 100)`` resolution.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float | Fraction) -> None:
        av = _import_av()
        self.path, self.size = Path(path), (int(size[0]), int(size[1]))
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(30)
        # faststart: the index goes before the frames (rewritten at close), so the file plays while it downloads
        self._container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("h264" if "libx264" in av.codecs_available else "mpeg4",
                                                  rate=rate)
        self._stream.height, self._stream.width = self.size
        odd = self.size[0] % 2 or self.size[1] % 2
        self._stream.pix_fmt = "yuv444p" if odd and self._stream.codec_context.name != "mpeg4" else "yuv420p"
        self._stream.time_base = Fraction(1, 1) / (rate * 100)
        if self._stream.codec_context.name == "libx264":
            self._stream.options = {"crf": "18"}  # visually lossless (x264's default 23 blurs thin box outlines)
        self._last_pts = -1
        self.frames = 0

    def write(self, image: np.ndarray, time: float | None = None) -> None:
        """Append (H, W, 3) uint8 RGB ``image``, shown at ``time`` seconds (default: the next frame's slot)."""
        import av

        if tuple(image.shape[:2]) != self.size:
            raise ValueError(f"{self.path}: frame of size {image.shape[:2]}, the video's is {self.size}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image, np.uint8), format="rgb24")
        tb = self._stream.time_base
        pts = round(time / tb) if time is not None else self._last_pts + 100
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the source's timestamps did
        frame.pts, frame.time_base = pts, tb
        self._container.mux(self._stream.encode(frame))
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and write the container's index; idempotent."""
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
