"""Run a trained checkpoint on image files or folders; write annotated images and a JSON of the predictions.

    python tools/predict.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt photo.jpg more_photos/
    python tools/predict.py --ckpt runs/deeplabv3_shapes/ckpt/last.ckpt image.jpg --out runs/predict
    python tools/predict.py --ckpt runs/ssdlite_coco/export/model.onnx photos/ --batch-size 8
    python tools/predict.py --ckpt runs/ssdlite_shapes/ckpt/last.ckpt clip.mp4 --track --out runs/clip
    python tools/predict.py --ckpt C.ckpt 0 --max-frames 300          # camera 0; rtsp://... or http://... streams

A video file (``.mp4``, ``.mov``, ``.mkv``, ...), a camera index or a stream URL, given alone, is predicted frame
by frame (``Predictor.stream``; ``mnv2_vision/commands/predicting/video.py``): ``<out>/<name>.mp4`` with the
predictions drawn (same frame rate and size) and ``<out>/predictions.jsonl``, one JSON record per frame (``frame``,
``time``, ``boxes``, ``scores``, ``labels``, ``names``, ``category_ids``, with ``--track`` ByteTrack's
``track_ids``; segmentation: ``mask``, the frame's palette PNG under ``<out>/<name>_masks/``, and ``pixels``). A
source that cannot be opened or fails part-way ends with one line naming it and exit status 1, the frames done by
then written (the jsonl is flushed per frame, the video finished so that it plays).

A thin wrapper of the predictor API (``mnv2_vision.load(...).predict(...)``, ``mnv2_vision/predictor.py``): the same
model files (a training checkpoint, a ``model.pt`` in its run folder, an exported ``.onnx``), the same
preprocessing as evaluation, the same numbers.

The task is read from the checkpoint's config. Detection: ``<out>/<name>.jpg`` with boxes scoring at least
``--score-thresh`` drawn, and ``<out>/predictions.json`` with every kept box (xyxy in original pixels, score, label,
COCO category id, name). Segmentation: ``<out>/<name>.png`` (palette label map), ``<out>/<name>_overlay.jpg`` and
``<out>/predictions.json`` with the pixel count of each predicted class. Multi-task (one forward pass):
``<out>/<name>.jpg`` with the boxes drawn over the mask overlay, ``<out>/<name>.png`` (palette label map) and
``<out>/predictions.json`` with both.

Nothing is overwritten but this tool's own earlier outputs: an output name taken by an input image, by another
output of this call (``photo.jpg`` and ``photo.png``), by another image's output of an earlier call or by any other
existing file gets ``_1``, ``_2``, ... after the stem; each record of ``predictions.json`` lists its image's output
files. Every output's name is added to ``<out>/.predict_outputs.txt`` before the file is written, and no file named
there (nor in ``predictions.json``) is ever read as an input: predicting a folder into itself again, even after a
call that was stopped half-way, never predicts the earlier drawings. ``predictions.json`` keeps the records of
earlier calls into the same folder: a call replaces the records of the images it predicts (one record per input
file) and adds the others.

An image that cannot be used (unreadable, a broken symlink or a symlink loop, too large for the memory: ``10000×10000
px needs at least 18.7 GB, 4.0 GB is available``, or out of memory while predicted) is skipped with a warning; the
others are still predicted and written, and the tool ends with one line listing the skipped files and exit status 1
(the rule of every tool that predicts or scores images, ``mnv2_vision/commands/cli.py``). ``--score-thresh`` must lie in
[0, 1].
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

import mnv2_vision
from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser, skipped_message
from mnv2_vision.commands.predicting.video import pixel_counts, predict_video, source_argument
from mnv2_vision.data.io.labels import write_label
from mnv2_vision.errors import DataError, UserError
from mnv2_vision.files import output_folder, plan_outputs, remove_temp_files, save_image, write_json
from mnv2_vision.data.io.decode import to_rgb
from mnv2_vision.data.io.video import is_video_source
from mnv2_vision.predictor import IMAGE_SUFFIXES, Predictor, check_score_thresh
from mnv2_vision.viz import draw_detections, overlay_segmentation

log = logging.getLogger("mnv2_vision")

OUTPUTS_LOG = ".predict_outputs.txt"  # in --out: every output name this tool has written there, one JSON string a line


def _real(path: Path | str) -> str:
    """The path with its symlinks followed; never raises (``Path.resolve`` raises on a symlink loop)."""
    return os.path.realpath(path)


def _records(json_path: Path) -> list[dict]:
    """The records of an earlier call's predictions.json (none when it is missing or not this tool's)."""
    try:
        records = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return []
    ok = isinstance(records, list) and all(isinstance(r, dict) and isinstance(r.get("file"), str) for r in records)
    return records if ok else []


def _our_outputs(folder: Path) -> set[str]:
    """The names of the files earlier calls of this tool wrote into ``folder``: those in its outputs log and those
    its predictions.json lists (calls from before the log)."""
    names: set[str] = set()
    try:
        for line in (folder / OUTPUTS_LOG).read_text(encoding="utf-8").splitlines():
            try:
                names.add(str(json.loads(line)))
            except ValueError:
                pass  # a line cut short by a stopped call: the file after it was never written
    except OSError:
        pass
    for r in _records(folder / "predictions.json"):
        names.update(_output_names(r))
    return names


def _output_names(record: dict) -> list[str]:
    """The names of the output files a predictions.json record lists."""
    outputs = record.get("outputs")
    return [Path(o).name for o in outputs if isinstance(o, str)] if isinstance(outputs, list) else []


def _log_outputs(out_dir: Path, outs: Sequence[Path], logged: set[str]) -> None:
    """Add ``outs`` to the outputs log before they are written: a call stopped half-way still leaves them known."""
    new = [o.name for o in outs if o.name not in logged]
    if new:
        with open(out_dir / OUTPUTS_LOG, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(n) + "\n" for n in new))
            f.flush()
            os.fsync(f.fileno())
        logged.update(new)


def _unusable(f: Path) -> str | None:
    """Why the folder entry ``f`` is no image file to read, or ``None``: ``""`` for a folder (skipped silently:
    predict reads no subfolders, so a cycle such as ``up -> ..`` is never followed), else the reason."""
    try:
        mode = f.stat().st_mode  # follows symlinks
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
        if f.is_symlink():
            return f"a broken symlink: {os.readlink(f)} does not exist"
        return f"cannot be opened: {e.strerror}"
    if stat.S_ISDIR(mode):
        return ""
    return None if stat.S_ISREG(mode) else "not a regular file"  # a FIFO would block the read forever


def _collect(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The image files to predict, and the folder entries that cannot be (``"file (reason)"``). A file an earlier
    call of this tool wrote into its folder is left out: predicting into an input folder must not read our own
    drawings."""
    files: list[Path] = []
    unusable: list[str] = []
    ours: dict[str, set[str]] = {}  # folder → our earlier outputs there, read once (a shell's *.jpg names many)

    def earlier(folder: Path) -> set[str]:
        key = _real(folder)
        if key not in ours:
            ours[key] = _our_outputs(folder)
        return ours[key]

    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES or f.name in earlier(p):
                    continue
                why = _unusable(f)
                if why is None:
                    files.append(f)
                elif why:
                    log.warning("skipping %s: %s", f, why)
                    unusable.append(f"{f} ({why})")
        elif p.is_file():
            if p.name in earlier(p.parent):
                print(f"not reading {p}: an output of an earlier tools/predict.py call (listed in "
                      f"{p.parent / OUTPUTS_LOG})")
                continue
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files and not unusable:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {list(paths)}")
    return files, unusable


