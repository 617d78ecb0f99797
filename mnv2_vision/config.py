"""Config: YAML files in ``configs/`` validated against dataclasses, with ``--set key=value`` overrides.

Precedence: dataclass defaults < YAML file < ``--set`` (left to right). Unknown keys and wrong types are errors that
name the key and suggest close matches. The resolved config is saved in the run folder and in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import yaml

from .errors import UserError

__all__ = [
    "ModelCfg", "DataCfg", "OptimCfg", "SchedCfg", "TrainerCfg", "EvalCfg", "LossCfg", "ExportCfg", "FinetuneCfg",
    "Config", "ConfigError", "load_config", "config_from_dict", "to_dict", "to_yaml", "save_config", "config_dir",
    "list_configs", "Study", "load_study", "bounded_repr", "parse_yaml", "parse_freeze",
]


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong; the message names it."""


# A config is a few KB of YAML with a few hundred values, nested 3 levels deep (section, key, list). The bounds are
# far above that and far below what would take the loader or an error message more than a moment.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000  # counting every repeat of a shared value: aliases (*name) expanded
MAX_CONFIG_DEPTH = 16
_MAX_REPR = 80

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40


def bounded_repr(value: Any) -> str:
    """``repr(value)`` of at most 80 characters, for error messages: a value can be a 1 MiB string, a list of a
    billion shared items or an integer of thousands of digits, of which a message shows only the ends."""
    try:
        text = _REPR.repr(value)
    except Exception:  # int of more than 4300 digits (repr refuses it), an object whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


@dataclass
class ModelCfg:
    name: str = "mobilenet_v2"
    # None = use the builder's default / derive from the dataset (num_classes).
    num_classes: int | None = None
    width_mult: float = 1.0
    pretrained: str | None = None  # "imagenet" or a file: whole classifier, or the backbone of a detector/segmenter
    output_stride: int | None = None
    aspp: str | None = None  # segmentation head: "lite" | "full"
    dropout: float | None = None
    backbone: str | None = None  # backbone family for detection/segmentation builders (issue: MobileNetV1)
    # MobileNetV2 ablation switches (None = the paper's design; see MobileNetV2's docstring) and CIFAR adaptation
    small_input: bool | None = None  # stride 1 in the stem and second row: 32×32 ends at 4×4
    expand_ratio: float | None = None  # t of every row but the first
    block: str | None = None  # inverted | classic
    shortcut: str | None = None  # bottleneck | expansion | none
    projection_activation: str | None = None  # none | relu6
    preactivation: bool | None = None
    bn_eps: float | None = None  # BatchNorm ε; None = the builder's default
    bn_momentum: float | None = None  # PyTorch convention: TF-slim's decay 0.997 is momentum 0.003
    # Multi-task pair (task: multitask): segmentation classes (None = from the data) and how the two heads share the
    # backbone's strides (None = the builder's default; docs/design.md#sharing: os32 = (a), os16 = (b), twin = (c)).
    seg_num_classes: int | None = None
    sharing: str | None = None


@dataclass
class DataCfg:
    # detection: coco | yolo | voc_xml | cvat | labelme | labelstudio; segmentation: voc;
    # classification: imagefolder | cifar10 | flowers102
    format: str = "coco"
    root: str = "data/coco"
    synthetic: bool = False  # use the built-in shapes dataset (generated once into the cache); root is then ignored
    train_split: str = "train2017"
    val_split: str = "val2017"
    image_size: int = 320  # detection: network input; segmentation: training crop; classification: crop
    crop_scale: tuple[float, float] = (0.08, 1.0)  # classification: RandomResizedCrop area range (augment=cls)
    # ssdlite | light (flip + colour) | seg | cls (ImageNet crop) | cls_invariant | cifar | none
    augment: str = "ssdlite"
    scale_range: tuple[float, float] = (0.5, 2.0)  # segmentation random scale
    batch_size: int = 24
    val_batch_size: int = 8
    num_workers: int = 4
    subset: int | None = None  # first N images of each split (quick runs, overfitting checks)
    # COCO semantic masks painted from the instance annotations: null | voc20 (20 VOC classes) | all (every category)
    masks: str | None = None
    min_mask_pixels: int = 0  # segmentation from COCO: keep training images whose labelled pixels exceed this
    # Multi-task: a segmentation-only VOC-layout dataset trained next to the COCO one (each sample trains the head
    # it has labels for); null = none.
    seg_root: str | None = None
    seg_train_split: str = "train"
    seg_val_split: str = "val"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class OptimCfg:
    name: str = "sgd"  # sgd | rmsprop | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    nesterov: bool = False
    alpha: float = 0.9  # RMSProp decay (TF "decay")
    eps: float = 1.0  # RMSProp epsilon: TF's recipes use 1.0
    norm_weight_decay: float | None = None  # weight decay for BN/bias parameters; None = same as weight_decay


