"""Video files, cameras and streams (issue #26): PyAV decoding ahead in a thread, ``Predictor.stream`` against
``predict()`` on the same decoded frames, ``tools/predict.py`` on a video (annotated MP4, predictions.jsonl, masks),
ByteTrack ids kept in the boxes' order, and the failures: a truncated file, an unreachable URL, a missing camera."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mnv2_vision
from mnv2_vision.data.io.video import VideoError, VideoWriter, read_frames
from mnv2_vision.data.synthetic import generate_shapes
from mnv2_vision.data.synthetic_video import render_moving_shapes, write_shapes_video
from mnv2_vision.errors import UserError
from mnv2_vision.ops.tracking import ByteTracker

from helpers import det_checkpoint, fails, seg_checkpoint, tool

FPS = 12.5  # not a whole number: times come from the container's pts, not from an integer rate


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 10-frame moving-shapes MP4 of 64 × 96 px and what was drawn."""
    shapes = render_moving_shapes(seed=3, num_frames=10, size=(64, 96), num_objects=2)
    return write_shapes_video(tmp_path_factory.mktemp("clip") / "clip.mp4", shapes, fps=FPS), shapes


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Random-weight detection, segmentation and multi-task checkpoints (the numbers, not their quality, count)."""
    folder = tmp_path_factory.mktemp("ckpts")
    root = generate_shapes(folder / "data", num_train=2, num_val=2, num_cls_train=0, num_cls_val=0)
    from mnv2_vision.checkpoint import build_from_config
    from mnv2_vision.config import load_config, to_dict

    cfg = load_config("multitask_shapes", ["model.num_classes=5", "model.seg_num_classes=5",
                                           "model.width_mult=0.35", "data.image_size=64"])
    pair = build_from_config(cfg, pretrained=False)
    torch.save({"hyper_parameters": {"config": to_dict(cfg)},
                "state_dict": {f"model.{k}": v for k, v in pair.state_dict().items()}}, folder / "pair.ckpt")
    return {"detection": det_checkpoint(folder / "det.ckpt", root), "segmentation": seg_checkpoint(
        folder / "seg.ckpt", root), "multitask": folder / "pair.ckpt"}


def test_written_video_reads_back_with_its_frame_times_rate_and_pixels(clip):
    path, shapes = clip
    frames = list(read_frames(path))
    assert [f.index for f in frames] == list(range(10))
    assert [f.time for f in frames] == pytest.approx([t / FPS for t in range(10)], abs=1e-6)  # 0.08 s apart
    assert all(f.fps == FPS and f.image.shape == (64, 96, 3) and f.image.dtype == np.uint8 for f in frames)
    decoded = np.stack([f.image for f in frames]).astype(int)
    error = np.abs(decoded - shapes.frames).mean()
    other = np.abs(decoded - shapes.frames[::-1]).mean()  # against the frames in reverse: the objects elsewhere
    # H.264 (4:2:0, crf 18) is lossy and the backgrounds carry per-pixel noise (σ 5): 5.3 levels measured, the
    # reversed frames 14.2
    assert error < 6.5 and error < other / 2, (error, other)


def test_odd_sized_frames_are_written_whole(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 33, 47, 3), dtype=np.uint8)
    with VideoWriter(tmp_path / "odd.mp4", (33, 47), 5) as w:
        for t, im in enumerate(images):
            w.write(im, t / 5)
    frames = list(read_frames(tmp_path / "odd.mp4"))
    assert len(frames) == 3 and frames[0].image.shape == (33, 47, 3)  # 4:4:4: an odd side is no problem


def test_stopping_early_ends_the_decoder_thread(clip):
    frames = read_frames(clip[0], read_ahead=2)
    assert next(frames).index == 0
    assert any(t.name.startswith("mnv2-video") for t in threading.enumerate())
    frames.close()
    assert not any(t.name.startswith("mnv2-video") for t in threading.enumerate())


@pytest.mark.parametrize("task", ["detection", "segmentation", "multitask"])
def test_stream_equals_predict_on_the_same_decoded_frames(clip, ckpts, task):
    # detection on the default CPU path (the frozen graph); the others on the fused eager model (no tracing cost)
    predictor = mnv2_vision.load(ckpts[task], device="cpu", fuse=None if task == "detection" else False)
    results = list(predictor.stream(clip[0], score_thresh=0.05))
    decoded = [f.image for f in read_frames(clip[0])]
    assert [r["frame"] for r in results] == list(range(10))
    assert [r["time"] for r in results] == pytest.approx([t / FPS for t in range(10)], abs=1e-6)
    expected = predictor.predict(decoded, score_thresh=0.05)
    for r, e, image in zip(results, expected, decoded):
        assert np.array_equal(r["image"], image)
        for key in ("boxes", "scores", "labels", "mask"):
            assert (key in r) == (key in e)
            if key in e:
                assert torch.equal(r[key], e[key]), key
    if task != "segmentation":
        assert sum(len(r["boxes"]) for r in results) > 0  # random weights still score some boxes above 0.05


def test_predict_of_a_video_source_is_the_stream_and_a_video_in_a_list_is_refused(clip, ckpts):
    predictor = mnv2_vision.load(ckpts["detection"], device="cpu", fuse=False)
    frames = list(predictor.predict(clip[0], score_thresh=0.05))  # a generator, as stream(...)
    expected = list(predictor.stream(clip[0], score_thresh=0.05))
    assert [r["frame"] for r in frames] == list(range(len(expected))) and len(frames) > 1
    for r, e in zip(frames, expected):
        assert r["time"] == e["time"] and torch.equal(r["boxes"], e["boxes"]) and torch.equal(r["labels"], e["labels"])
    with pytest.raises(UserError, match=r"clip\.mp4 is a video source in a list of images"):
        predictor.predict([clip[0]])


def test_tracker_gives_ids_in_the_order_of_the_boxes():
    tracker = ByteTracker(fps=10, confirm_frames=1)
    a, b = np.array([10, 10, 30, 30.0]), np.array([60, 10, 80, 30.0])
    ids = []
    for t in range(6):  # the two boxes swap places in the list every frame; the objects keep their ids
        boxes = [a + [2 * t, 0, 2 * t, 0], b - [2 * t, 0, 2 * t, 0]]
        order = [0, 1] if t % 2 == 0 else [1, 0]
        got = tracker.update(np.stack([boxes[i] for i in order]), [0.9, 0.8], [1, 2])
        ids.append({order[j]: int(got[j]) for j in range(2)})
    assert ids[0] == {0: -1, 1: -1}  # a track is confirmed in its second frame (trackers' ByteTrack)
    assert all(d == ids[1] for d in ids[1:]) and ids[1][0] != ids[1][1] and min(ids[1].values()) >= 0
    low = tracker.update(np.array([[200, 200, 220, 220.0]]), [0.2], [1])  # a weak box that matches no track
    assert low.tolist() == [-1]


def test_predict_tool_writes_the_video_and_one_record_per_frame(clip, ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    tool("predict").main(["--ckpt", str(ckpts["detection"]), str(clip[0]), "--out", str(out), "--track",
                          "--score-thresh", "0.05", "--no-fuse"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(10))
    predictor = mnv2_vision.load(ckpts["detection"], device="cpu", fuse=False)
    for rec, r in zip(records, predictor.stream(clip[0], score_thresh=0.05)):
        assert set(rec) == {"frame", "time", "boxes", "scores", "labels", "names", "category_ids", "track_ids"}
        assert rec["time"] == pytest.approx(r["time"], abs=1e-6)
        assert np.allclose(rec["boxes"], r["boxes"].numpy().reshape(-1, 4), atol=0.005)
        assert rec["labels"] == r["labels"].tolist() and len(rec["track_ids"]) == len(rec["boxes"])
    drawn = list(read_frames(out / "clip.mp4"))
    assert len(drawn) == 10 and drawn[0].image.shape == (64, 96, 3) and drawn[0].fps == FPS
    assert "clip.mp4: 10 frame(s)" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["segmentation", "multitask"])
def test_predict_tool_writes_a_mask_png_per_frame(clip, ckpts, tmp_path, task):
    out = tmp_path / "out"
    tool("predict").main(["--ckpt", str(ckpts[task]), str(clip[0]), "--out", str(out), "--max-frames", "3",
                          "--no-fuse"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    predictor = mnv2_vision.load(ckpts[task], device="cpu", fuse=False)
    expected = list(predictor.stream(clip[0], max_frames=3, score_thresh=0.3))
    assert len(records) == 3 and ("boxes" in records[0]) == (task == "multitask")
    for rec, r in zip(records, expected):
        assert rec["mask"] == f"clip_masks/{rec['frame']:06d}.png"
        mask = np.asarray(Image.open(out / rec["mask"]))
        assert np.array_equal(mask, r["mask"].numpy()) and sum(rec["pixels"].values()) == 64 * 96


def _truncated(clip_path: Path, tmp_path: Path) -> Path:
    data = clip_path.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) * 2 // 3])  # the index is first (faststart): the first frames still decode
    return bad


def test_truncated_video_keeps_the_frames_before_the_cut(clip, ckpts, tmp_path, capsys):
    bad = _truncated(clip[0], tmp_path)
    with pytest.raises(VideoError, match="cut.mp4: decoding failed after frame"):
        list(read_frames(bad))
    out = tmp_path / "out"
    line = fails(capsys, "predict", ["--ckpt", str(ckpts["detection"]), str(bad), "--out", str(out), "--no-fuse"],
                 code=1)
    done = (out / "predictions.jsonl").read_text().splitlines()
    assert "cut.mp4" in line and f"the {len(done)} frame(s) before it are in" in line
    assert 1 <= len(done) < 10
    assert len(list(read_frames(out / "cut.mp4"))) == len(done)  # finished: it plays, every frame done is in it


@pytest.mark.parametrize("source, expected", [("rtsp://127.0.0.1:1/x", "cannot open rtsp://127.0.0.1:1/x"),
                                              ("99", "cannot open camera 99"),
                                              ("missing.mp4", "missing.mp4: no such video file")])
def test_unreachable_sources_are_one_line_and_leave_nothing(source, expected, ckpts, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    line = fails(capsys, "predict", ["--ckpt", str(ckpts["detection"]), source, "--out", str(out), "--timeout",
                                     "1", "--no-fuse"], code=1)
    assert expected in line
    assert not (out / "predictions.jsonl").exists()


def test_benchmark_video_entry(clip, ckpts, tmp_path):
    out = tmp_path / "bench.json"
    tool("benchmark").main(["--video-only", "--video-path", str(clip[0]), "--det-ckpt", str(ckpts["detection"]),
                            "--video-rounds", "1", "--json", str(out)])
    v = json.loads(out.read_text())["video"]
    assert v["frames"] == 10 and v["size"] == [64, 96] and v["rounds"] == 1
    fps = v["frames_per_s"]
    assert set(fps) == {"stream(video)", "predict() on pre-decoded frames", "decoding alone"}
    assert v["stream / pre-decoded"] == pytest.approx(fps["stream(video)"] / fps["predict() on pre-decoded frames"])
    whole = v["frames_per_s_whole_pass"]
    assert v["stream / pre-decoded, whole pass"] == pytest.approx(
        whole["stream(video)"] / whole["predict() on pre-decoded frames"])


def test_predicting_an_earlier_output_video_into_its_folder_reads_it_whole(clip, ckpts, tmp_path):
    out = tmp_path / "out"
    argv = ["--ckpt", str(ckpts["detection"]), "--out", str(out), "--no-fuse", "--max-frames", "4"]
    tool("predict").main([str(clip[0]), *argv])
    tool("predict").main([str(out / "clip.mp4"), *argv])  # the annotated video, an output of ours, as the input
    assert len(list(read_frames(out / "clip.mp4"))) == 4 and len(list(read_frames(out / "clip_1.mp4"))) == 4


def test_ctrl_c_keeps_the_frames_done_and_exits_130(clip, ckpts, tmp_path, monkeypatch):
    from mnv2_vision.predictor import Predictor

    original = Predictor.stream

    def interrupted(self, *args, **kwargs):  # a camera stopped with Ctrl-C after three frames
        for r in original(self, *args, **kwargs):
            if r["frame"] == 3:
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(Predictor, "stream", interrupted)
    out = tmp_path / "out"
    status = tool("predict").main(["--ckpt", str(ckpts["detection"]), str(clip[0]), "--out", str(out), "--no-fuse"])
    assert status == 130
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert len(list(read_frames(out / "clip.mp4"))) == 3


def test_an_exported_onnx_model_streams_as_it_predicts(clip, ckpts, tmp_path):
    pytest.importorskip("onnxruntime")
    tool("export").main(["--ckpt", str(ckpts["detection"]), "--out", str(tmp_path)])
    model = mnv2_vision.load(tmp_path / "model.onnx")
    results = list(model.stream(clip[0], score_thresh=0.05, track=True))
    expected = model.predict([f.image for f in read_frames(clip[0])], score_thresh=0.05)
    assert [r["frame"] for r in results] == list(range(10))
    for r, e in zip(results, expected):
        assert torch.equal(r["boxes"], e["boxes"]) and torch.equal(r["scores"], e["scores"])
        assert len(r["track_ids"]) == len(r["boxes"])
