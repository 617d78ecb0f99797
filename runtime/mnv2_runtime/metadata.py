"""What an exported model carries about itself, checked before the model is used; and a run folder's
``classes.json``, checked by the same rules.

``tools/export.py`` writes the preprocessing, the label map and the post-processing settings as string key/value
pairs (ONNX ``metadata_props``): plain text for the keys in ``TEXT_KEYS``, JSON for those in ``JSON_KEYS``. A model
file is user input, so ``checked_metadata`` decodes and checks every key the runtime relies on (types, lengths,
ranges, and what the graph's inputs and outputs show) and refuses a bad value with one ``ModelError`` line
naming the file and the key, instead of an error deep inside ``predict``. JSON nesting is measured before decoding
(Python's decoder recurses), and values are capped in length.

The schema is the exporter's contract with every runtime: each backend (``backends/``: ONNX Runtime, LiteRT,
OpenVINO) decodes its format's key/value pairs with ``decode_props`` and checks them with ``validate_metadata`` and,
giving its graph's inputs and outputs as ``GraphInfo``, ``check_graph``. ``mnv2_vision`` (its exporter, its
predictor) uses this module too, so the rules exist once; it needs neither torch nor a runtime.
"""
from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ModelError

__all__ = [
    "TASKS", "TEXT_KEYS", "JSON_KEYS", "MAX_DEPTH", "MAX_CHARS", "INPUT_SIZE_RANGE", "INPUT_NAME",
    "DETECTION_OUTPUTS", "SEGMENTATION_OUTPUT", "GraphInfo", "encode_props", "parse_json", "decode_props",
    "validate_metadata", "check_graph", "checked_metadata", "parse_label_map", "read_label_map",
]

TASKS = ("detection", "segmentation", "multitask")
# Keys stored as plain text; every other key the exporter writes is JSON (see encode_props).
TEXT_KEYS = ("model_name", "task", "producer", "input_name", "input_layout", "color_order", "pixel_scaling", "resize",
             "box_format", "detection_output", "seg_output", "quantization")
JSON_KEYS = ("input_size", "mean", "std", "config", "class_names", "category_ids", "box_coder_weights", "postprocess",
             "seg_class_names", "ignore_index")
MAX_DEPTH = 32  # the deepest value written (the config) nests 3 levels
MAX_CHARS = 4_000_000  # one value: a config, or 100k class names
MAX_NAME_CHARS = 256  # one class name
MAX_CLASSES = 100_000
INPUT_SIZE_RANGE = (16, 4096)
MEAN_RANGE = (-10.0, 10.0)  # of pixels scaled to [0, 1]
STD_RANGE = (1e-4, 100.0)  # a smaller std overflows float32 pixels, 0 divides by zero
MAX_CANDIDATES = 100_000  # postprocess topk_candidates and detections_per_img
INPUT_NAME = "images"
DETECTION_OUTPUTS = {"nms": ("boxes", "scores", "labels", "num_detections"),
                     "raw": ("cls_logits", "bbox_regression", "anchors")}
SEGMENTATION_OUTPUT = "logits"
_PREPROCESSING = {"input_name": INPUT_NAME, "input_layout": "NCHW", "color_order": "RGB"}  # what the predictor feeds
_POSTPROCESS = ("score_thresh", "nms_iou", "topk_candidates", "detections_per_img")
_REEXPORT = "export the model again with tools/export.py"
_RETRAIN = "restore the classes.json that training wrote next to the model"
_LABEL_MAP_KEYS = {"detection": ("category_ids", "category_names"), "segmentation": ("class_names",),
                   "multitask": ("category_ids", "category_names", "class_names")}

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string: brackets inside it do not nest
_BRACKET = re.compile(r"[\[\]{}]")
_shown = reprlib.Repr()
_shown.maxstring, _shown.maxother, _shown.maxlist, _shown.maxdict, _shown.maxlevel = 40, 40, 6, 4, 3


@dataclass(frozen=True)
class GraphInfo:
    """A model's input and output names with their shapes, as its runtime reports them (``None``: a dynamic or
    unknown dimension)."""

    inputs: dict[str, tuple[int | None, ...]]
    outputs: dict[str, tuple[int | None, ...]]


def _show(value: Any) -> str:
    """``value`` shortened to one line (repr escapes line breaks)."""
    return _shown.repr(value)


def _error(where: str, problem: str, fix: str) -> ModelError:
    return ModelError(f"{where} {problem}; {fix}")