@dataclass
class SchedCfg:
    name: str = "cosine"  # cosine | poly | exponential | constant
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.001
    power: float = 0.9  # poly
    gamma: float = 0.98  # exponential: factor per decay_epochs
    decay_epochs: float = 1.0
    min_lr: float = 0.0


@dataclass
class TrainerCfg:
    max_epochs: int = 1
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Union[int, str] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    sync_batchnorm: bool = False
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 20
    gradient_clip_val: float | None = None
    limit_train_batches: Union[int, float] = 1.0
    limit_val_batches: Union[int, float] = 1.0
    deterministic: bool = False
    # Also write ckpt/last.ckpt after every N optimizer steps (null: only at the end of each epoch). Resuming from it
    # continues exactly like an uninterrupted run: the training loaders save their place in the epoch (docs/product.md).
    ckpt_every_n_steps: int | None = None
    # Intra-op CPU threads of the training process; null = from the cores this process may use (affinity, cgroup
    # quota), less the data workers and the cores other processes keep busy (lit/common.py: choose_num_threads).
    num_threads: int | None = None
    # Without a terminal (nohup, CI, a pipe): a progress line at least every this many seconds.
    progress_interval_s: float = 60.0


@dataclass
class EvalCfg:
    score_thresh: float = 0.001  # low, as COCO evaluation needs (a high threshold lowers mAP)
    nms_iou: float = 0.6
    topk_candidates: int = 400
    detections_per_img: int = 100
    ms_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    flip: bool = True
    coco_evaluator: str = "pycocotools"  # pycocotools (reference) | faster_coco_eval (same 12 stats, faster)


@dataclass
class LossCfg:
    neg_pos_ratio: int = 3
    box_weight: float = 1.0
    label_smoothing: float = 0.0
    seg_weight: float = 1.0  # multi-task: total loss = SSD loss + seg_weight · segmentation cross-entropy


@dataclass
class ExportCfg:
    # tools/export.py --int8 exits non-zero when int8 loses more validation mAP / mIoU than this (absolute; each
    # metric of the multi-task pair); --int8-max-drop overrides it for one export.
    int8_max_drop: float = 0.01


@dataclass
class FinetuneCfg:
    """Fine-tuning from ``model.pretrained`` (docs/finetune.md).

    ``freeze``: ``none``; ``backbone`` (every backbone layer); or ``stages:N``, the backbone's first N stages, where
    for MobileNetV2 stage 0 is the stem conv, stages 1-7 are the rows of the t, c, n, s table and stage 8 the last
    1×1 conv (``stages:9`` = ``backbone``). Frozen parameters leave the optimiser and their BatchNorm layers stay
    in eval mode (their running statistics are not updated).
    ``keep_class_rows``: detection from a whole detector checkpoint: the class-layer rows of the background and of
    the classes whose names the checkpoint shares with the new data are copied, not re-initialised.
    """

    freeze: str = "none"
    keep_class_rows: bool = True


