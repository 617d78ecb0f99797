"""Parameters and multiply-adds (``torch.utils.flop_counter``; MAdds = FLOPs / 2) with a per-stage table."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["StageRow", "Profile", "count_params", "count_madds", "profile_model"]


@dataclass
class StageRow:
    name: str
    params: int
    madds: int
    out_shape: tuple[int, ...] | None


@dataclass
class Profile:
    params: int
    madds: int
    input_size: tuple[int, int]
    rows: list[StageRow] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'stage':<28} {'output':>18} {'params':>12} {'MAdds (M)':>11}"]
        for r in self.rows:
            shape = "×".join(str(s) for s in r.out_shape[1:]) if r.out_shape else "-"
            lines.append(f"{r.name:<28} {shape:>18} {r.params:>12,} {r.madds / 1e6:>11.2f}")
        lines.append(f"{'total':<28} {'':>18} {self.params:>12,} {self.madds / 1e6:>11.2f}")
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _block_names(model: nn.Module) -> dict[int, str]:
    """A backbone's blocks by the names its ``feature_info`` declares (the documented taps): MobileNetV2 numbers its
    layers as the paper does (``layer1`` = the stem conv … ``layer19``), MobileNetV1 names its taps TF-style."""
    declared = {f.module: f.name for f in getattr(model, "feature_info", []) if not f.expand}
    numbered = bool(declared) and all(n.startswith("layer") for n in declared.values())
    return {i: declared.get(i, f"layer{i + 1}" if numbered else f"features.{i}")
            for i in range(len(getattr(model, "features", [])))}


def _stages(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Rows of the table: the blocks of ``features`` / ``backbone`` containers (named as the backbone's taps) and
    every other top-level child."""
    rows = []
    for name, child in model.named_children():
        full = prefix + name
        if name == "features" and hasattr(model, "feature_info"):
            names = _block_names(model)
            rows += [(prefix + names[i], block) for i, block in enumerate(child)]
        elif name in ("backbone", "features", "extras", "extra") or isinstance(child, nn.ModuleList):
            rows += _stages(child, full + ".")
        else:
            rows.append((full, child))
    return rows


@torch.no_grad()
def count_madds(model: nn.Module, size: tuple[int, int], batch: int = 1) -> int:
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as fc:
        model(torch.zeros(batch, 3, *size))
    model.train(was_training)
    return fc.get_total_flops() // 2 // batch


@torch.no_grad()
def profile_model(model: nn.Module, size: tuple[int, int]) -> Profile:
    """Params, MAdds at ``size`` (H, W) and a per-stage table, from one forward pass of a zero image."""
    was_training = model.training
    model.eval()
    stages = _stages(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, mod in stages:
        # On every submodule: a block the body runs piece by piece (MobileNetV2's walk to the SSDLite expansion tap
        # calls its convs, not the block) still reports the output of its last piece.
        def hook(_m, _i, out, name=name):
            t = _first_tensor(out)
            shapes[name] = tuple(t.shape) if t is not None else None
        hooks += [m.register_forward_hook(hook) for m in mod.modules()]
    try:
        with FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    root = type(model).__name__
    paths = {id(m): f"{root}.{n}" for n, m in model.named_modules()}  # the flop counter's keys

    def madds(mod: nn.Module) -> int:
        key = paths[id(mod)]
        if key in counts:
            return counts[key] // 2
        # Not called as a whole: the outermost of its submodules that were (their counts include their children).
        inner = [k for k in counts if k.startswith(key + ".")]
        return sum(counts[k] for k in inner if k.rsplit(".", 1)[0] not in counts) // 2

    rows = [StageRow(name, count_params(mod), madds(mod), shapes.get(name)) for name, mod in stages]
    return Profile(count_params(model), fc.get_total_flops() // 2, tuple(size), rows)