def _json_path(out_dir: Path) -> Path:
    """``predictions.json``, unless a file of that name that this tool did not write is there."""
    for k in range(1000):
        path = out_dir / ("predictions.json" if k == 0 else f"predictions_{k}.json")
        if not path.exists():
            return path
        try:
            records = json.loads(path.read_text())
            if isinstance(records, list) and all(isinstance(r, dict) and "file" in r for r in records):
                return path
        except (OSError, ValueError):
            pass
    raise FileExistsError(f"no free name for predictions.json in {out_dir}")


def available_memory() -> int | None:
    """Bytes this process may still allocate, as far as the system tells: the least of the kernel's MemAvailable,
    the cgroup's limit less its usage (a container) and the address-space limit (``ulimit -v``) less this process's
    size; ``None`` when none is known."""
    known = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        known += [int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2, then v1
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes "no limit" as a huge number, v2 as "max"
            known.append(int(limit) - usage)
        break
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            status = Path("/proc/self/status").read_text()
            size = [int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:")]
            known.append(soft - (size[0] if size else 0))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return max(0, min(known)) if known else None


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: Python's / numpy's ``MemoryError``, PyTorch's CPU allocator and CUDA ones."""
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()))


def _oom_reason(size: tuple[int, int], e: BaseException) -> str:
    """``too large to process: W×H px, out of memory: <the allocator's first line>``."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = re.sub(r"^\[enforce fail at [^\]]*\][^.]*\.\s*", "", text) or type(e).__name__  # PyTorch's C++ prefix
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the failed batch held: the images retried one by one need it
    return f"too large to process: {size[1]}×{size[0]} px, out of memory: {text}"


def _size(f: Path) -> tuple[int, int] | None:
    """(H, W) from the file's header, before its pixels are decoded; ``None`` when the header cannot tell (the
    decoder then reports the file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is what is being checked
            with Image.open(f) as im:
                return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - any failure here is the decoder's to report, naming the file
        return None