def parse_freeze(spec: str) -> int | None:
    """``finetune.freeze`` → the number of leading backbone stages to freeze: 0 for ``none``, ``None`` for
    ``backbone`` (all of them), N for ``stages:N`` (N ≥ 1). Anything else is a ``ConfigError`` naming the key."""
    if spec == "none":
        return 0
    if spec == "backbone":
        return None
    head, _, count = spec.partition(":")
    if head == "stages" and count.strip().isdigit() and int(count) >= 1:
        return int(count)
    raise ConfigError(f"finetune.freeze={bounded_repr(spec)} is not one of none, backbone, stages:N (N ≥ 1: the "
                      "backbone's first N stages; MobileNetV2: stage 0 = stem, 1-7 = table rows, 8 = last 1×1 conv)")


@dataclass
class Config:
    task: str = "detection"  # detection | segmentation | classification | multitask
    seed: int = 42
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    finetune: FinetuneCfg = field(default_factory=FinetuneCfg)

    def validate(self) -> "Config":
        def choice(key: str, value: Any, options: Sequence[Any]) -> None:
            if value not in options:
                raise ConfigError(f"{key}={bounded_repr(value)} is not one of {list(options)}")

        choice("task", self.task, ("detection", "segmentation", "classification", "multitask"))
        choice("data.format", self.data.format, ("coco", "yolo", "voc_xml", "cvat", "labelme", "labelstudio", "voc",
                                                 "imagefolder", "cifar10", "flowers102"))
        choice("data.augment", self.data.augment, ("ssdlite", "light", "seg", "cls", "cls_invariant", "cifar", "none"))
        choice("optim.name", self.optim.name, ("sgd", "rmsprop", "adamw"))
        choice("sched.name", self.sched.name, ("cosine", "poly", "exponential", "constant"))
        parse_freeze(self.finetune.freeze)
        if self.model.aspp is not None:
            choice("model.aspp", self.model.aspp, ("lite", "full"))
        if self.model.sharing is not None:
            choice("model.sharing", self.model.sharing, ("os32", "os16", "twin"))
        if self.data.masks is not None:
            choice("data.masks", self.data.masks, ("voc20", "all"))
        if self.loss.seg_weight < 0:
            raise ConfigError(f"loss.seg_weight must be ≥ 0, got {bounded_repr(self.loss.seg_weight)}")
        for key, options in (("block", ("inverted", "classic")), ("shortcut", ("bottleneck", "expansion", "none")),
                             ("projection_activation", ("none", "relu6"))):
            if getattr(self.model, key) is not None:
                choice(f"model.{key}", getattr(self.model, key), options)
        if not 0 < self.data.crop_scale[0] <= self.data.crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got "
                              f"{bounded_repr(list(self.data.crop_scale))}")
        if self.model.output_stride is not None:
            choice("model.output_stride", self.model.output_stride, (8, 16, 32))
        for key, v in (("data.batch_size", self.data.batch_size), ("data.val_batch_size", self.data.val_batch_size),
                       ("data.image_size", self.data.image_size)):
            if v < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {bounded_repr(v)}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {bounded_repr(self.optim.lr)}")
        if any(v <= 0 for v in self.data.std):
            raise ConfigError(f"data.std must be > 0 for every channel (it divides the image), got "
                              f"{bounded_repr(list(self.data.std))}")
        if self.model.width_mult <= 0:
            raise ConfigError(f"model.width_mult must be > 0, got {bounded_repr(self.model.width_mult)}")
        for key, v in (("data.num_workers", self.data.num_workers), ("optim.weight_decay", self.optim.weight_decay),
                       ("sched.warmup_epochs", self.sched.warmup_epochs), ("sched.min_lr", self.sched.min_lr)):
            if v < 0:
                raise ConfigError(f"{key} must be ≥ 0, got {bounded_repr(v)}")
        t = self.trainer
        if t.max_epochs == 0 or t.max_epochs < -1:
            raise ConfigError(f"trainer.max_epochs must be ≥ 1 (or -1 with trainer.max_steps > 0), got "
                              f"{bounded_repr(t.max_epochs)}")
        if t.max_epochs == -1 and t.max_steps <= 0:
            raise ConfigError("trainer.max_epochs=-1 (no epoch limit) needs trainer.max_steps > 0")
        if t.max_steps == 0 or t.max_steps < -1:
            raise ConfigError(f"trainer.max_steps must be ≥ 1 or -1 (no step limit), got {bounded_repr(t.max_steps)}")
        if t.check_val_every_n_epoch < 1:
            raise ConfigError(f"trainer.check_val_every_n_epoch must be ≥ 1, got "
                              f"{bounded_repr(t.check_val_every_n_epoch)}")
        if t.num_threads is not None and t.num_threads < 1:
            raise ConfigError(f"trainer.num_threads must be ≥ 1 or null (auto), got {bounded_repr(t.num_threads)}")
        if t.progress_interval_s <= 0:
            raise ConfigError(f"trainer.progress_interval_s must be > 0, got {bounded_repr(t.progress_interval_s)}")
        if self.trainer.ckpt_every_n_steps is not None and self.trainer.ckpt_every_n_steps < 1:
            raise ConfigError(f"trainer.ckpt_every_n_steps must be ≥ 1 or null, got "
                              f"{bounded_repr(self.trainer.ckpt_every_n_steps)}")
        if self.data.subset is not None and self.data.subset < 1:
            raise ConfigError(f"data.subset must be ≥ 1 or null, got {bounded_repr(self.data.subset)}")
        for key, v in (("eval.score_thresh", self.eval.score_thresh), ("eval.nms_iou", self.eval.nms_iou)):
            if not 0 <= v <= 1:  # a score and an overlap: outside [0, 1] no box would be kept, or every one
                raise ConfigError(f"{key} must be in [0, 1], got {bounded_repr(v)}")
        if not 0 <= self.export.int8_max_drop <= 1:  # an absolute change of a metric in [0, 1]
            raise ConfigError(f"export.int8_max_drop must be in [0, 1], got {bounded_repr(self.export.int8_max_drop)}")
        return self