# ---------------------------------------------------------------------------------------------- decoding
def encode_props(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The string pairs an exporter stores: text as it is, every other value as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def _depth(text: str) -> int:
    """The deepest bracket nesting of JSON ``text``, counted without recursion (brackets in strings do not count)."""
    steps = (1 if b in "[{" else -1 for b in _BRACKET.findall(_STRING.sub("", text)))
    return max(accumulate(steps, initial=0))


def parse_json(text: str, where: str, fix: str = _REEXPORT) -> Any:
    """``text`` decoded as JSON, or a ``ModelError`` starting with ``where`` (the file, and the key)."""
    if len(text) > MAX_CHARS:
        raise _error(where, f"holds {len(text)} characters, more than {MAX_CHARS}", fix)
    if _depth(text) > MAX_DEPTH:
        raise _error(where, f"is JSON nested deeper than {MAX_DEPTH} levels", fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(where, f"is not valid JSON ({e.msg} at character {e.pos})", fix) from None
    except ValueError:  # an integer of more digits than Python converts
        raise _error(where, "holds a number with too many digits", fix) from None


def _lenient(text: str) -> Any:
    """The value of a key the predictor does not use: its JSON when it is JSON, else the text."""
    if len(text) > MAX_CHARS or _depth(text) > MAX_DEPTH:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def decode_props(props: Iterable[tuple[str, str]], source: str) -> dict[str, Any]:
    """Metadata pairs decoded: ``TEXT_KEYS`` as text, ``JSON_KEYS`` as JSON (a value that is not JSON is an error
    naming the key), any other key as JSON when it is JSON, else as text."""
    out: dict[str, Any] = {}
    for key, value in props:
        where = f"{source}: metadata key {key!r}"
        if key in out:
            raise _error(where, "appears twice", _REEXPORT)
        if key in JSON_KEYS:
            out[key] = parse_json(value, where)
        else:
            out[key] = value if key in TEXT_KEYS else _lenient(value)
    return out


# ---------------------------------------------------------------------------------------------- value checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _names(value: Any, where: str, fix: str, count: int | None = None, what: str = "") -> list[str]:
    """A list of class names (strings of at most ``MAX_NAME_CHARS``), ``count`` long when given."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _error(where, f"must be a list of class names (strings), got {_show(value)}", fix)
    if not 1 <= len(value) <= MAX_CLASSES:
        raise _error(where, f"must list 1 to {MAX_CLASSES} names, got {len(value)}", fix)
    long = next((v for v in value if len(v) > MAX_NAME_CHARS), None)
    if long is not None:
        raise _error(where, f"holds a name of {len(long)} characters (at most {MAX_NAME_CHARS})", fix)
    if count is not None and len(value) != count:
        raise _error(where, f"has {len(value)} names but the model has {count} classes{what}", fix)
    return value


def _ids(value: Any, where: str, fix: str, count: int | None = None, what: str = "") -> list[int]:
    """A list of distinct category ids (integers in [0, 2**31)), ``count`` long when given."""
    if not isinstance(value, list) or not all(_is_int(v) and 0 <= v < 2 ** 31 for v in value):
        raise _error(where, f"must be a list of category ids (integers ≥ 0), got {_show(value)}", fix)
    if len(set(value)) != len(value):
        raise _error(where, f"repeats a category id: {_show(value)}", fix)
    if count is not None and len(value) != count:
        raise _error(where, f"has {len(value)} ids but the model has {count} classes besides background{what}", fix)
    return value


def _numbers(value: Any, where: str, fix: str, n: int, low: float, high: float) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(_is_number(v) and low <= v <= high for v in value):
        raise _error(where, f"must be {n} finite numbers in [{low:g}, {high:g}], got {_show(value)}", fix)
    return value


def _input_size(value: Any, where: str, fix: str) -> list[int]:
    low, high = INPUT_SIZE_RANGE
    if (not isinstance(value, list) or not 1 <= len(value) <= 2
            or not all(_is_int(v) and low <= v <= high for v in value)):
        raise _error(where, f"must be [size] or [size, size] with size an integer in [{low}, {high}], got "
                            f"{_show(value)}", fix)
    if len(value) == 2 and value[0] != value[1]:
        raise _error(where, f"must be square (the predictor resizes to size × size), got {value}", fix)
    return value


def _postprocess(value: Any, where: str, fix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error(where, f"must be an object with {', '.join(_POSTPROCESS)}, got {_show(value)}", fix)
    missing = [k for k in _POSTPROCESS if k not in value]
    unknown = [k for k in value if k not in _POSTPROCESS]
    if missing or unknown:
        problem = f"lacks {', '.join(missing)}" if missing else f"has unknown settings {_show(unknown)}"
        raise _error(where, f"must hold exactly {', '.join(_POSTPROCESS)}: it {problem}", fix)
    for k in ("score_thresh", "nms_iou"):
        if not (_is_number(value[k]) and 0 <= value[k] <= 1):
            raise _error(where, f"{k} must be a number in [0, 1], got {_show(value[k])}", fix)
    for k in ("topk_candidates", "detections_per_img"):
        if not (_is_int(value[k]) and 1 <= value[k] <= MAX_CANDIDATES):
            raise _error(where, f"{k} must be an integer in [1, {MAX_CANDIDATES}], got {_show(value[k])}", fix)
    return value


def _config_counts(meta: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model.num_classes, model.seg_num_classes) of the stored config, where it holds them."""
    model = meta.get("config", {}).get("model") if isinstance(meta.get("config"), dict) else None
    if not isinstance(model, dict):
        return None, None
    return tuple(v if _is_int(v) else None for v in (model.get("num_classes"), model.get("seg_num_classes")))


def validate_metadata(meta: Mapping[str, Any], source: str, fix: str = _REEXPORT) -> Mapping[str, Any]:
    """``meta`` (decoded metadata) if it holds what the predictor needs for its task, else a ``ModelError``
    naming ``source`` and the key and ending with ``fix`` (what to do). Keys the predictor does not use are not
    checked."""
    def where(key: str) -> str:
        return f"{source}: metadata key {key!r}"

    def need(key: str) -> Any:
        if key not in meta:
            raise _error(where(key), f"is missing (a {task} model needs it)", fix)
        return meta[key]

    if "task" not in meta:
        raise ModelError(f"{source} has no mnv2_vision metadata (key 'task'); export it with tools/export.py")
    task = meta["task"]
    if task not in TASKS:
        raise _error(where("task"), f"must be one of {', '.join(TASKS)}, got {_show(task)}", fix)
    for key, want in _PREPROCESSING.items():
        if key in meta and meta[key] != want:
            raise _error(where(key), f"is {_show(meta[key])}; the predictor feeds {want!r}", fix)
    _input_size(need("input_size"), where("input_size"), fix)
    _numbers(need("mean"), where("mean"), fix, 3, *MEAN_RANGE)
    _numbers(need("std"), where("std"), fix, 3, *STD_RANGE)
    if "config" in meta and not isinstance(meta["config"], dict):
        raise _error(where("config"), f"must be an object (the training config), got {_show(meta['config'])}",
                     fix)
    num_classes, seg_num_classes = _config_counts(meta)
    in_config = f" (metadata key 'config' gives model.num_classes={num_classes})"
    names = _names(need("class_names"), where("class_names"), fix, num_classes, in_config)
    if task in ("detection", "multitask"):
        if len(names) < 2:
            raise _error(where("class_names"), "must name background and at least one class", fix)
        _ids(need("category_ids"), where("category_ids"), fix, len(names) - 1,
             f" (metadata key 'class_names' names {len(names) - 1})")
        _postprocess(need("postprocess"), where("postprocess"), fix)
        if "detection_output" in meta and meta["detection_output"] not in DETECTION_OUTPUTS:
            raise _error(where("detection_output"), f"must be {' or '.join(DETECTION_OUTPUTS)}, got "
                                                    f"{_show(meta['detection_output'])}", fix)
        if "box_coder_weights" in meta:
            _numbers(meta["box_coder_weights"], where("box_coder_weights"), fix, 4, 1e-3, 1e3)
    if task == "multitask":
        _names(need("seg_class_names"), where("seg_class_names"), fix, seg_num_classes,
               f" (metadata key 'config' gives model.seg_num_classes={seg_num_classes})")
    if "ignore_index" in meta and not (_is_int(meta["ignore_index"]) and 0 <= meta["ignore_index"] <= 255):
        raise _error(where("ignore_index"), f"must be an integer in [0, 255], got {_show(meta['ignore_index'])}",
                     fix)
    return meta


# ---------------------------------------------------------------------------------------------- the graph
def _mode(outputs: Iterable[str], task: str) -> str | None:
    """The detection output mode whose outputs (with the segmentation logits for the pair) ``outputs`` are."""
    names = sorted(outputs)
    for mode, det in DETECTION_OUTPUTS.items():
        want = (*det, SEGMENTATION_OUTPUT) if task == "multitask" else det
        if names == sorted(want):
            return mode
    return None


def check_graph(meta: Mapping[str, Any], graph: GraphInfo, source: str) -> None:
    """Refuse (``ModelError`` naming the key) metadata that the graph contradicts: the task and detection
    output mode its outputs show, its fixed input size, and the class counts of its logits."""
    def where(key: str) -> str:
        return f"{source}: metadata key {key!r}"

    task, outputs = meta["task"], graph.outputs
    image = graph.inputs.get(INPUT_NAME)
    if image is None or len(graph.inputs) != 1:
        raise _error(f"{source} takes inputs {_show(list(graph.inputs))}", f"not one {INPUT_NAME!r}",
                     "export it with tools/export.py")
    if len(image) != 4 or image[1] not in (3, None):
        raise _error(f"{source}: its input {INPUT_NAME!r} has shape {_show(image)}", "not (N, 3, H, W)", _REEXPORT)
    if task == "segmentation":
        if sorted(outputs) != [SEGMENTATION_OUTPUT]:
            raise _error(where("task"), f"says segmentation but the graph's outputs are {_show(list(outputs))}",
                         _REEXPORT)
    else:
        mode = _mode(outputs, task)
        if mode is None:
            raise _error(where("task"), f"says {task} but the graph's outputs are {_show(list(outputs))}", _REEXPORT)
        if meta.get("detection_output", mode) != mode:
            raise _error(where("detection_output"), f"says {meta['detection_output']!r} but the graph's outputs "
                                                    f"are those of {mode!r}", _REEXPORT)
        size = meta["input_size"][0]
        if any(d is not None and d != size for d in image[2:]):
            raise _error(where("input_size"), f"is {meta['input_size']} but the graph takes {image[2]} × "
                                              f"{image[3]} images", _REEXPORT)
        k = (outputs.get("cls_logits") or (None,))[-1]
        if k is not None and k != len(meta["class_names"]):
            raise _error(where("class_names"), f"has {len(meta['class_names'])} names but the graph scores {k} "
                                               "classes", _REEXPORT)
    if SEGMENTATION_OUTPUT in outputs:
        key = "seg_class_names" if task == "multitask" else "class_names"
        shape = outputs[SEGMENTATION_OUTPUT]
        k = shape[1] if len(shape) == 4 else None
        if k is not None and k != len(meta[key]):
            raise _error(where(key), f"has {len(meta[key])} names but the graph's {SEGMENTATION_OUTPUT!r} has {k} "
                                     "classes", _REEXPORT)


def checked_metadata(props: Iterable[tuple[str, str]], graph: GraphInfo, source: str) -> Mapping[str, Any]:
    """Metadata pairs decoded and checked, by themselves and against the graph (see ``validate_metadata`` and
    ``check_graph``); a bad value is a ``ModelError`` naming ``source`` and the key."""
    meta = validate_metadata(decode_props(props, source), source)
    check_graph(meta, graph, source)
    return meta


# ---------------------------------------------------------------------------------------------- classes.json
def parse_label_map(text: str, source: str, task: str, num_classes: int | None = None,
                    seg_num_classes: int | None = None) -> dict[str, Any]:
    """The label map of a ``classes.json`` (``source``) of a ``task`` model, checked against the model's class
    counts (``model.num_classes`` with background, ``model.seg_num_classes``; ``None``: not known).

    The forms training writes: detection ``{"category_ids": [...], "category_names": [...]}`` (train_det; the names
    may be left out), segmentation ``{"class_names": [...]}`` (train_seg), the pair all three (train_multitask)."""
    keys = _LABEL_MAP_KEYS[task]
    data = parse_json(text, f"{source}", _RETRAIN)
    if not isinstance(data, dict):
        raise _error(source, f"must hold a JSON object with keys {', '.join(map(repr, keys))}, got "
                             f"{_show(data)}", _RETRAIN)

    def where(key: str) -> str:
        return f"{source}: key {key!r}"

    def need(key: str) -> Any:
        if key not in data:
            raise _error(where(key), f"is missing (a {task} model's label map has {', '.join(map(repr, keys))})",
                         _RETRAIN)
        return data[key]

    if task in ("detection", "multitask"):
        count = num_classes - 1 if num_classes else None
        ids = _ids(need("category_ids"), where("category_ids"), _RETRAIN, count,
                   f" (config.yaml model.num_classes={num_classes})")
        if "category_names" in data:
            _names(data["category_names"], where("category_names"), _RETRAIN, len(ids),
                   f" (key 'category_ids' has {len(ids)})")
    if task in ("segmentation", "multitask"):
        count = num_classes if task == "segmentation" else seg_num_classes
        key = "num_classes" if task == "segmentation" else "seg_num_classes"
        _names(need("class_names"), where("class_names"), _RETRAIN, count, f" (config.yaml model.{key}={count})")
    return data


def read_label_map(path: str | Path, task: str, num_classes: int | None = None,
                   seg_num_classes: int | None = None) -> dict[str, Any]:
    """``parse_label_map`` of the file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _error(str(path), "is not UTF-8 text", _RETRAIN) from None
    return parse_label_map(text, str(path), task, num_classes, seg_num_classes)