def _too_large(f: Path, predictor: Predictor) -> str | None:
    """The reason ``f`` cannot be predicted in the memory there is, or ``None``: a 100-Mpx photo segmented at full
    size needs tens of GB, and an allocation failing under a container's limit kills the process instead of raising."""
    size = _size(f)
    free = available_memory() if size is not None else None
    if size is None or free is None:
        return None
    need = predictor.memory_needed(size)
    if need <= free:
        return None
    return (f"too large to process: {size[1]}×{size[0]} px needs at least {need / 2**30:.1f} GB, "
            f"{free / 2**30:.1f} GB is available")


def _decoded(files: list[Path], predictor: Predictor, skipped: list[str]) -> list[tuple[Path, np.ndarray]]:
    """``(file, RGB image)`` of each usable file, decoded once: the predictor gets the array (the evaluation
    pipeline's numbers: a file and its decoded array agree to 2.4e-7) and the drawing reuses it. An unreadable file,
    or one too large for the memory, is warned about and listed in ``skipped``; it must not cost the results of the
    others."""
    out = []
    for f in files:
        too_large = _too_large(f, predictor)
        if too_large:
            log.warning("skipping %s: %s", f, too_large)
            skipped.append(f"{f} ({too_large})")
            continue
        try:
            out.append((f, to_rgb(f)))
        except (ValueError, OSError) as e:
            log.warning("skipping %s", e)
            skipped.append(str(e))
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            reason = _oom_reason(_size(f) or (0, 0), e)
            log.warning("skipping %s: %s", f, reason)
            skipped.append(f"{f} ({reason})")
    return out


