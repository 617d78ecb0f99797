"""What every tool shares: ``--cfg/--set/--out/--print-config/--resume/--overwrite/--debug``, the run folder set-up,
a train command (``training_command``), and one place that turns a user's mistake into one line and an exit status.

Exit status: 0 done; 1 the data has problems (``check_data`` found some, a tool skipped images, no usable image);
2 a mistake in what was given (config key or value, missing or unreadable file, wrong checkpoint, run folder in use,
full disk); 128 + N stopped by signal N after saving ``last.ckpt`` (143 SIGTERM, 130 Ctrl-C). ``--debug`` shows the
traceback instead.

Skipped images, one rule for every tool that predicts or scores a set of images (``predict``, ``eval_det``,
``eval_seg``, ``eval_cls``): an image it cannot use (unreadable, missing, a broken symlink, too large for the memory)
is left out with a warning, the results of all the others are computed and written in full, and the command then
exits with status 1 and one line ``error: skipped N of M image(s) that could not be used: <file> (<reason>); ...``
(``skipped_message``). From Python, the eval tools' ``main`` returns its result dict, which lists them under
``skipped_images`` (``exit_status(result, scored=True)`` maps such a result to 1); ``predict``'s ``main`` raises
its ``DataError`` once everything is written (``guarded``: that line, ``SystemExit(1)``). A training run's final
validation lists the images it skipped too, but the run succeeded: exit status 0.
"""
from __future__ import annotations

import argparse
import copy
import functools
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..config import Config, ConfigError, load_config, to_yaml
from ..errors import ModelError, UserError
from ..files import is_disk_full
from ..lit.runfolder import RunFolder

__all__ = ["HelpFormatter", "make_parser", "base_parser", "setup_run", "training_command", "guarded", "add_debug_flag",
           "exit_status", "skipped_message"]

log = logging.getLogger("mnv2_vision")


def require_extra(missing: ImportError | None, tool: str, extra: str = "deploy") -> None:
    """A command whose optional dependencies failed to import (``missing``) stops with the install command, not a
    traceback: ``pip install "mnv2_vision[deploy]"`` for ONNX export / ONNX Runtime."""
    if missing is not None:
        raise UserError(f"{tool} needs the optional '{extra}' dependencies ({missing.name or missing} is not "
                        f"installed): pip install \"mnv2_vision[{extra}]\"")


def add_debug_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of one line")
    return p


