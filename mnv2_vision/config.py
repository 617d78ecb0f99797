"""Config: YAML files in ``configs/`` validated against dataclasses, with ``--set key=value`` overrides.

Precedence: dataclass defaults < YAML file < ``--set`` (left to right). Unknown keys and wrong types are errors that
name the key and suggest close matches. The resolved config is saved in the run folder and in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import yaml

from .errors import UserError

__all__ = [
    "ModelCfg", "DataCfg", "OptimCfg", "SchedCfg", "TrainerCfg", "EvalCfg", "LossCfg", "Config",
    "ConfigError", "load_config", "config_from_dict", "to_dict", "to_yaml", "save_config", "config_dir",
    "list_configs", "Study", "load_study",
]


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong; the message names it."""


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
    # backbone's strides (None = the builder's default; spec §7 options: os32 = (a), os16 = (b), twin = (c)).
    seg_num_classes: int | None = None
    sharing: str | None = None


@dataclass
class DataCfg:
    format: str = "coco"  # coco | voc | imagefolder | cifar10 | flowers102
    root: str = "data/coco"
    synthetic: bool = False  # use the built-in shapes dataset (generated once into the cache); root is then ignored
    train_split: str = "train2017"
    val_split: str = "val2017"
    image_size: int = 320  # detection: network input; segmentation: training crop; classification: crop
    crop_scale: tuple[float, float] = (0.08, 1.0)  # classification: RandomResizedCrop area range (augment=cls)
    augment: str = "ssdlite"  # ssdlite | light (flip + colour) | seg | cls (ImageNet crop) | cls_invariant | cifar | none
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
    # continues exactly like an uninterrupted run: the training loaders save their place in the epoch (README, Resume).
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

    def validate(self) -> "Config":
        def choice(key: str, value: Any, options: Sequence[Any]) -> None:
            if value not in options:
                raise ConfigError(f"{key}={value!r} is not one of {list(options)}")

        choice("task", self.task, ("detection", "segmentation", "classification", "multitask"))
        choice("data.format", self.data.format, ("coco", "voc", "imagefolder", "cifar10", "flowers102"))
        choice("data.augment", self.data.augment, ("ssdlite", "light", "seg", "cls", "cls_invariant", "cifar", "none"))
        choice("optim.name", self.optim.name, ("sgd", "rmsprop", "adamw"))
        choice("sched.name", self.sched.name, ("cosine", "poly", "exponential", "constant"))
        if self.model.aspp is not None:
            choice("model.aspp", self.model.aspp, ("lite", "full"))
        if self.model.sharing is not None:
            choice("model.sharing", self.model.sharing, ("os32", "os16", "twin"))
        if self.data.masks is not None:
            choice("data.masks", self.data.masks, ("voc20", "all"))
        if self.loss.seg_weight < 0:
            raise ConfigError(f"loss.seg_weight must be ≥ 0, got {self.loss.seg_weight}")
        for key, options in (("block", ("inverted", "classic")), ("shortcut", ("bottleneck", "expansion", "none")),
                             ("projection_activation", ("none", "relu6"))):
            if getattr(self.model, key) is not None:
                choice(f"model.{key}", getattr(self.model, key), options)
        if not 0 < self.data.crop_scale[0] <= self.data.crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {list(self.data.crop_scale)}")
        if self.model.output_stride is not None:
            choice("model.output_stride", self.model.output_stride, (8, 16, 32))
        for key, v in (("data.batch_size", self.data.batch_size), ("data.val_batch_size", self.data.val_batch_size),
                       ("data.image_size", self.data.image_size)):
            if v < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {v}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.optim.lr}")
        if any(v <= 0 for v in self.data.std):
            raise ConfigError(f"data.std must be > 0 for every channel (it divides the image), got {list(self.data.std)}")
        if self.model.width_mult <= 0:
            raise ConfigError(f"model.width_mult must be > 0, got {self.model.width_mult}")
        for key, v in (("data.num_workers", self.data.num_workers), ("optim.weight_decay", self.optim.weight_decay),
                       ("sched.warmup_epochs", self.sched.warmup_epochs), ("sched.min_lr", self.sched.min_lr)):
            if v < 0:
                raise ConfigError(f"{key} must be ≥ 0, got {v}")
        t = self.trainer
        if t.max_epochs == 0 or t.max_epochs < -1:
            raise ConfigError(f"trainer.max_epochs must be ≥ 1 (or -1 with trainer.max_steps > 0), got {t.max_epochs}")
        if t.max_epochs == -1 and t.max_steps <= 0:
            raise ConfigError("trainer.max_epochs=-1 (no epoch limit) needs trainer.max_steps > 0")
        if t.max_steps == 0 or t.max_steps < -1:
            raise ConfigError(f"trainer.max_steps must be ≥ 1 or -1 (no step limit), got {t.max_steps}")
        if t.check_val_every_n_epoch < 1:
            raise ConfigError(f"trainer.check_val_every_n_epoch must be ≥ 1, got {t.check_val_every_n_epoch}")
        if t.num_threads is not None and t.num_threads < 1:
            raise ConfigError(f"trainer.num_threads must be ≥ 1 or null (auto), got {t.num_threads}")
        if t.progress_interval_s <= 0:
            raise ConfigError(f"trainer.progress_interval_s must be > 0, got {t.progress_interval_s}")
        if self.trainer.ckpt_every_n_steps is not None and self.trainer.ckpt_every_n_steps < 1:
            raise ConfigError(f"trainer.ckpt_every_n_steps must be ≥ 1 or null, got "
                              f"{self.trainer.ckpt_every_n_steps}")
        if self.data.subset is not None and self.data.subset < 1:
            raise ConfigError(f"data.subset must be ≥ 1 or null, got {self.data.subset}")
        for key, v in (("eval.score_thresh", self.eval.score_thresh), ("eval.nms_iou", self.eval.nms_iou)):
            if not 0 <= v <= 1:  # a score and an overlap: outside [0, 1] no box would be kept, or every one
                raise ConfigError(f"{key} must be in [0, 1], got {v}")
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
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):  # YAML's .nan / .inf: training would save NaN weights
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r} ({type(value).__name__})")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _unknown(key: str, options: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], options, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(options)}"
    return ConfigError(f"unknown config key {key!r}{where}{hint}")


