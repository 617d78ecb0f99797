"""Render a run's curves (loss, learning rate, validation metrics) from its CSV log to a PNG.

The tool lives in ``mnv2_vision/commands/plot_logs.py``; installed, it is also the ``mnv2-plot-logs`` command.
"""
from mnv2_vision.commands.plot_logs import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
