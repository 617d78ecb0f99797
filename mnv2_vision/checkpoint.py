"""Checkpoints carry their resolved config: eval, predict and export rebuild the model from the file alone."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, ConfigError, ModelCfg, TrainerCfg, config_from_dict
from .models import MODELS, build_model

__all__ = ["load_checkpoint", "model_kwargs", "build_from_config", "load_model", "inspect_resume", "ResumeInfo"]


def load_checkpoint(path: str | Path) -> tuple[Config, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a Lightning checkpoint written by our tools → (config, state dict of the inner model, hyperparameters).

    Loaded with ``weights_only=True``: a checkpoint is data, never code.
    """
    from .errors import CheckpointError
    from .files import load_torch

    path = Path(path)
    ckpt = load_torch(path, "checkpoint")
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path} is a plain state dict (like model.pt): it has no config to rebuild the model "
                              "from. Give a checkpoint written by a training tool (<run>/ckpt/best-*.ckpt or "
                              "last.ckpt)")
    hparams = (ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None) or {}
    if "config" not in hparams:
        raise CheckpointError(f"{path} carries no config (hyper_parameters['config']); was it written by "
                              "an mnv2_vision training tool?")
    cfg = config_from_dict(hparams["config"], where=f" in checkpoint {path}")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} has no state_dict")
    model_sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    if not model_sd:
        raise CheckpointError(f"{path}: no 'model.*' tensors in its state_dict")
    return cfg, model_sd, hparams


def model_kwargs(model: ModelCfg) -> dict[str, Any]:
    """The ModelCfg fields the builder of ``model.name`` takes; a set field it does not take is an error."""
    if model.name not in MODELS:
        build_model(model.name)  # raises the KeyError with suggestions
    params = inspect.signature(MODELS[model.name]).parameters
    out: dict[str, Any] = {}
    for f in dataclasses.fields(model):
        if f.name == "name":
            continue
        value = getattr(model, f.name)
        if f.name in params:
            if value is not None:
                out[f.name] = value
        elif value is not None and value != f.default:
            raise ConfigError(f"model.{f.name}={value!r} does not apply to model {model.name!r} "
                              f"(it takes: {', '.join(params)})")
    return out


def build_from_config(cfg: Config, num_classes: int | None = None, pretrained: str | None | bool = True) -> nn.Module:
    """Build ``cfg.model``; ``num_classes`` overrides the config, ``pretrained=False`` skips weight loading."""
    kwargs = model_kwargs(cfg.model)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained is False or pretrained is None:
        kwargs.pop("pretrained", None)
    return build_model(cfg.model.name, **kwargs)


