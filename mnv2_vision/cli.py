"""What every tool shares: ``--cfg/--set/--out/--print-config/--resume`` and the run folder set-up."""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, Sequence

from .config import Config, ConfigError, load_config, save_config, to_yaml

__all__ = ["base_parser", "setup_run", "guarded", "resolve_resume"]


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", required=True, help="config name in configs/ (e.g. ssdlite_coco) or a path to a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable; dotted keys, YAML values: --set optim.lr=0.1)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="resume training from a checkpoint (a path, or 'last' for <out>/ckpt/last.ckpt)")
    return p


def setup_run(args: argparse.Namespace) -> tuple[Config, Path]:
    """Resolve the config (defaults < file < --set), print it, and save it as ``<out>/config.yaml``."""
    cfg = load_config(args.cfg, args.set)
    print(to_yaml(cfg), end="", flush=True)
    if args.print_config:
        raise SystemExit(0)
    out_dir = Path(args.out) if args.out else Path("runs") / Path(args.cfg).stem
    save_config(cfg, out_dir / "config.yaml")
    return cfg, out_dir


def resolve_resume(resume: str | None, out_dir: Path) -> str | None:
    """``--resume last`` → ``<out>/ckpt/last.ckpt``; a path that does not exist is an error, never a fresh start."""
    if resume is None:
        return None
    path = out_dir / "ckpt" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint at {path}")
    return str(path)


def guarded(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], object]:
    """Turn user errors (bad config key/value, missing dataset or checkpoint) into a one-line message and exit 2."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> object:
        try:
            return main(argv)
        except (ConfigError, FileNotFoundError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {msg}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
