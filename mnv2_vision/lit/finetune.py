"""Fine-tuning: the start from another model's weights, reported key by key, and frozen backbone stages.

``model.pretrained`` is loaded by the model builders (``models/weights.py``: every tensor that fits; a class layer
whose shape changed with the class count keeps its initialisation). This module adds what only training knows:

- ``keep_class_rows``: a detector's class layers hold one row per (anchor, class). The rows of the background and of
  every class the checkpoint shares *by name* with the new data are copied from the checkpoint into the
  re-initialised layer, so the new model starts out telling objects from background as the old one did;
- ``freeze``: the backbone, or its first N stages, leave the optimiser (``requires_grad=False``) and their BatchNorm
  layers stay in eval mode, so their running statistics keep the checkpoint's values through ``model.train()``;
- ``FinetuneReport``: what was loaded, re-initialised, missing, unexpected, kept and frozen, logged at train start and
  written to ``finetune_report.json`` in the run folder.
"""
from __future__ import annotations

import json
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import ConfigError, parse_freeze
from ..models.weights import LoadReport

__all__ = ["FinetuneReport", "backbone_stages", "freeze_backbone", "keep_class_rows", "checkpoint_class_names",
           "format_report", "start_report"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass
class FinetuneReport:
    """The start of a fine-tuning run (``finetune_report.json``).

    Attributes:
        source: the weights file (and what it holds), ``None`` without ``model.pretrained``.
        loaded, reinitialised, missing, unexpected: ``LoadReport``'s lists (all loads of the build together).
        class_rows_kept: re-initialised class-layer key → the classes whose rows were copied from the file
            (``background`` first); empty when none were.
        freeze: the ``finetune.freeze`` setting; ``frozen_stages``: the backbone stages it froze (indices);
        frozen_params / trainable_params: parameter counts (elements); frozen_norms: BatchNorm layers held in eval.
    """

    source: str | None = None
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    class_rows_kept: dict[str, list[str]] = field(default_factory=dict)
    freeze: str = "none"
    frozen_stages: list[int] = field(default_factory=list)
    frozen_params: int = 0
    trainable_params: int = 0
    frozen_norms: int = 0

    @classmethod
    def from_loads(cls, reports: Sequence[LoadReport]) -> "FinetuneReport":
        out = cls(source="; ".join(r.source for r in reports) or None)
        for r in reports:
            out.loaded += r.loaded
            out.reinitialised += r.reinitialised
            out.missing += r.missing
            out.unexpected += r.unexpected
        return out

    def write(self, path: str | Path) -> Path:
        from ..files import write_json

        return write_json(path, asdict(self))


def format_report(report: FinetuneReport) -> list[str]:
    """The lines printed at train start: counts, then every key not simply loaded (loaded ones are in the file)."""
    lines = []
    if report.source:
        lines.append(f"fine-tuning from {report.source}: {len(report.loaded)} tensors loaded, "
                     f"{len(report.reinitialised)} re-initialised (another shape or other classes), "
                     f"{len(report.missing)} missing from the file, {len(report.unexpected)} unused "
                     "(every key: finetune_report.json)")
        lines += [f"  re-initialised {k}" for k in report.reinitialised]
        kept: dict[tuple[str, ...], int] = {}
        for names in report.class_rows_kept.values():
            kept[tuple(names)] = kept.get(tuple(names), 0) + 1
        lines += [f"  kept the rows of {', '.join(names)} in {n} of them (finetune.keep_class_rows)"
                  for names, n in kept.items()]
        lines += [f"  missing from the file (initialised): {k}" for k in report.missing]
        lines += [f"  in the file, not in the model (unused): {k}" for k in report.unexpected]
    if report.freeze != "none":
        lines.append(f"frozen: {report.freeze} (backbone stages {_ranges(report.frozen_stages)}): "
                     f"{report.frozen_params:,} parameters frozen, {report.trainable_params:,} trainable, "
                     f"{report.frozen_norms} BatchNorm layers in eval mode")
    return lines


def _ranges(values: Sequence[int]) -> str:
    return f"{values[0]}-{values[-1]}" if len(values) > 1 else ", ".join(map(str, values))


# ---------------------------------------------------------------------------------------------- freezing
def _backbone(model: nn.Module) -> nn.Module:
    """The feature extractor: ``model.backbone`` (detector, segmenter, multi-task pair) or a classifier itself."""
    body = getattr(model, "backbone", model)
    if not isinstance(getattr(body, "features", None), nn.Sequential) or not getattr(body, "feature_info", None):
        raise ConfigError(f"finetune.freeze needs a backbone with 'features' and 'feature_info' (MobileNetV1/V2); "
                         f"{type(model).__name__} has none")
    return body


def backbone_stages(model: nn.Module) -> list[list[int]]:
    """The backbone's stages as lists of ``backbone.features`` indices, in order.

    A stage ends at every (non-expansion) ``feature_info`` tap: for MobileNetV2 the stem conv (stage 0), the seven
    rows of the t, c, n, s table (stages 1-7: 1, 2, 3, 4, 3, 3 and 1 blocks) and the last 1×1 conv (stage 8). A
    segmenter's backbone, cut after its tap, has fewer.
    """
    body = _backbone(model)
    ends = sorted({f.module for f in body.feature_info if not f.expand and f.module < len(body.features)})
    stages, start = [], 0
    for end in ends:
        stages.append(list(range(start, end + 1)))
        start = end + 1
    if start < len(body.features):
        stages.append(list(range(start, len(body.features))))
    return stages


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen BatchNorm layer: Lightning calls ``model.train()`` every epoch; the layer stays in
    eval mode so that its running statistics keep the checkpoint's values."""
    return nn.Module.train(self, False)


def freeze_backbone(model: nn.Module, spec: str) -> tuple[list[int], int, int, int]:
    """Freeze what ``finetune.freeze`` = ``spec`` names; return (frozen stages, frozen and trainable parameter
    elements, BatchNorm layers held in eval mode). Call it before the optimiser is built: it takes only the
    parameters that require gradients (``lit/common.build_optimizer``)."""
    count = parse_freeze(spec)
    stages: list[int] = []
    norms = 0
    if count != 0:
        all_stages = backbone_stages(model)
        if count is not None and count > len(all_stages):
            raise ConfigError(f"finetune.freeze={spec}: this backbone has {len(all_stages)} stages (0-"
                             f"{len(all_stages) - 1}); use stages:{len(all_stages)} or backbone")
        stages = list(range(len(all_stages) if count is None else count))
        body = _backbone(model)
        for s in stages:
            for i in all_stages[s]:
                for p in body.features[i].parameters():
                    p.requires_grad_(False)
                for m in body.features[i].modules():
                    if isinstance(m, _NORMS):
                        m.eval()
                        m.train = types.MethodType(_stay_in_eval, m)
                        norms += 1
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return stages, frozen, trainable, norms


# ---------------------------------------------------------------------------------------------- class rows
def checkpoint_class_names(source: str | Path, obj: Any = None) -> list[str] | None:
    """The detection class names (without background) a weights file was trained on: a training checkpoint's
    ``category_names``, or for a ``model.pt`` the ``classes.json`` beside it; ``None`` when neither says. ``obj``:
    what ``load_torch`` read from the file, when the caller has it."""
    from ..files import load_torch

    path = Path(source)
    obj = load_torch(path, "weights file") if obj is None else obj
    if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
        names = obj["hyper_parameters"].get("category_names")
        return [str(n) for n in names] if names is not None else None
    beside = path.parent / "classes.json"
    if beside.is_file():
        try:
            names = json.loads(beside.read_text(encoding="utf-8")).get("category_names")
        except (OSError, ValueError, AttributeError):
            return None
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


def _class_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """A detector's class layers by state-dict prefix: the last conv of each ``head.cls_heads`` predictor."""
    heads = getattr(getattr(model, "head", None), "cls_heads", None)
    if heads is None:
        return {}
    return {f"head.cls_heads.{i}.1.": block[-1] for i, block in enumerate(heads) if isinstance(block[-1], nn.Conv2d)}


def keep_class_rows(model: nn.Module, state: dict[str, torch.Tensor], old_names: Sequence[str],
                    new_names: Sequence[str], copy: bool = True) -> tuple[dict[str, list[str]], list[str]]:
    """Give a detector fine-tuned from ``state`` (trained on ``old_names``) class layers for ``new_names``.

    A class layer (``head.cls_heads.L.1``) has ``anchors × classes`` output rows, row ``a·K + k`` for anchor ``a``
    and label ``k`` (0 = background). When the names differ, each class layer is re-initialised
    (``models.ssdlite.init_conv``; one the builder loaded because the class *count* matched too), then with ``copy``
    the rows of the background and of every class name in both lists are copied from ``state``.
    Returns (key → names of the classes copied, the keys re-initialised here that the builder had loaded).
    """
    from ..models.ssdlite import init_conv

    k_old, k_new = len(old_names) + 1, len(new_names) + 1
    pairs = [(0, 0)] + [(list(old_names).index(n) + 1, j + 1) for j, n in enumerate(new_names) if n in old_names]
    kept: dict[str, list[str]] = {}
    renamed: list[str] = []
    if list(old_names) == list(new_names):
        return kept, renamed
    with torch.no_grad():
        for prefix, conv in _class_layers(model).items():
            params = {name: getattr(conv, name) for name in ("weight", "bias") if getattr(conv, name) is not None}
            sources = {name: state.get(prefix + name) for name in params}
            if all(s is not None and s.shape == params[n].shape for n, s in sources.items()):
                renamed += [prefix + n for n in params]
            init_conv(conv)
            if not copy or any(s is None or s.shape[0] % k_old or s.shape[1:] != params[n].shape[1:]
                               or s.shape[0] // k_old != params[n].shape[0] // k_new for n, s in sources.items()):
                continue  # no rows to copy: another anchor layout
            for name, dst in params.items():
                src = sources[name]
                for a in range(dst.shape[0] // k_new):
                    for i, j in pairs:
                        dst[a * k_new + j] = src[a * k_old + i]
                kept[prefix + name] = ["background"] + [new_names[j - 1] for _, j in pairs[1:]]
    return kept, renamed


def start_report(model: nn.Module, loads: Sequence[LoadReport], *, source: str | None, freeze: str,
                 keep_rows: bool, new_names: Sequence[str] | None) -> FinetuneReport:
    """Finish a fine-tuning start on ``model``, freshly built with ``model.pretrained`` = ``source`` (``loads``: the
    builder's ``LoadReport``s): a detector's class layers follow the class names (``keep_class_rows``, when the file
    names its classes), then ``freeze`` is applied. Returns the report."""
    from ..files import load_torch
    from ..models.weights import state_dict_of

    report = FinetuneReport.from_loads(loads)
    if source and new_names is not None and _class_layers(model) and Path(str(source)).is_file():
        obj = load_torch(Path(source), "weights file")  # once, for the names and the class rows
        old = checkpoint_class_names(source, obj)
        if old is not None:
            state, _ = state_dict_of(obj, Path(source))
            report.class_rows_kept, renamed = keep_class_rows(model, state, old, list(new_names), copy=keep_rows)
            report.loaded = [k for k in report.loaded if k not in renamed]
            report.reinitialised += [f"{k}: classes {list(old)} in file vs {list(new_names)} in model"
                                     for k in renamed]
    report.freeze = freeze
    report.frozen_stages, report.frozen_params, report.trainable_params, report.frozen_norms = \
        freeze_backbone(model, freeze)
    return report
