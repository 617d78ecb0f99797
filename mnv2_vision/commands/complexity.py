"""Complexity of a model: parameters, multiply-adds (torch.utils.flop_counter, MAdds = FLOPs / 2), per-stage table.

    python tools/complexity.py mobilenet_v2 --size 224 224
    python tools/complexity.py ssdlite320_mobilenet_v2 --size 320 320 --set num_classes=91
    python tools/complexity.py deeplabv3_mobilenet_v2 --size 513 513 --set aspp=full

Formerly tools/profile.py (a name that shadowed the standard library's ``profile`` module whenever a tool ran);
installed, it is the ``mnv2-complexity`` command, with ``mnv2-profile`` kept as an alias.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Sequence

from mnv2_vision.commands.cli import add_debug_flag, exit_status, guarded, make_parser
from mnv2_vision.config import ConfigError, parse_yaml
from mnv2_vision.files import write_json
from mnv2_vision.models import MODELS, build_model, list_models
from mnv2_vision.perf.complexity import profile_model



@guarded
def main(argv: Sequence[str] | None = None) -> dict:
    p = make_parser(__doc__)
    p.add_argument("model", help=f"one of: {', '.join(list_models())}")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="input size (default: 224 classification, 320 detection, 513 segmentation)")
    p.add_argument("--set", action="append", default=[], metavar="ARG=VALUE",
                   help="builder keyword argument, YAML-parsed (e.g. width_mult=0.5, output_stride=8)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = add_debug_flag(p).parse_args(argv)

    kwargs = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects arg=value, got {item!r}")
        k, v = item.split("=", 1)
        kwargs[k] = parse_yaml(v, f"--set {k}")
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
        write_json(args.json, result)
    return result


def console() -> int:
    """The ``mnv2-complexity`` command (alias ``mnv2-profile``) and ``python tools/complexity.py``."""
    return exit_status(main())