def _fill(obj: Any, data: dict, prefix: str, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}{where}: expected a mapping, got {data!r}")
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
        raise ConfigError(f"--set expects key=value, got {override!r}")
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse {raw!r}: {e}") from e
    hints = typing.get_type_hints(type(obj))
    if hints[parts[-1]] is str and not isinstance(value, str):
        value = raw  # "--set data.root=2017" is still a string
    setattr(obj, parts[-1], _coerce(value, hints[parts[-1]], key + " (from --set)"))


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
    raise ConfigError(f"no config named {str(name)!r} in {config_dir()}{hint} (available: {', '.join(list_configs())})")


def config_from_dict(data: dict, where: str = "") -> Config:
    cfg = Config()
    _fill(cfg, data or {}, "", where)
    return cfg.validate()


def load_config(name: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults < ``configs/NAME.yaml`` (or a path) < each ``key=value`` override in order."""
    cfg = Config()
    if name is not None:
        path = _resolve(name)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
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
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from e
    if not isinstance(data, dict) or set(data) - {"base", "set", "variants"}:
        raise ConfigError(f"{p}: a study has the keys base, set (optional) and variants; got {sorted(data)}")
    if not isinstance(data.get("base"), str):
        raise ConfigError(f"{p}: 'base' must name a config (e.g. mobilenet_v2_cifar10)")

    def overrides(v: Any, where: str) -> tuple[str, ...]:
        if v is None:
            return ()
        if not isinstance(v, list) or not all(isinstance(o, str) and "=" in o for o in v):
            raise ConfigError(f"{p}: {where} must be a list of 'key=value' strings, got {v!r}")
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
            raise ConfigError(f"{p}: variant {v!r}: {e}") from e
    return study
