"""Run an ablation study: every variant of a base config trained with the same seed, schedule and data.

The tool lives in ``mnv2_vision/commands/ablate.py``; installed, it is also the ``mnv2-ablate`` command.
"""
from mnv2_vision.commands.ablate import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
