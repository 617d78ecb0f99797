"""Issue #23, predict and the scoring tools: a symlink loop in a predict folder, one exit-status rule for skipped
images, score thresholds that are not a number, predict's own outputs read back as inputs, an image too large for
the memory."""
from __future__ import annotations

import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

import mnv2_vision
import mnv2_vision.commands.predict as commands_predict
from mnv2_vision.commands import cli
from mnv2_vision import predictor as predictor_module
from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import ConfigError, load_config, to_dict
from mnv2_vision.data.synthetic import SHAPE_CLASSES, generate_shapes

from helpers import det_checkpoint as _det_ckpt, fails, seg_checkpoint as _seg_ckpt, tool as _tool

_fails = partial(fails, prefixes=("error:", "stopped:"))


def _console(capsys, monkeypatch, tool: str, argv: list[str]) -> tuple[int, list[str]]:
    """The command line's view of ``tool``: its exit status and the ``error:`` lines on stderr."""
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
    status = _tool(tool).console()
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """2 train / 7 val shapes scenes in the COCO and VOC layouts, 2 val images per class in the ImageFolder one."""
    return generate_shapes(tmp_path_factory.mktemp("tiny"), num_train=2, num_val=7, num_cls_train=0, num_cls_val=2)


def _cls_ckpt(path: Path, root: Path) -> Path:
    cfg = load_config("mobilenet_v2_shapes", ["data.synthetic=false", f"data.root={root / 'classification'}",
                                              "model.width_mult=0.35", f"model.num_classes={len(SHAPE_CLASSES)}",
                                              "data.val_batch_size=3"])
    model = build_from_config(cfg, pretrained=False)
    torch.save({"hyper_parameters": {"config": to_dict(cfg), "classes": sorted(SHAPE_CLASSES)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])  # a truncated JPEG


def _photos(folder: Path, tiny: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, src in zip(names, sorted((tiny / "coco" / "val2017").glob("*.jpg"))):
        shutil.copy(src, folder / name)
    return folder


def _image_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix in (".jpg", ".png")}


# ---------------------------------------------------------------------------------------------- 6: symlinks
def test_a_symlink_loop_or_a_broken_link_in_a_predict_folder_is_skipped_and_listed(tmp_path, tiny, capsys):
    folder = _photos(tmp_path / "photos", tiny, ("good.jpg",))
    os.symlink("loop.jpg", folder / "loop.jpg")  # a link to itself
    os.symlink("gone.jpg", folder / "dangling.jpg")  # a link to nothing
    os.symlink("..", folder / "up")  # a folder cycle: photos/up/photos/up/...
    os.symlink(".", folder / "here.jpg")  # a folder that looks like an image
    out = tmp_path / "out"
    line = _fails(capsys, "predict", ["--ckpt", str(_det_ckpt(tmp_path / "det.ckpt", tiny)), str(folder),
                                      "--out", str(out)], code=1)
    assert line == (f"error: skipped 2 of 3 image(s) that could not be used: {folder / 'dangling.jpg'} (a broken "
                    f"symlink: gone.jpg does not exist); {folder / 'loop.jpg'} (a symlink loop). The other 1 are in "
                    f"{out / 'predictions.json'}")
    assert [Path(r["file"]).name for r in json.loads((out / "predictions.json").read_text())] == ["good.jpg"]
    assert _image_files(out) == {"good.jpg"}
    # The Python API lists a folder's images the same way: no folder, nothing below it; a broken link is an error
    # naming it when predicted (the API predicts every image it is given or raises).
    assert [p.name for p in predictor_module.expand_inputs(folder)] == ["dangling.jpg", "good.jpg", "loop.jpg"]
    # Into the folder itself, where links hold the names its output would take: they are the user's, left alone.
    os.symlink("good_1.jpg", folder / "good_1.jpg")
    os.symlink("gone.jpg", folder / "good_2.jpg")
    _fails(capsys, "predict", ["--ckpt", str(tmp_path / "det.ckpt"), str(folder), "--out", str(folder)], code=1)
    assert [Path(o).name for r in json.loads((folder / "predictions.json").read_text()) for o in r["outputs"]] == \
        ["good_3.jpg"]
    assert os.readlink(folder / "good_1.jpg") == "good_1.jpg" and os.readlink(folder / "good_2.jpg") == "gone.jpg"


# ---------------------------------------------------------------------------------------------- 10: one exit rule
def test_every_scoring_tool_exits_1_naming_the_images_it_skipped(tmp_path, tiny, capsys, monkeypatch):
    ids = (tiny / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    voc = tmp_path / "voc"
    shutil.copytree(tiny / "VOC2012", voc)
    _corrupt(voc / "JPEGImages" / f"{ids[1]}.jpg")
    status, err = _console(capsys, monkeypatch, "eval_seg",
                           ["--ckpt", str(_seg_ckpt(tmp_path / "seg.ckpt", tiny)), "--set", f"data.root={voc}"])
    assert status == 1 and len(err) == 1, (status, err)
    assert err[0].startswith(f"error: skipped 1 of 7 image(s) that could not be used: {ids[1]} (cannot read image")
    assert err[0].endswith("The other 6 are scored in the results above")

    coco = tmp_path / "coco"
    shutil.copytree(tiny / "coco", coco)
    bad = sorted((coco / "val2017").glob("*.jpg"))[3]
    _corrupt(bad)
    status, err = _console(capsys, monkeypatch, "eval_det", ["--ckpt", str(_det_ckpt(tmp_path / "det.ckpt", tiny)),
                                                             "--out", str(tmp_path / "eval_det"),
                                                             "--set", f"data.root={coco}"])
    assert status == 1 and len(err) == 1 and f"skipped 1 of 7 image(s) that could not be used: {bad}" in err[0]
    assert json.loads((tmp_path / "eval_det" / "metrics_val2017.json").read_text())["num_images"] == 6

    cls = tmp_path / "cls"
    shutil.copytree(tiny / "classification", cls)
    bad = sorted((cls / "val").rglob("*.jpg"))[2]
    _corrupt(bad)
    ckpt = _cls_ckpt(tmp_path / "cls.ckpt", tiny)
    status, err = _console(capsys, monkeypatch, "eval_cls",
                           ["--ckpt", str(ckpt), "--root", str(cls), "--out", str(tmp_path / "eval_cls")])
    total = 2 * len(SHAPE_CLASSES)
    assert status == 1 and len(err) == 1, (status, err)
    assert err[0].startswith(f"error: skipped 1 of {total} image(s) that could not be used: {bad} (cannot read")
    metrics = json.loads((tmp_path / "eval_cls" / "metrics.json").read_text())
    assert metrics["num_images"] == metrics["images"] == total - 1 and len(metrics["skipped_images"]) == 1
    # Python callers of main get the result dict, skipped images listed; nothing skipped: exit status 0
    result = _tool("eval_cls").main(["--ckpt", str(ckpt), "--root", str(tiny / "classification"),
                                     "--out", str(tmp_path / "eval_cls_clean")])
    assert result["num_images"] == total and result["skipped_images"] == []
    assert cli.exit_status(result) == 0


# ---------------------------------------------------------------------------------------------- 10: score_thresh
@pytest.mark.parametrize("value", [float("nan"), -0.1, 1.5])
def test_a_score_threshold_outside_0_1_is_one_error_naming_it(value, tmp_path, tiny, capsys):
    ckpt = _det_ckpt(tmp_path / "det.ckpt", tiny)
    image = sorted((tiny / "coco" / "val2017").glob("*.jpg"))[0]
    with pytest.raises(ValueError, match=r"^score_thresh must be a number in \[0, 1\]"):
        mnv2_vision.load(ckpt).predict(image, score_thresh=value)
    line = _fails(capsys, "predict", ["--ckpt", str(ckpt), str(image), "--out", str(tmp_path / "out"),
                                      "--score-thresh", str(value)])
    assert line == f"error: --score-thresh must be a number in [0, 1] (the lowest score kept), got {value}"
    assert not (tmp_path / "out").exists()
    yaml_value = ".nan" if value != value else str(value)
    with pytest.raises(ConfigError, match=r"eval\.score_thresh"):
        load_config("ssdlite_shapes", [f"eval.score_thresh={yaml_value}"])


# ---------------------------------------------------------------------------------------------- 10: predict's outputs
def test_predict_never_reads_its_own_earlier_outputs_and_keeps_earlier_records(tmp_path, tiny, capsys, monkeypatch):
    folder = _photos(tmp_path / "photos", tiny, ("other.jpg", "photo.jpg"))
    ckpt = str(_det_ckpt(tmp_path / "det.ckpt", tiny))
    predict = _tool("predict")
    first = predict.main(["--ckpt", ckpt, str(folder), "--out", str(folder)])
    assert [Path(o).name for r in first for o in r["outputs"]] == ["other_1.jpg", "photo_1.jpg"]
    # One image again: its record is replaced, the other image's record stays.
    predict.main(["--ckpt", ckpt, str(folder / "photo.jpg"), "--out", str(folder)])
    records = json.loads((folder / "predictions.json").read_text())
    assert [(Path(r["file"]).name, [Path(o).name for o in r["outputs"]]) for r in records] == [
        ("other.jpg", ["other_1.jpg"]), ("photo.jpg", ["photo_1.jpg"])]
    # The whole folder again: the drawings of both earlier calls are outputs, not inputs.
    again = predict.main(["--ckpt", ckpt, str(folder), "--out", str(folder)])
    assert [Path(r["file"]).name for r in again] == ["other.jpg", "photo.jpg"]
    assert _image_files(folder) == {"other.jpg", "other_1.jpg", "photo.jpg", "photo_1.jpg"}
    # Named one by one (a shell's photos/*.jpg): a drawing is left out too, said on stdout.
    capsys.readouterr()
    named = predict.main(["--ckpt", ckpt, *sorted(str(p) for p in folder.glob("*.jpg")), "--out", str(folder)])
    assert [Path(r["file"]).name for r in named] == ["other.jpg", "photo.jpg"]
    assert f"not reading {folder / 'other_1.jpg'}: an output of an earlier tools/predict.py call" in \
        capsys.readouterr().out

    # A call stopped after its first drawing (Ctrl-C) has not written predictions.json: the drawing is still known.
    fresh = _photos(tmp_path / "fresh", tiny, ("a.jpg", "b.jpg"))
    write = commands_predict._write
    calls = []

    def stopped_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return write(*args, **kwargs)

    monkeypatch.setattr(commands_predict, "_write", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        predict.main(["--ckpt", ckpt, str(fresh), "--out", str(fresh), "--batch-size", "1"])
    monkeypatch.setattr(commands_predict, "_write", write)
    assert _image_files(fresh) == {"a.jpg", "a_1.jpg", "b.jpg"} and not (fresh / "predictions.json").exists()
    after = predict.main(["--ckpt", ckpt, str(fresh), "--out", str(fresh)])
    assert [(Path(r["file"]).name, [Path(o).name for o in r["outputs"]]) for r in after] == [
        ("a.jpg", ["a_1.jpg"]), ("b.jpg", ["b_1.jpg"])]


# ---------------------------------------------------------------------------------------------- 10: large images
def _seg_folder(tmp_path: Path, tiny: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, src in zip(("a.jpg", "c.jpg"), sorted((tiny / "VOC2012" / "JPEGImages").glob("*.jpg"))):
        shutil.copy(src, folder / name)
    return folder


def test_an_image_too_large_for_the_memory_is_skipped_and_the_others_written(tmp_path, tiny, capsys, monkeypatch):
    folder = _seg_folder(tmp_path, tiny)
    Image.new("1", (10000, 10000)).save(folder / "b_huge.png")  # 100 Mpx in a few kB
    monkeypatch.setattr(commands_predict, "available_memory", lambda: 4 * 2**30, raising=False)
    out = tmp_path / "out"
    ckpt = _seg_ckpt(tmp_path / "seg.ckpt", tiny)
    line = _fails(capsys, "predict", ["--ckpt", str(ckpt), str(folder), "--out", str(out)], code=1)
    assert line.startswith(f"error: skipped 1 of 3 image(s) that could not be used: {folder / 'b_huge.png'} (too "
                           "large to process: 10000×10000 px needs at least ")
    assert line.endswith(" GB, 4.0 GB is available). The other 2 are in " + str(out / "predictions.json"))
    assert [Path(r["file"]).name for r in json.loads((out / "predictions.json").read_text())] == ["a.jpg", "c.jpg"]
    assert _image_files(out) == {"a.png", "a_overlay.jpg", "c.png", "c_overlay.jpg"}


def test_an_out_of_memory_image_costs_only_itself_not_its_batch(tmp_path, tiny, capsys, monkeypatch):
    folder = _seg_folder(tmp_path, tiny)
    Image.new("RGB", (97, 89), (40, 80, 120)).save(folder / "b_odd.png")
    predictor_cls = predictor_module.Predictor
    segment = predictor_cls._segment

    def fails_for_97_wide(self, images, probs):  # what an allocator under a memory limit does for one large image
        if any(im.shape[1] == 97 for im in images):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 35429760000 bytes. Error code 12 (Cannot allocate memory)")
        return segment(self, images, probs)

    monkeypatch.setattr(predictor_cls, "_segment", fails_for_97_wide)
    out = tmp_path / "out"
    line = _fails(capsys, "predict", ["--ckpt", str(_seg_ckpt(tmp_path / "seg.ckpt", tiny)), str(folder),
                                      "--out", str(out), "--batch-size", "3"], code=1)
    assert line == (f"error: skipped 1 of 3 image(s) that could not be used: {folder / 'b_odd.png'} (too large to "
                    "process: 97×89 px, out of memory: DefaultCPUAllocator: can't allocate memory: you tried to "
                    "allocate 35429760000 bytes. Error code 12 (Cannot allocate memory)). The other 2 are in "
                    + str(out / "predictions.json"))
    assert [Path(r["file"]).name for r in json.loads((out / "predictions.json").read_text())] == ["a.jpg", "c.jpg"]
    monkeypatch.setattr(predictor_cls, "_segment", lambda self, images, probs: (_ for _ in ()).throw(MemoryError()))
    line = _fails(capsys, "predict", ["--ckpt", str(_seg_ckpt(tmp_path / "seg.ckpt", tiny)), str(folder / "a.jpg"),
                                      "--out", str(tmp_path / "out2")], code=1)
    assert "a.jpg (too large to process: " in line and " px, out of memory: MemoryError)" in line