def load_model(path: str | Path) -> tuple[Config, nn.Module, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint alone (no pretrained download), in eval mode."""
    from .errors import CheckpointError

    cfg, sd, hparams = load_checkpoint(path)
    model = build_from_config(cfg, pretrained=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit model {cfg.model.name!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return cfg, model.eval(), hparams


# ---------------------------------------------------------------------------------------------- resuming a run
@dataclasses.dataclass(frozen=True)
class ResumeInfo:
    """What ``--resume`` will continue: the checkpoint, whether its training already finished, and the logging step
    the run continues at (the logs drop rows written after the checkpoint)."""

    path: Path
    finished: bool
    epochs_done: int
    global_step: int
    log_step: int


def _diff(a: dict, b: dict, prefix: str) -> list[str]:
    return [f"{prefix}{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k != "pretrained" and a.get(k) != b.get(k)]


def _check_limits(path: Path, old: Config, t: TrainerCfg, epochs_done: int, mid_epoch: bool, step: int) -> None:
    """A resume only trains on: a ``trainer.max_epochs`` / ``max_steps`` below what the checkpoint has trained is
    refused here, before any file of the run is rewritten (Lightning would stop with a traceback or, at an epoch's
    end, quietly record the smaller limit in config.yaml as if the run had trained that long)."""
    from .errors import CheckpointError

    trained = f"{epochs_done} epoch(s){' and part of the next' if mid_epoch else ''} (step {step})"
    hint = f"or start a new run from these weights with --set model.pretrained={path}"
    if t.max_epochs > 0 and (epochs_done > t.max_epochs or (mid_epoch and epochs_done >= t.max_epochs)):
        need = epochs_done + int(mid_epoch)
        raise CheckpointError(f"{path} has trained {trained}, more than trainer.max_epochs={t.max_epochs}: a resume "
                              f"only trains on. Resume with at least trainer.max_epochs={need} (its run was set "
                              f"to {old.trainer.max_epochs}), {hint}")
    if t.max_steps > 0 and step > t.max_steps:
        raise CheckpointError(f"{path} has trained {trained}, more than trainer.max_steps={t.max_steps}: a resume "
                              f"only trains on. Resume with at least trainer.max_steps={step} (its run was set "
                              f"to {old.trainer.max_steps}), {hint}")


def inspect_resume(path: str | Path, cfg: Config, run_dir: str | Path) -> ResumeInfo:
    """Check that ``path`` is a training checkpoint this run can continue, before Lightning loads it.

    Errors (``CheckpointError``, one line each): not a readable checkpoint; a plain state dict (``model.pt``); a
    checkpoint of another task or of another model than ``cfg.model``; a finished training of another run folder
    (continuing it would write that run's results here).
    """
    from .errors import CheckpointError
    from .files import load_torch
    from .lit.checkpointing import resume_step

    path = Path(path)
    ckpt = load_torch(path, "checkpoint")
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path} is a plain state dict (like model.pt), not a training checkpoint: it has no "
                              "optimiser, schedule or epoch to resume. Resume from <run>/ckpt/last.ckpt, or start a "
                              f"new run from these weights with --set model.pretrained={path}")
    if not isinstance(ckpt, dict) or "loops" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint of mnv2_vision (no training loop state); resume "
                              "from <run>/ckpt/last.ckpt")
    stored = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} carries no config; was it written by an mnv2_vision training tool?")
    old = config_from_dict(stored, where=f" in checkpoint {path}")
    if old.task != cfg.task:
        raise CheckpointError(f"{path} is a {old.task} checkpoint; this run trains {cfg.task}: resume it with the "
                              f"{old.task} tool, or give this task's checkpoint")
    diffs = _diff(dataclasses.asdict(old.model), dataclasses.asdict(cfg.model), "model.")
    if diffs:
        raise CheckpointError(f"{path} holds another model than this config builds ({'; '.join(diffs[:4])}); "
                              "resume with the config it was trained with (its config.yaml)")
    progress = ckpt["loops"].get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    # An epoch counts once its training batches are done ("processed"): last.ckpt at an epoch's end is written
    # before Lightning counts the epoch "completed". A step save inside the next epoch has "started" it.
    completed = int(progress.get("completed", ckpt.get("epoch", 0)))
    epochs_done = max(completed, int(progress.get("processed", completed)))
    mid_epoch = int(progress.get("started", epochs_done)) > epochs_done
    step = int(ckpt.get("global_step", 0))
    t = cfg.trainer
    _check_limits(path, old, t, epochs_done, mid_epoch, step)
    finished = (t.max_epochs > 0 and epochs_done >= t.max_epochs) or (t.max_steps > 0 and step >= t.max_steps)
    inside = Path(run_dir).resolve() in path.resolve().parents
    if finished and not inside:
        raise CheckpointError(f"{path} finished its training ({epochs_done} epoch(s), step {step}; "
                              f"trainer.max_epochs={t.max_epochs}): there is nothing to resume, and continuing it "
                              "here would copy another run's results into this folder. Train longer with a larger "
                              f"trainer.max_epochs, start a new run from its weights with --set model.pretrained="
                              f"{path}, or evaluate it with the eval tool")
    return ResumeInfo(path, finished, epochs_done, step, resume_step(ckpt))
