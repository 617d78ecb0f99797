"""Loading pretrained weights: torchvision's ImageNet weights, local torchvision-format files and our checkpoints.

Never silently random: a missing file, a key the model lacks, or a shape that differs outside the allowed
(``optional``) prefixes is an error naming the key. What was skipped is reported.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["WeightsMismatchError", "LoadReport", "read_state_dict", "state_dict_of", "load_pretrained",
           "holds_whole_model", "collect_reports"]

log = logging.getLogger("mnv2_vision")


class WeightsMismatchError(CheckpointError, RuntimeError):
    """A weights file whose keys or shapes do not fit the model (one line naming them; exit status 2 in the tools)."""


@dataclass
class LoadReport:
    """What ``load_pretrained`` did, key by key (keys as the module it filled names them: a backbone's own keys when
    a backbone or classifier file fills a detector's backbone).

    Attributes:
        source: the file (and the kind of model it holds), or torchvision's weights.
        loaded: keys filled from the file.
        reinitialised: model keys whose shape differs in the file (the class layers after a class-count change):
            they keep their initialisation, ``"key: shape (a, b) in file vs (c, d) in model"``.
        missing: model keys the file lacks (they keep their initialisation).
        unexpected: file keys the model lacks (left unused).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        """Every key not loaded, as ``"key: reason"``: the three lists above, in one."""
        return ([f"{k}: not in file" for k in self.missing] + self.reinitialised
                + [f"{k}: not in model" for k in self.unexpected])

    def __str__(self) -> str:
        s = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.skipped:
            more = " ..." if len(self.skipped) > 8 else ""
            s += f"; skipped {len(self.skipped)}: " + ", ".join(self.skipped[:8]) + more
        return s


_collectors: list[list["LoadReport"]] = []


@contextlib.contextmanager
def collect_reports() -> Iterator[list[LoadReport]]:
    """Collect the ``LoadReport`` of every ``load_pretrained`` call inside the block (a builder's, which returns the
    model only): ``with collect_reports() as reports: model = build_model(..., pretrained=path)``."""
    reports: list[LoadReport] = []
    _collectors.append(reports)
    try:
        yield reports
    finally:
        _collectors.remove(reports)


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrappers: Lightning's ``model.``, DDP's ``module.``, and a detector/segmenter's ``backbone.``."""
    for prefix in ("module.", "model.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_state_dict(source: str | Path, width_mult: float = 1.0) -> tuple[dict[str, torch.Tensor], str]:
    """Return (state dict, description) for ``"imagenet"`` or a local file (state dict or checkpoint)."""
    if str(source) == "imagenet":
        if width_mult != 1.0:
            raise ValueError(f"torchvision ships ImageNet weights for width_mult=1.0 only, got {width_mult}; "
                             "pass a local file instead")
        from torchvision.models import MobileNet_V2_Weights

        weights = MobileNet_V2_Weights.IMAGENET1K_V1
        try:
            sd = weights.get_state_dict(progress=True)
        except Exception as e:  # no internet on this machine: say what to do instead
            raise RuntimeError(f"could not fetch torchvision's {weights} ({e}); download it on a machine with "
                               "internet and pass the file path as pretrained=PATH") from e
        return sd, f"torchvision {weights}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    from ..files import load_torch

    return state_dict_of(load_torch(path, "weights file"), path)


def state_dict_of(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, description) of what ``load_torch`` read from ``path``: a state dict or a Lightning
    checkpoint's, prefixes stripped (``read_state_dict``'s second half, for callers that read the file already)."""
    desc = str(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        model = ((obj.get("hyper_parameters") or {}).get("config") or {}).get("model", {}).get("name")
        desc = f"{path} (a {model} checkpoint)" if model else desc
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return _strip(dict(obj)), desc


def holds_whole_model(source: str | Path) -> bool:
    """Whether ``source`` is a whole detector / segmenter (a train_det / train_seg checkpoint or its ``model.pt``:
    keys under ``backbone.``) rather than a backbone or classifier file. Such a file fine-tunes the whole network."""
    if str(source) == "imagenet":
        return False
    sd, _ = read_state_dict(source)
    return any(k.startswith("backbone.") for k in sd)


def load_pretrained(
    module: nn.Module,
    source: str | Path,
    *,
    width_mult: float = 1.0,
    optional: tuple[str, ...] = ("classifier.",),
    prefix: str = "",
) -> LoadReport:
    """Load ``source`` into ``module``; keys under ``optional`` prefixes may be absent or differ in shape.

    Args:
        module: the model (or backbone) to fill.
        source: ``"imagenet"`` or a file path.
        width_mult: checked against ``"imagenet"``.
        optional: key prefixes (of the module and of the file) that may be skipped, e.g. the ImageNet classifier.
        prefix: prepended to file keys before matching (e.g. ``"backbone."`` when filling a detector from a
            classifier file).
    """
    sd, desc = read_state_dict(source, width_mult)
    sd = {prefix + k: v for k, v in sd.items()}
    own = module.state_dict()
    report = LoadReport(desc)
    errors: list[str] = []
    to_load: dict[str, torch.Tensor] = {}
    for k, v in own.items():
        is_optional = k.startswith(tuple(prefix + o for o in optional)) or k.startswith(optional)
        if k not in sd:
            if is_optional:
                report.missing.append(k)
            else:
                errors.append(f"{k}: missing from file")
        elif sd[k].shape != v.shape:
            msg = f"{k}: shape {tuple(sd[k].shape)} in file vs {tuple(v.shape)} in model"
            if is_optional:
                report.reinitialised.append(msg)
            else:
                errors.append(msg)
        else:
            to_load[k] = sd[k]
    for k in sd:
        if k not in own:
            if k.startswith(tuple(prefix + o for o in optional)):
                report.unexpected.append(k)
            else:
                errors.append(f"{k}: in file but not in model")
    if errors:
        def tops(keys: list[str]) -> str:
            return ", ".join(sorted({k.split(".")[0] + ".*" for k in keys}))

        absent = [e.split(":")[0] for e in errors if e.endswith("missing from file")]
        extra = [e.split(":")[0] for e in errors if e.endswith("in file but not in model")]
        if absent and extra and not any("shape" in e for e in errors):
            raise WeightsMismatchError(f"cannot load {desc} into {type(module).__name__}: it holds another kind of "
                                       f"model (it has {tops(extra)}, which this model lacks; it lacks "
                                       f"{tops(absent)}; first mismatching key {errors[0]}). Give a "
                                       "backbone/classifier file, 'imagenet', or a checkpoint of the same model")
        # The first mismatch (in the model's order) leads: for another width_mult, the first layer whose width differs.
        raise WeightsMismatchError(f"cannot load {desc} into {type(module).__name__}: first mismatching key "
                                   f"{errors[0]}; {len(errors)} problem(s) in all"
                                   + (": " + "; ".join(errors[1:6]) if len(errors) > 1 else "")
                                   + ("; ..." if len(errors) > 6 else "")
                                   + (" (a model of another model.width_mult?)" if any("shape" in e for e in errors)
                                      else ""))
    module.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    for reports in _collectors:
        reports.append(report)
    log.info("%s", report)
    print(f"[mnv2_vision] {report}")
    return report
