"""Model registry: one small dict of builders. Every family is imported explicitly at the bottom."""
from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

__all__ = ["MODELS", "register_model", "build_model", "list_models"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    MODELS[fn.__name__] = fn
    return fn


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; keyword arguments go to its builder (see ``list_models()``)."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (known: {', '.join(list_models())})")
    return MODELS[name](**kwargs)


def list_models() -> list[str]:
    return sorted(MODELS)


from . import mobilenetv2  # noqa: E402

register_model(mobilenetv2.mobilenet_v2)

from . import mobilenetv1  # noqa: E402

register_model(mobilenetv1.mobilenet_v1)

from . import ssdlite  # noqa: E402

register_model(ssdlite.ssdlite320_mobilenet_v2)
register_model(ssdlite.ssdlite320_mobilenet_v1)

from . import deeplabv3  # noqa: E402

register_model(deeplabv3.deeplabv3_mobilenet_v2)
register_model(deeplabv3.deeplabv3_mobilenet_v1)

from . import multitask  # noqa: E402

register_model(multitask.ssdlite320_deeplabv3_mobilenet_v2)
register_model(multitask.ssdlite320_deeplabv3_mobilenet_v1)