def _predicted(predictor: Predictor, batch: list[tuple[Path, np.ndarray]], score_thresh: float,
               skipped: list[str]) -> list[tuple[Path, np.ndarray, dict[str, Any]]]:
    """``(file, image, result)`` for the images of ``batch``; a batch that runs out of memory is redone one image at
    a time, and an image that does so alone is listed in ``skipped``."""
    if not batch:
        return []
    try:
        results = predictor.predict([image for _, image in batch], batch_size=len(batch), score_thresh=score_thresh)
        return [(f, image, r) for (f, image), r in zip(batch, results)]
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        if len(batch) > 1:
            return [x for item in batch for x in _predicted(predictor, [item], score_thresh, skipped)]
        f, image = batch[0]
        reason = _oom_reason(image.shape[:2], e)
        log.warning("skipping %s: %s", f, reason)
        skipped.append(f"{f} ({reason})")
        return []


def _write(f: Path, image: np.ndarray, r: dict[str, Any], outs: tuple[Path, ...], predictor: Predictor,
           score_thresh: float) -> dict[str, Any]:
    """The outputs of one image (label map and overlay, boxes drawn) and its record for predictions.json."""
    record = {"file": str(f), "height": image.shape[0], "width": image.shape[1],
              "outputs": [str(o) for o in outs]}
    task = predictor.task
    if "mask" in r:
        label_map = r["mask"].numpy().astype(np.uint8)
        mask_file = outs[1] if task == "multitask" else outs[0]
        write_label(mask_file, label_map)
        overlay = overlay_segmentation(image, label_map)
        names = predictor.mask_names
        record["pixels"] = pixel_counts(label_map, names)
        if task == "segmentation":
            save_image(overlay, outs[1], quality=95)
        print(f"{f}: classes {[n for n in record['pixels'] if n in names]} → {mask_file}")
    if "boxes" in r:  # boxes drawn over the mask overlay of the same pass for a multi-task model
        background = overlay if task == "multitask" else image
        save_image(draw_detections(background, r["boxes"].numpy(), r["labels"].tolist(), r["scores"].tolist(),
                                   predictor.names), outs[0], quality=95)
        record["detections"] = [
            {"bbox_xyxy": [round(v, 2) for v in b], "score": round(s, 4), "label": lab, "category_id": c,
             "name": n}
            for b, s, lab, c, n in zip(r["boxes"].tolist(), r["scores"].tolist(), r["labels"].tolist(),
                                       r["category_ids"], r["names"])]
        print(f"{f}: {len(r['labels'])} detection(s) with score >= {score_thresh} → {outs[0]}")
    return record


