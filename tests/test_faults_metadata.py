"""An exported model's metadata and a run folder's ``classes.json`` are user input (issue #23, defects 3 and 4):
``load`` checks them before anything runs and refuses a bad one in one line naming the file and the key, through
``mnv2_vision.load`` and through ``tools/predict.py`` (exit 2, one stderr line). The fuzz tests mutate one exported
detection model's metadata and a ``classes.json`` of each task: every mutation gives a result or that one line."""
from __future__ import annotations

import copy
import json
import math
import random
import string
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import mnv2_vision
from mnv2_runtime.errors import ModelError
from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, save_config, to_dict
from mnv2_vision.errors import CheckpointError

from helpers import fails, tool as _tool

_fails = partial(fails, prefixes=("error: ",), alone=True)

SHAPE_NAMES = ["background", "circle", "square", "star", "triangle"]
CLASSES = {  # classes.json as train_det, train_seg and train_multitask write it
    "detection": {"category_ids": [1, 3, 4, 7], "category_names": SHAPE_NAMES[1:]},
    "segmentation": {"class_names": SHAPE_NAMES},
    "multitask": {"category_ids": [1, 3, 4, 7], "category_names": SHAPE_NAMES[1:], "class_names": SHAPE_NAMES},
}
# Every key tools/export.py writes, and the one another tool (quantize) adds.
METADATA_KEYS = ("model_name", "task", "producer", "input_name", "input_layout", "input_size", "color_order",
                 "pixel_scaling", "mean", "std", "config", "class_names", "category_ids", "resize", "box_format",
                 "detection_output", "box_coder_weights", "postprocess", "seg_class_names", "ignore_index",
                 "seg_output", "quantization")


def _config(task: str):
    name, extra = {"detection": ("ssdlite_shapes", ["model.num_classes=5"]),
                   "segmentation": ("deeplabv3_shapes", ["model.num_classes=5"]),
                   "multitask": ("multitask_shapes", ["model.num_classes=5", "model.seg_num_classes=5"])}[task]
    return load_config(name, ["data.image_size=64", "model.width_mult=0.35", "data.num_workers=0", *extra])