# ---------------------------------------------------------------------------------------------- type checking
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int→float and list→tuple, nothing else."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {bounded_repr(value)} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {bounded_repr(value)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {bounded_repr(value)} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}: {bounded_repr(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {bounded_repr(value)} ({type(value).__name__})")
        try:
            number = float(value)
        except OverflowError:  # an int past 1.8e308: YAML reads "1000…" of 400 digits as one
            raise ConfigError(f"{key}: {bounded_repr(value)} is too large for a float") from None
        if not math.isfinite(number):  # YAML's .nan / .inf: training would save NaN weights
            raise ConfigError(f"{key}: expected a finite number, got {bounded_repr(value)}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {bounded_repr(value)} ({type(value).__name__})")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {bounded_repr(value)} ({type(value).__name__})")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _unknown(key: str, options: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], options, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(options)}"
    return ConfigError(f"unknown config key {bounded_repr(key)}{where}{hint}")


def _fill(obj: Any, data: dict, prefix: str, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}{where}: expected a mapping, got {bounded_repr(data)}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for k, v in data.items():
        key = prefix + str(k)
        if k not in names:
            raise _unknown(key, names, where)
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            _fill(cur, v, key + ".", where)
        else:
            setattr(obj, k, _coerce(v, hints[k], key + where))


