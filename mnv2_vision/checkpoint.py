"""Checkpoints carry their resolved config: eval, predict and export rebuild the model from the file alone."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, ConfigError, ModelCfg, config_from_dict
from .models import MODELS, build_model

__all__ = ["load_checkpoint", "model_kwargs", "build_from_config", "load_model"]


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
