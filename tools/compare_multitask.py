"""The multi-task pair against the two single-task demos on the built-in shapes, with the same step budget each.

The tool lives in ``mnv2_vision/commands/compare_multitask.py``; installed, it is also
the ``mnv2-compare-multitask`` command.
"""
from mnv2_vision.commands.compare_multitask import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
