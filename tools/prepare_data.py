"""Download (or take from --archives), check and lay out a real dataset where the configs' data.root expects it.

The tool lives in ``mnv2_vision/commands/prepare_data.py``; installed, it is also the ``mnv2-prepare-data`` command.
"""
from mnv2_vision.commands.prepare_data import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