def _set(cfg: Config, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set expects key=value, got {bounded_repr(override)}")
    key, raw = override.split("=", 1)
    key = key.strip()
    obj: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names:
            raise _unknown(".".join(parts[: i + 1]), names, " (from --set)")
        if i < len(parts) - 1:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
    if dataclasses.is_dataclass(getattr(obj, parts[-1])):
        raise ConfigError(f"--set {key}: is a section; set one of its keys")
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    hints = typing.get_type_hints(type(obj))
    if hints[parts[-1]] is str and not isinstance(value, str):
        value = raw  # "--set data.root=2017" is still a string
    setattr(obj, parts[-1], _coerce(value, hints[parts[-1]], key + " (from --set)"))


# ---------------------------------------------------------------------------------------------- reading YAML
def _node_children(node: Any) -> Sequence[Any]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else ()


def _object_children(value: Any) -> Sequence[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return value if isinstance(value, (list, tuple)) else ()


def _too_deep(source: str, where: str = "") -> ConfigError:
    return ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep{where}; a config nests its sections "
                       "2 or 3 levels deep")


def _check_shape(root: Any, children: Callable[[Any], Sequence[Any]], source: str) -> None:
    """Refuse a YAML node graph (or an unpickled value) that nests deeper than ``MAX_CONFIG_DEPTH``, contains itself,
    or holds more than ``MAX_CONFIG_VALUES`` values once its shared parts are expanded, before anything walks it: a
    repeat of an alias (``*name``) is the same node object, so nine nested anchors compose in a millisecond, and it is
    the construction, the type checks and the error's repr that then meet 10**9 items. Each distinct node's expanded
    size is counted once (memo by id), so the check costs the graph's own size; the walk is iterative, so 50,000
    levels cannot exhaust the stack."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:  # every child is counted: this node's expanded size
            on_path.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children(node))
            if size[key] > MAX_CONFIG_VALUES:
                raise ConfigError(f"{source}: more than {MAX_CONFIG_VALUES:,} values once its aliases (*name) are "
                                  "expanded; a config holds a few hundred: write the values out instead of nesting "
                                  "aliases")
        elif key not in size:
            if key in on_path:
                raise ConfigError(f"{source}: a value contains itself (a recursive alias &name ... *name); a config "
                                  "holds plain values")
            if len(on_path) >= MAX_CONFIG_DEPTH:
                raise _too_deep(source)
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to compose deeper than ``MAX_CONFIG_DEPTH`` (its composer recurses once per
    level: 50,000 nested ``[`` end in a RecursionError) and naming the node whose value cannot be constructed (a
    date that does not exist, an integer of more than 4300 digits raise a bare ValueError)."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source, self.depth = source, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.depth >= MAX_CONFIG_DEPTH:
            raise _too_deep(self.source, f" (line {self.peek_event().start_mark.line + 1})")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(None, None, str(e), node.start_mark) from e


def _clip(text: str, limit: int = 300) -> str:
    """PyYAML's problem texts quote what they found (an alias name, a tag), which can be as long as the file."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error as one line: where, what (PyYAML's own text spans five, with a snippet of the file)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark, context = e.problem_mark, e.context or ""
        if context and e.context_mark is not None:
            context += f" (line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
        what = f"{context}: {e.problem}" if context else str(e.problem)
        return f"at line {mark.line + 1}, column {mark.column + 1}: {what}"
    if isinstance(e, yaml.reader.ReaderError):
        return f"at character {e.position:,}: unacceptable character #x{e.character:04x}: {e.reason}"
    return " ".join(str(e).split())


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` within the bounds of a config (size, nesting, values once aliases are expanded); any
    problem is one ``ConfigError`` line starting with ``source`` (a file, ``--set KEY``)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters is over the 1 MiB limit of a config value "
                          f"({MAX_CONFIG_BYTES:,})")
    loader = None
    try:
        loader = _BoundedLoader(text, source)  # checks the characters first: a ReaderError comes from here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_shape(node, _node_children, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML {_clip(_yaml_problem(e))}") from None
    except RecursionError:  # the bounded composer stops at MAX_CONFIG_DEPTH; this is the parser's own recursion
        raise _too_deep(source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_yaml(path: Path) -> Any:
    """A config or study file: at most 1 MiB of UTF-8 YAML (``parse_yaml``'s bounds), else one ``ConfigError``."""
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded even if the file is a device or grows meanwhile
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is over the 1 MiB limit of a config file "
                          f"({MAX_CONFIG_BYTES:,} bytes; a config is a few KB); is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: byte {e.start:,} is 0x{raw[e.start]:02x}; save the config as "
                          "UTF-8") from None
    return parse_yaml(text, str(path))


# ---------------------------------------------------------------------------------------------- loading / saving
def config_dir() -> Path:
    """Where named configs live: ``$MNV2_CONFIG_DIR``, else the configs installed with the package (a wheel ships
    them as ``mnv2_vision/configs``), else the source checkout's ``configs/``."""
    if os.environ.get("MNV2_CONFIG_DIR"):
        return Path(os.environ["MNV2_CONFIG_DIR"])
    here = Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent / "configs"


def list_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def _resolve(name: str | os.PathLike) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = config_dir() / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    close = difflib.get_close_matches(str(name), list_configs(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"no config named {bounded_repr(str(name))} in {config_dir()}{hint} "
                      f"(available: {', '.join(list_configs())})")


def config_from_dict(data: dict, where: str = "") -> Config:
    """The config stored in a checkpoint (``where``: " in checkpoint PATH"), checked as a config file is: an unpickled
    dict can share one list a billion times over, or nest it 50,000 deep."""
    _check_shape(data, _object_children, f"config{where}")
    cfg = Config()
    _fill(cfg, data or {}, "", where)
    return cfg.validate()


def load_config(name: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults < ``configs/NAME.yaml`` (or a path) < each ``key=value`` override in order."""
    cfg = Config()
    if name is not None:
        path = _resolve(name)
        data = _read_yaml(path) or {}
        _fill(cfg, data, "", f" in {path}")
    for o in overrides:
        _set(cfg, o)
    return cfg.validate()


def to_dict(cfg: Config) -> dict:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config atomically (``files.atomic_write``)."""
    from .files import write_text

    return write_text(path, to_yaml(cfg))


# ---------------------------------------------------------------------------------------------- ablation studies
@dataclass
class Study:
    """An ablation study (``configs/studies/NAME.yaml``): a base config, ``--set`` overrides shared by every variant
    (``set``), and named lists of overrides (``variants``), applied in that order."""

    name: str
    base: str
    common: tuple[str, ...]
    variants: dict[str, tuple[str, ...]]

    def config(self, variant: str) -> Config:
        return load_config(self.base, (*self.common, *self.variants[variant]))


def load_study(name: str | os.PathLike) -> Study:
    """Read and check a study file: every variant's config is resolved once here, so a typo fails before training."""
    p = Path(name)
    if not (p.suffix in (".yaml", ".yml") or p.exists()):
        p = config_dir() / "studies" / f"{name}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in (config_dir() / "studies").glob("*.yaml"))
        raise ConfigError(f"study not found: {p} (available in {config_dir() / 'studies'}: {', '.join(known)})")
    data = _read_yaml(p) or {}
    if not isinstance(data, dict) or set(data) - {"base", "set", "variants"}:
        got = bounded_repr(list(data) if isinstance(data, dict) else data)
        raise ConfigError(f"{p}: a study has the keys base, set (optional) and variants; got {got}")
    if not isinstance(data.get("base"), str):
        raise ConfigError(f"{p}: 'base' must name a config (e.g. mobilenet_v2_cifar10)")

    def overrides(v: Any, where: str) -> tuple[str, ...]:
        if v is None:
            return ()
        if not isinstance(v, list) or not all(isinstance(o, str) and "=" in o for o in v):
            raise ConfigError(f"{p}: {where} must be a list of 'key=value' strings, got {bounded_repr(v)}")
        return tuple(v)

    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{p}: 'variants' must map variant names to lists of 'key=value' overrides")
    study = Study(p.stem, data["base"], overrides(data.get("set"), "set"),
                  {str(k): overrides(v, f"variants.{k}") for k, v in variants.items()})
    for v in study.variants:
        try:
            study.config(v)
        except ConfigError as e:
            raise ConfigError(f"{p}: variant {bounded_repr(v)}: {e}") from e
    return study
