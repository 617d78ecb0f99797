"""Complexity of a model: parameters, multiply-adds (torch.utils.flop_counter, MAdds = FLOPs / 2), per-stage table.

    python tools/profile.py mobilenet_v2 --size 224 224
    python tools/profile.py ssdlite320_mobilenet_v2 --size 320 320 --set num_classes=91
    python tools/profile.py deeplabv3_mobilenet_v2 --size 513 513 --set aspp=full
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import json
import sys
from pathlib import Path
from typing import Sequence

import yaml

# This file shares its name with the standard library's ``profile`` module (which torch imports through cProfile):
# put the repository root, not ``tools/``, first on the path.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from mnv2_vision.cli import guarded  # noqa: E402
from mnv2_vision.config import ConfigError  # noqa: E402
from mnv2_vision.models import MODELS, build_model, list_models  # noqa: E402
from mnv2_vision.profiling import profile_model  # noqa: E402


@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="input size (default: 224 classification, 320 detection, 513 segmentation)")
    p.add_argument("--set", action="append", default=[], metavar="ARG=VALUE",
                   help="builder keyword argument, YAML-parsed (e.g. width_mult=0.5, output_stride=8)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)

    kwargs = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects arg=value, got {item!r}")
        k, v = item.split("=", 1)
        kwargs[k] = yaml.safe_load(v)
    if args.model in MODELS:
        accepted = inspect.signature(MODELS[args.model]).parameters
        for k in kwargs:
            if k not in accepted:
                close = difflib.get_close_matches(k, accepted, n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ConfigError(f"{args.model} takes no argument {k!r}; {hint}(it takes: {', '.join(accepted)})")
    model = build_model(args.model, **kwargs)
    size = tuple(args.size) if args.size else (
        (320, 320) if args.model.startswith("ssd") else (513, 513) if args.model.startswith("deeplab") else (224, 224))
    prof = profile_model(model, size)
    print(f"{args.model} {kwargs or ''} input {size[0]}×{size[1]}")
    print(prof.table())
    print(f"params: {prof.params:,} ({prof.params / 1e6:.2f} M)   MAdds: {prof.madds:,} ({prof.madds / 1e9:.3f} B)")
    result = {"model": args.model, "kwargs": kwargs, "size": list(size), "params": prof.params, "madds": prof.madds}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