@guarded
def main(argv: Sequence[str] | None = None) -> list[dict] | dict[str, Any] | int:
    p = make_parser(__doc__)
    p.add_argument("--ckpt", required=True, help="a checkpoint of tools/train_det.py, train_seg.py or "
                   "train_multitask.py, a model.pt in its run folder, or a model.onnx of tools/export.py")
    p.add_argument("images", nargs="+", help="image files and/or folders of images; or one video file, camera "
                   "index (0, 1, ...) or stream URL (rtsp://, http://, ...)")
    p.add_argument("--out", default="runs/predict", help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="detection: the lowest score kept and drawn. From Python, predict() keeps more by default: "
                        "every box scoring at least the checkpoint's eval.score_thresh (0.001, the threshold mAP is "
                        "measured at), up to eval.detections_per_img (100) per image")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                   help="fused inference: BatchNorm folded, activations fused, channels-last (default: on CPU)")
    p.add_argument("--track", action="store_true",
                   help="a video: ByteTrack track ids per box (detection and multi-task models)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="a video: stop after this many frames (a camera or live stream runs until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="a stream URL: seconds to connect, and between packets, before it counts as unreachable")
    args = add_debug_flag(p).parse_args(argv)
    try:
        check_score_thresh(args.score_thresh, "--score-thresh")
    except ValueError as e:
        raise UserError(str(e)) from None
    sources = [source_argument(a) for a in args.images]
    if any(is_video_source(s) for s in sources):
        return _video(args, sources)
    if args.track or args.max_frames is not None:
        raise UserError("--track and --max-frames apply to a video file, camera or stream, not to images")

    files, skipped = _collect(args.images)
    predictor = mnv2_vision.load(args.ckpt, device=args.device, fuse=args.fuse)
    task = predictor.task
    if task in ("detection", "multitask"):
        # predict() from Python defaults to the checkpoint's mAP threshold: say why these drawings hold fewer boxes
        pp = predictor.spec.postprocess
        print(f"keeping and drawing boxes with score >= {args.score_thresh} (--score-thresh); predict() from Python "
              f"keeps every box >= {pp.score_thresh} (the checkpoint's eval.score_thresh, as mAP is measured), "
              f"up to {pp.detections_per_img} per image", flush=True)
    out_dir = output_folder(args.out)
    remove_temp_files(out_dir)
    suffixes = {"detection": (".jpg",), "segmentation": (".png", "_overlay.jpg"), "multitask": (".jpg", ".png")}[task]
    json_path = _json_path(out_dir)
    earlier = {_real(r["file"]): r for r in _records(json_path)}  # by input file: a re-run replaces its record
    logged = _our_outputs(out_dir)
    inputs = {_real(f) for f in files}
    kept = {name for key, r in earlier.items() if key not in inputs for name in _output_names(r)}
    replaceable = {Path(_real(out_dir / name)) for name in logged - kept}  # never another image's kept output
    outputs = dict(zip(files, plan_outputs(files, out_dir, suffixes, replaceable=replaceable)))
    records: list[dict] = []
    for i in range(0, len(files), args.batch_size):
        batch = _decoded(files[i:i + args.batch_size], predictor, skipped)
        for f, image, r in _predicted(predictor, batch, args.score_thresh, skipped):
            _log_outputs(out_dir, outputs[f], logged)
            try:
                records.append(_write(f, image, r, outputs[f], predictor, args.score_thresh))
            except (MemoryError, RuntimeError) as e:
                if not _out_of_memory(e):
                    raise
                skipped.append(f"{f} ({_oom_reason(image.shape[:2], e)})")
    merged = dict(earlier)
    merged.update((_real(r["file"]), r) for r in records)
    write_json(json_path, list(merged.values()))
    more = f" (with {len(merged) - len(records)} record(s) of earlier calls)" if len(merged) > len(records) else ""
    print(f"wrote {len(records)} image(s)' outputs to {out_dir} and {json_path}{more}")
    if skipped:
        raise DataError(skipped_message(skipped, len(records), f"in {json_path}"))
    return records


def _video(args: argparse.Namespace, sources: list[int | str]) -> dict[str, Any] | int:
    """One video file, camera or stream URL: ``predicting.video.predict_video``."""
    if len(sources) > 1:
        raise UserError(f"a video file, camera or stream is predicted alone: got {len(sources)} inputs "
                        f"({', '.join(map(str, sources[:4]))}{', ...' if len(sources) > 4 else ''})")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames must be ≥ 1, got {args.max_frames}")
    predictor = mnv2_vision.load(args.ckpt, device=args.device, fuse=args.fuse)
    if args.track and predictor.task == "segmentation":
        raise UserError(f"--track needs boxes: {args.ckpt} is a segmentation model")
    out_dir = output_folder(args.out)
    remove_temp_files(out_dir)
    logged = _our_outputs(out_dir)
    summary = predict_video(predictor, sources[0], out_dir, set(logged), score_thresh=args.score_thresh,
                            track=args.track, max_frames=args.max_frames, timeout=args.timeout,
                            log_outputs=lambda outs: _log_outputs(out_dir, outs, logged))
    print(f"{summary['source']}: {summary['frames']} frame(s) → {summary['video']} and {summary['jsonl']}"
          + (" (stopped by Ctrl-C)" if summary.get("stopped") else ""))
    return 130 if summary.get("stopped") else summary


def console() -> int:
    """The ``mnv2-predict`` command and ``python tools/predict.py``: ``main`` with its exit status."""
    return exit_status(main())


if __name__ == "__main__":
    raise SystemExit(console())