def _shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` should name the default of ``action``: a value the user did not give (not a flag's
    ``False``, not ``None`` / empty = "not given") whose help does not already say what the default means."""
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS or action.help is argparse.SUPPRESS:
        return False
    if isinstance(default, (str, list, tuple)) and not default:
        return False
    return "(default" not in (action.help or "") and "%(default)" not in (action.help or "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's ``--help``: the description as written (its examples keep their lines) and each option's
    default, ``(default: 0.3)``, also where the option has no help text. A default of ``None`` or an empty list
    means "not given" and is not shown; an option whose help explains its default itself keeps that text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _shows_default(action):
            text = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):  # argparse prints no help line at all for these
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def make_parser(description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every command: ``HelpFormatter`` (defaults shown, description kept as written)."""
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)


def base_parser(description: str) -> argparse.ArgumentParser:
    """The training commands' parser: ``--cfg/--set/--out/--print-config/--resume/--overwrite/--debug``."""
    p = make_parser(description)
    p.add_argument("--cfg", required=True, help="config name in configs/ (e.g. ssdlite_coco) or a path to a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable; dotted keys, YAML values: --set optim.lr=0.1)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="resume training from a checkpoint (a path, or 'last' for <out>/ckpt/last.ckpt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds an earlier run (its checkpoints, logs and results "
                        "are deleted first), or write the run into a folder that holds other files (those are kept)")
    return add_debug_flag(p)


def setup_run(args: argparse.Namespace, task: str | None = None) -> tuple[Config, RunFolder]:
    """Resolve the config (defaults < file < --set), check its task, and open the run folder (locked; a fresh run
    never lands in a folder holding another run). ``--print-config`` prints the config and exits. The config is
    written to ``<out>/config.yaml`` by ``write_config`` once the data is known to be there, so a failed start
    leaves no run files behind."""
    cfg = load_config(args.cfg, args.set)
    if args.print_config:
        print(to_yaml(cfg), end="", flush=True)
        raise SystemExit(0)
    if task is not None and cfg.task != task:
        raise ConfigError(f"config {args.cfg!r} has task={cfg.task!r}; this tool trains {task} (task: {task})")
    out_dir = Path(args.out) if args.out else Path("runs") / Path(args.cfg).stem
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite deletes it: give one of them")
    run = RunFolder(out_dir, resume=args.resume, overwrite=args.overwrite).open()
    if run.removed_temp:
        print(f"removed {len(run.removed_temp)} temporary file(s) left by an interrupted run in {out_dir}", flush=True)
    return cfg, run


def skipped_message(skipped: Sequence[object], used: int, where: str, shown: int = 10) -> str:
    """The one line of a tool that left out unusable images: ``skipped 2 of 9 image(s) that could not be used:
    a.jpg (reason); b.jpg (reason). The other 7 are <where>``; the first ``shown`` are named."""
    names = "; ".join(str(s) for s in skipped[:shown]) + ("; ..." if len(skipped) > shown else "")
    return (f"skipped {len(skipped)} of {len(skipped) + used} image(s) that could not be used: {names}. "
            f"The other {used} are {where}")


def exit_status(result: object, scored: bool = False) -> int:
    """A tool's exit status from what its ``main`` returned: an int is the status (``check_data``: 1 when it found
    problems); with ``scored`` (the eval tools) a result dict listing ``skipped_images`` is 1, after
    ``skipped_message``'s line on stderr; anything else (a result for Python callers) means success. Console commands
    and ``python tools/<tool>.py`` exit with this. (A training run's final metrics also list the validation images
    it skipped; the run itself succeeded: 0.)"""
    if scored and isinstance(result, dict) and result.get("skipped_images"):
        used = int(result.get("num_images", 0))
        print(f"error: {skipped_message(result['skipped_images'], used, 'scored in the results above')}",
              file=sys.stderr, flush=True)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _one_line(error: BaseException) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker, its original message (the last line
    of the worker's traceback, without the exception's class name)."""
    msg = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
    return msg


def _wants_traceback(argv: Sequence[str] | None) -> bool:
    return "--debug" in (sys.argv[1:] if argv is None else argv)


def guarded(main: Callable[[Sequence[str] | None], object]) -> Callable[[Sequence[str] | None], object]:
    """Run a tool's ``main``; a user's mistake (``errors.UserError``, a bad exported model: ``errors.ModelError``, a
    missing file, a full disk) becomes one line on stderr and its exit status, a run stopped by a signal exits with
    128 + the signal number. Other exceptions are bugs and keep their traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> object:
        try:
            return main(argv)
        except SystemExit as e:
            stopped = sys.modules.get("pytorch_lightning.utilities.exceptions")
            if stopped is None or not isinstance(e, stopped.SIGTERMException):
                raise
            # Lightning's stop on a signal is a SystemExit without a code (exit 0): a stopped run must not pass.
            signum = getattr(e, "signum", signal.SIGTERM)
            print(f"stopped: {signal.Signals(signum).name} {getattr(e, 'where', '')}; run the same command with "
                  "--resume last to continue", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum) from None
        except (UserError, ModelError, FileNotFoundError, KeyError, PermissionError, IsADirectoryError,
                NotADirectoryError) as e:
            if _wants_traceback(argv):
                raise
            print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(getattr(e, "exit_code", 2)) from None
        except OSError as e:
            if not is_disk_full(e) or _wants_traceback(argv):
                raise
            where = f" while writing {e.filename}" if e.filename else ""
            print(f"error: the disk is full{where} ({e.strerror}); every file written so far is complete. Free some "
                  "space, then run the same command again (a training run: add --resume last)", file=sys.stderr,
                  flush=True)
            raise SystemExit(2) from None

    return wrapper


def training_command(task: str, description: str, *, download: bool = False
                     ) -> tuple[Callable[[Sequence[str] | None], dict], Callable[[], int]]:
    """``main`` and ``console`` of a train command: parse the common flags (``base_parser``; ``--download`` too
    where the data can be fetched), open the run folder (``setup_run``) and train the config into it
    (``lit.driver.train``). ``main(argv)`` returns the result dict (Python callers, tests); ``console()`` is the
    ``mnv2-train-*`` command and ``python tools/train_*.py``, exiting with ``main``'s status."""

    @guarded
    def main(argv: Sequence[str] | None = None) -> dict:
        from ..lit.driver import train  # here, not at the top: the other commands need no training machinery

        p = base_parser(description)
        if download:
            p.add_argument("--download", action="store_true",
                           help="let torchvision download CIFAR-10 / Flowers102 into data.root (needs internet)")
        args = p.parse_args(argv)
        cfg, run = setup_run(args, task=task)
        with run:
            return train(cfg, run.path, resume=run.resume_path, download=getattr(args, "download", False))

    def console() -> int:
        return exit_status(main())

    return main, console