def _checkpoint(path: Path, task: str) -> Path:
    """A checkpoint as training writes it (random weights: these tests check files, keys and messages)."""
    torch.manual_seed(0)
    cfg = _config(task)
    model = build_from_config(cfg, pretrained=False)
    hparams = {"detection": CLASSES["detection"], "segmentation": {"class_names": SHAPE_NAMES},
               "multitask": CLASSES["multitask"]}[task]
    torch.save({"hyper_parameters": {"config": to_dict(cfg), **hparams},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _export(tmp_path_factory, task: str) -> Path:
    folder = tmp_path_factory.mktemp(f"export_{task}")
    ckpt = _checkpoint(folder / "last.ckpt", task)
    return Path(_tool("export").main(["--ckpt", str(ckpt), "--out", str(folder), "--check-images", "0",
                                      "--threads", "1"])["onnx"])


@pytest.fixture(scope="module")
def det_onnx(tmp_path_factory) -> Path:
    """One tiny detection model (NMS in the graph) exported by tools/export.py."""
    return _export(tmp_path_factory, "detection")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "photo.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 56, 3), np.uint8)).save(path)
    return path


def _run_folder(folder: Path, task: str) -> Path:
    """``model.pt`` and ``config.yaml`` of a run folder (its ``classes.json`` is each test's)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = _config(task)
    torch.save(build_from_config(cfg, pretrained=False).state_dict(), folder / "model.pt")
    save_config(cfg, folder / "config.yaml")
    return folder / "model.pt"


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {task: _run_folder(root / task, task) for task in ("detection", "segmentation")}


def _props(path: Path) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in onnx.load(str(path)).metadata_props]


def _with_props(src: Path, dst: Path, props: dict[str, str]) -> Path:
    """``src`` with its metadata replaced by ``props`` (the graph untouched), written to ``dst``."""
    model = onnx.load(str(src))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def _assert_names(msg: str, source: str, key: str) -> None:
    assert len(msg.splitlines()) == 1 and source in msg and f"'{key}'" in msg, msg


# ---------------------------------------------------------------------------------------------- 3: ONNX metadata
EDITS = {
    "mean of length 2": ("mean", "[0.485, 0.456]"),
    "std 0": ("std", "[0.229, 0, 0.225]"),
    "input size 0": ("input_size", "[0, 0]"),
    "input size -5": ("input_size", "[-5, -5]"),
    "input size 100000": ("input_size", "[100000, 100000]"),
    "short class names": ("class_names", '["background", "circle"]'),
    "empty postprocess": ("postprocess", "{}"),
    "wrong task": ("task", "segmentation"),
    "100k-deep JSON": ("class_names", "[" * 100_000 + "]" * 100_000),
    "malformed class_names JSON": ("class_names", '["background", "circle", "square", "star", "triangle"'),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_onnx_metadata_value_is_one_line_naming_file_and_key(edit, det_onnx, image, tmp_path, capsys):
    key, value = EDITS[edit]
    path = _with_props(det_onnx, tmp_path / "model.onnx", {**dict(_props(det_onnx)), key: value})
    with pytest.raises(CheckpointError) as e:
        mnv2_vision.load(path, device="cpu")
    _assert_names(str(e.value), str(path), key)
    line = _fails(capsys, "predict", ["--ckpt", str(path), str(image), "--out", str(tmp_path / "out")])
    assert line == f"error: {e.value}"


def test_a_removed_metadata_key_is_named(det_onnx, tmp_path):
    props = dict(_props(det_onnx))
    del props["category_ids"]
    path = _with_props(det_onnx, tmp_path / "model.onnx", props)
    with pytest.raises(CheckpointError) as e:
        mnv2_vision.load(path, device="cpu")
    _assert_names(str(e.value), str(path), "category_ids")


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "broken graph"])
def test_an_unreadable_onnx_file_is_one_line_naming_it(kind, det_onnx, image, tmp_path, capsys):
    data = det_onnx.read_bytes()
    path = tmp_path / "model.onnx"
    if kind == "broken graph":  # a model that parses, with a node gone: ONNX Runtime cannot build it
        model = onnx.load(str(det_onnx))
        del model.graph.node[0]
        onnx.save(model, str(path))
    else:
        path.write_bytes({"random": np.random.RandomState(0).bytes(5000), "truncated": data[:len(data) // 2],
                          "empty": b""}[kind])
    with pytest.raises(CheckpointError) as e:
        mnv2_vision.load(path, device="cpu")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"{path} ") and "tools/export.py" in msg, msg
    line = _fails(capsys, "predict", ["--ckpt", str(path), str(image), "--out", str(tmp_path / "out")])
    assert line == f"error: {msg}"


def test_freshly_exported_models_pass_the_metadata_check(det_onnx, image, tmp_path_factory):
    """Guards the schema against drift: what tools/export.py writes for each task is what load accepts."""
    from mnv2_runtime.metadata import decode_props, validate_metadata

    for task, path in (("detection", det_onnx), ("segmentation", _export(tmp_path_factory, "segmentation")),
                       ("multitask", _export(tmp_path_factory, "multitask"))):
        meta = validate_metadata(decode_props(_props(path), str(path)), str(path))
        assert meta["task"] == task and set(meta) <= set(METADATA_KEYS), sorted(set(meta) - set(METADATA_KEYS))
        predictor = mnv2_vision.load(path, device="cpu")
        [result] = predictor.predict(image)
        assert predictor.names == SHAPE_NAMES and result["size"] == (40, 56)
        assert ("mask" in result) == (task != "detection") and ("boxes" in result) == (task != "segmentation")
        if task == "detection":
            assert predictor.category_ids == [1, 3, 4, 7] and meta["detection_output"] == "nms"


def test_a_label_beyond_the_class_names_is_one_line(det_onnx, image, tmp_path):
    """The class count of a graph with NMS inside shows in no output shape: names for fewer classes than the model
    predicts (the config that would show it removed) fail when such a label comes, naming the key."""
    props = {**dict(_props(det_onnx)), "class_names": '["background", "circle"]', "category_ids": "[1]"}
    del props["config"]
    path = _with_props(det_onnx, tmp_path / "model.onnx", props)
    predictor = mnv2_vision.load(path, device="cpu")
    with pytest.raises(CheckpointError) as e:
        predictor.predict(image, score_thresh=0.0)
    _assert_names(str(e.value), str(path), "class_names")


def test_the_graph_outputs_are_compared_with_the_metadata():
    """What the graph shows (output names, fixed input size, the class counts of its logits) must agree."""
    from mnv2_runtime.metadata import GraphInfo, check_graph

    images = {"images": (None, 3, 64, 64)}
    raw = {"cls_logits": (None, 100, 5), "bbox_regression": (None, 100, 4), "anchors": (None, 100, 4)}
    det = {"task": "detection", "input_size": [64, 64], "class_names": SHAPE_NAMES, "detection_output": "raw"}
    check_graph(det, GraphInfo(images, raw), "m.onnx")
    seg = {"task": "segmentation", "input_size": [64, 64], "class_names": SHAPE_NAMES}
    check_graph(seg, GraphInfo({"images": (None, 3, None, None)}, {"logits": (None, 5, None, None)}), "m.onnx")
    mt = {**det, "task": "multitask", "seg_class_names": SHAPE_NAMES}
    for meta, graph, key in [
        ({**det, "class_names": SHAPE_NAMES[:3]}, GraphInfo(images, raw), "class_names"),
        ({**det, "input_size": [96, 96]}, GraphInfo(images, raw), "input_size"),
        ({**det, "detection_output": "nms"}, GraphInfo(images, raw), "detection_output"),
        (det, GraphInfo(images, {"logits": (None, 5, 64, 64)}), "task"),
        (seg, GraphInfo(images, {"logits": (None, 21, None, None)}), "class_names"),
        ({**mt, "seg_class_names": SHAPE_NAMES[:2]}, GraphInfo(images, {**raw, "logits": (None, 5, 64, 64)}),
         "seg_class_names"),
        (mt, GraphInfo(images, raw), "task"),
    ]:
        with pytest.raises(ModelError) as e:
            check_graph(meta, graph, "m.onnx")
        _assert_names(str(e.value), "m.onnx", key)


def test_export_refuses_metadata_that_load_would_refuse(tmp_path, capsys):
    """The exporter checks what it writes with the loader's rules: nothing is written, the line names the key and
    the checkpoint the value comes from."""
    ckpt = torch.load(_checkpoint(tmp_path / "last.ckpt", "detection"), weights_only=False)
    ckpt["hyper_parameters"]["config"]["data"]["mean"] = [20.0, 0.456, 0.406]
    torch.save(ckpt, tmp_path / "last.ckpt")
    line = _fails(capsys, "export", ["--ckpt", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "out"),
                                     "--check-images", "0", "--threads", "1"])
    _assert_names(line, str(tmp_path / "out" / "model.onnx"), "mean")
    assert str(tmp_path / "last.ckpt") in line and not (tmp_path / "out" / "model.onnx").exists()


# ---------------------------------------------------------------------------------------------- 4: classes.json
BAD_CLASSES = {
    "truncated": ("detection", '{"category_ids": [1, 3, 4, 7], "category_na', "JSON"),
    "a list": ("detection", "[1, 3, 4, 7]", "category_ids"),
    "fewer ids than classes": ("detection", '{"category_ids": [1, 3], "category_names": ["circle", "square"]}',
                               "category_ids"),
    "ids as text": ("detection", '{"category_ids": ["1", "3", "4", "7"], "category_names": ["a", "b", "c", "d"]}',
                    "category_ids"),
    "fewer names than ids": ("detection", '{"category_ids": [1, 3, 4, 7], "category_names": ["circle"]}',
                             "category_names"),
    "names not text": ("detection", '{"category_ids": [1, 3, 4, 7], "category_names": [1, 2, 3, 4]}',
                       "category_names"),
    "segmentation: fewer names": ("segmentation", '{"class_names": ["background", "circle"]}', "class_names"),
    "segmentation: a detection label map": ("segmentation", json.dumps(CLASSES["detection"]), "class_names"),
}


@pytest.mark.parametrize("case", list(BAD_CLASSES))
def test_a_bad_classes_json_is_one_line_naming_it_and_the_key(case, run_folders, image, tmp_path, capsys):
    task, text, key = BAD_CLASSES[case]
    model_pt = run_folders[task]
    classes = model_pt.parent / "classes.json"
    classes.write_text(text)
    with pytest.raises(CheckpointError) as e:
        mnv2_vision.load(model_pt, device="cpu", fuse=False)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(classes) in msg, msg
    assert (f"'{key}'" if key != "JSON" else "not valid JSON") in msg, msg
    line = _fails(capsys, "predict", ["--ckpt", str(model_pt), str(image), "--out", str(tmp_path / "out")])
    assert line == f"error: {msg}"


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_the_classes_json_training_writes_is_accepted(task, run_folders, image):
    model_pt = run_folders[task]
    (model_pt.parent / "classes.json").write_text(json.dumps(CLASSES[task]))
    predictor = mnv2_vision.load(model_pt, device="cpu", fuse=False)
    assert predictor.names == SHAPE_NAMES and len(predictor.predict(image)) == 1


def test_every_task_form_of_classes_json_is_checked():
    from mnv2_runtime.metadata import parse_label_map

    for task, counts in (("detection", (5, None)), ("segmentation", (5, None)), ("multitask", (5, 5))):
        assert parse_label_map(json.dumps(CLASSES[task]), "run/classes.json", task, *counts) == CLASSES[task]
    bad = {**CLASSES["multitask"], "class_names": SHAPE_NAMES[:3]}
    with pytest.raises(ModelError) as e:
        parse_label_map(json.dumps(bad), "run/classes.json", "multitask", 5, 5)
    _assert_names(str(e.value), "run/classes.json", "class_names")


# ---------------------------------------------------------------------------------------------- fuzz
_TEXT = string.ascii_letters + string.digits + " _-.,:/\\\"'{}[]\t\nÄéßøΩж中文字🙂\u200b\u202e\u2028\x00"


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_TEXT) for _ in range(n))


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 3 else []))
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 3, 4, 5, 64, 2 ** 31, 2 ** 63, -10 ** 6, rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.0, 0.5, -0.5, 1e-300, 1e300, math.nan, math.inf, -math.inf, rng.uniform(-2, 2)])
    if kind == "str":
        return _text(rng, rng.randrange(12))
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {_text(rng, rng.randrange(1, 6)): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value * factor
    if isinstance(value, list):
        return [_scaled(v, factor) for v in value]
    if isinstance(value, dict):
        return {k: _scaled(v, factor) for k, v in value.items()}
    return value


def _mutate(rng: random.Random, raw: str | None) -> str | None:
    """One random mutation of a JSON (or plain text) value; ``None``: the key removed."""
    raw = raw if raw is not None else "null"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # a value an earlier mutation made invalid, or deep
        value = raw
    op = rng.randrange(13)
    if op == 0:
        return None
    if op == 1:
        return json.dumps(_random_json(rng))
    if op == 2:  # deep nesting
        d = rng.choice([8, 33, 200, 1000, 100_000])
        return "[" * d + "]" * d if rng.random() < 0.5 else '{"a":' * d + "0" + "}" * d
    if op == 3:  # huge and tiny numbers
        return rng.choice(["1e400", "-1e400", "9" * 5000, str(2 ** 64), "1e-400", "-0", "[1e400, 1, 1]", "[9e99]"])
    if op == 4:  # NaN / Infinity, alone or inside a list
        bad = rng.choice([math.nan, math.inf, -math.inf])
        if isinstance(value, list) and value:
            value = list(value)
            value[rng.randrange(len(value))] = bad
            return json.dumps(value)
        return json.dumps(bad)
    if op == 5:  # wrong lengths
        if isinstance(value, list):
            k = rng.randrange(1, 4)
            return json.dumps(rng.choice([value[:-k], value + value[:k], [], value * 30]))
        if isinstance(value, dict) and value:
            value = dict(value)
            if rng.random() < 0.5:
                del value[rng.choice(list(value))]
            else:
                value[_text(rng, 4)] = _random_json(rng)
            return json.dumps(value)
        return json.dumps([value, value])
    if op == 6:  # invalid JSON
        return rng.choice([raw[:rng.randrange(len(raw))] if raw else "{", raw + rng.choice(["}", "]", ",", '"']),
                           raw.replace('"', "'"), "{'a': 1}", "[1, 2,]", "undefined"])
    if op == 7:  # long strings
        long = "x" * rng.choice([300, 100_000, 1_000_000])
        return rng.choice([json.dumps(long), json.dumps([long] * 3), long])
    if op == 8:  # unicode
        if isinstance(value, list) and value:
            value = list(value)
            value[rng.randrange(len(value))] = _text(rng, rng.randrange(1, 20))
            return json.dumps(value, ensure_ascii=rng.random() < 0.5)
        return _text(rng, rng.randrange(1, 20))
    if op == 9:  # one element replaced
        if isinstance(value, list) and value:
            value = list(value)
            value[rng.randrange(len(value))] = _random_json(rng)
            return json.dumps(value)
        if isinstance(value, dict) and value:
            value = copy.deepcopy(value)
            value[rng.choice(list(value))] = _random_json(rng)
            return json.dumps(value)
        return json.dumps(_random_json(rng))
    if op == 10:  # another type of the same value
        return json.dumps(rng.choice([str(value), [value], {"value": value}, _scaled(value, 1.0)]))
    if op == 11:  # numbers scaled
        return json.dumps(_scaled(value, rng.choice([0, -1, 2, 1e6, 1e-9, 1.0001, 0.5])))
    return rng.choice(["detection", "segmentation", "multitask", "classification", "nms", "raw", "NHWC", "BGR", "",
                       "images", "[]", "{}", "[64]", "[64, 64]", "[64, 64, 64]", "0", "true"])


def _mutated(rng: random.Random, props: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """``props`` with 1 to 3 random keys mutated (or added), and those keys."""
    props, keys = dict(props), set()
    for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
        key = rng.choice([*props, "extra_key"])
        keys.add(key)
        value = _mutate(rng, props.get(key))
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    return props, keys


def _check_refusal(error: BaseException, source: str, keys: set[str], counts: dict[str, int]) -> None:
    """A refusal is one ``CheckpointError`` line naming the file and a key (the mutated one, or one it affects)."""
    assert type(error) is CheckpointError, repr(error)
    msg = str(error)
    named = [k for k in (*METADATA_KEYS, *CLASSES["multitask"], *keys) if f"'{k}'" in msg]
    assert len(msg.splitlines()) == 1 and source in msg and named and len(msg) < 600, msg
    counts["refused"] += 1


def _fuzz_onnx_metadata(det_onnx: Path, image: Path, n: int, seed: int) -> dict[str, int]:
    """``n`` mutations of the detection model's metadata checked as ``load`` checks them; each accepted one that
    changes what the predictor uses predicts an image with the file's own ONNX Runtime session."""
    from mnv2_runtime import Model
    from mnv2_runtime.backends.onnx import OnnxBackend
    from mnv2_runtime.metadata import checked_metadata
    from mnv2_vision.predictor import Predictor, _runtime_errors, _spec_from_metadata

    rng = random.Random(seed)
    backend = OnnxBackend(det_onnx, 1)
    base, source = dict(_props(det_onnx)), "fuzz/model.onnx"
    counts, seen = {"accepted": 0, "refused": 0, "predicted": 0}, set()
    for _ in range(n):
        props, keys = _mutated(rng, base)
        try:
            with _runtime_errors():  # mnv2_vision.load's conversion of the runtime's ModelError
                meta = checked_metadata(props.items(), backend.graph, source)
        except Exception as e:  # noqa: BLE001 - the property: only one kind of error
            _check_refusal(e, source, keys, counts)
            continue
        counts["accepted"] += 1
        spec = _spec_from_metadata(meta)
        if repr(spec) not in seen:
            seen.add(repr(spec))
            try:
                with _runtime_errors():
                    model = Model(backend, source, metadata=meta)
                [result] = Predictor(model, spec, torch.device("cpu"), source).predict(image)
                assert result["size"] == (40, 56) and len(result["names"]) == len(result["labels"])
                counts["predicted"] += 1
            except Exception as e:  # noqa: BLE001
                _check_refusal(e, source, keys, counts)
    return counts


def _file_mutation(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        return data[:rng.randrange(len(data))]
    if op == 1:
        return rng.randbytes(rng.randrange(1, 5000))
    if op == 2:
        return b""
    flipped = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped)


def _fuzz_onnx_files(det_onnx: Path, image: Path, folder: Path, n: int, seed: int) -> dict[str, int]:
    """``n`` full round trips: a mutated file (metadata, or the bytes themselves), ``mnv2_vision.load``, one
    prediction."""
    rng = random.Random(seed)
    base, data = dict(_props(det_onnx)), det_onnx.read_bytes()
    counts = {"accepted": 0, "refused": 0}
    for i in range(n):
        path = folder / f"m{i}.onnx"
        keys: set[str] = set()
        if rng.random() < 0.2:
            path.write_bytes(_file_mutation(rng, data))
        else:
            props, keys = _mutated(rng, base)
            _with_props(det_onnx, path, props)
        try:
            [result] = mnv2_vision.load(path, device="cpu", threads=1).predict(image)
            assert result["size"] == (40, 56)
            counts["accepted"] += 1
        except Exception as e:  # noqa: BLE001
            assert type(e) is CheckpointError and len(str(e).splitlines()) == 1 and str(path) in str(e), repr(e)
            counts["refused"] += 1
        path.unlink()
    return counts


FILE_PROBLEMS = ("is not valid JSON", "nested deeper", "number with too many digits", "characters, more than",
                 "must hold a JSON object with keys")


def _fuzz_classes_json(run_folders: dict[str, Path], image: Path, n: int, seed: int) -> dict[str, int]:
    """``n`` mutations of each task's classes.json checked as ``load`` checks them; the first ten distinct accepted
    label maps of each task with a run folder predict an image (detection: the labels' names and ids come from
    them)."""
    from mnv2_runtime.metadata import parse_label_map
    from mnv2_vision.predictor import Predictor, _runtime_errors

    rng = random.Random(seed)
    counts = {"accepted": 0, "refused": 0, "predicted": 0}
    models = {}
    for task, model_pt in run_folders.items():
        cfg = load_config(model_pt.parent / "config.yaml")
        model = build_from_config(cfg, pretrained=False)
        model.load_state_dict(torch.load(model_pt, weights_only=True))
        models[task] = (cfg, model, set())
    for i in range(n):
        task = ("detection", "segmentation", "multitask")[i % 3]
        source = f"fuzz/{task}/classes.json"
        text = json.dumps(CLASSES[task])
        if rng.random() < 0.25:  # the whole file
            text, keys = _mutate(rng, text) or "", set()
        else:
            props, keys = _mutated(rng, {k: json.dumps(v) for k, v in CLASSES[task].items()})
            text = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in props.items()) + "}"
        try:
            with _runtime_errors():  # as mnv2_vision.load reads a classes.json
                hparams = parse_label_map(text, source, task, 5, 5 if task == "multitask" else None)
        except Exception as e:  # noqa: BLE001
            if str(e).startswith(f"{source} "):  # no JSON object (one document: a syntax error is the file's)
                assert type(e) is CheckpointError and len(str(e).splitlines()) == 1, repr(e)
                assert any(p in str(e) for p in FILE_PROBLEMS), str(e)
                counts["refused"] += 1
            else:
                _check_refusal(e, source, keys, counts)
            continue
        counts["accepted"] += 1
        seen = models[task][2] if task in models else None
        if seen is not None and len(seen) < 10 and json.dumps(hparams, sort_keys=True) not in seen:
            cfg, model, seen = models[task]
            seen.add(json.dumps(hparams, sort_keys=True))
            [result] = Predictor.from_model(model, cfg, hparams, device="cpu", fuse=False).predict(
                image, **({"score_thresh": 0.0} if task == "detection" else {}))
            assert result["size"] == (40, 56)
            counts["predicted"] += 1
    return counts


def test_fuzzed_onnx_metadata_gives_a_result_or_one_line(det_onnx, image, tmp_path):
    t0 = time.perf_counter()
    counts = _fuzz_onnx_metadata(det_onnx, image, 1000, seed=0)
    seconds = time.perf_counter() - t0
    print(f"ONNX metadata fuzz: 1000 mutations, {counts}, {seconds:.1f} s")
    assert counts["accepted"] + counts["refused"] >= 1000 and counts["accepted"] > 50 and counts["refused"] > 500
    t0 = time.perf_counter()
    files = _fuzz_onnx_files(det_onnx, image, tmp_path, 30, seed=1)
    print(f"ONNX file round trips: 30, {files}, {time.perf_counter() - t0:.1f} s")
    assert sum(files.values()) == 30 and files["refused"] > 10


def test_fuzzed_classes_json_gives_a_result_or_one_line(run_folders, image):
    t0 = time.perf_counter()
    counts = _fuzz_classes_json(run_folders, image, 1000, seed=0)
    print(f"classes.json fuzz: 1000 mutations, {counts}, {time.perf_counter() - t0:.1f} s")
    assert counts["accepted"] + counts["refused"] == 1000 and counts["accepted"] > 50 and counts["refused"] > 500


@pytest.mark.slow
def test_fuzzed_metadata_long_run(det_onnx, run_folders, image, tmp_path):
    """The longer run: more seeds, and every ONNX mutation as a full file round trip through ``load``."""
    for seed in range(1, 6):
        _fuzz_onnx_metadata(det_onnx, image, 2000, seed=seed)
        _fuzz_classes_json(run_folders, image, 2000, seed=seed)
    counts = _fuzz_onnx_files(det_onnx, image, tmp_path, 1000, seed=7)
    print(f"ONNX file round trips: 1000, {counts}")
    assert sum(counts.values()) == 1000 and counts["accepted"] > 0 and counts["refused"] > 0

