"""Run a trained model on image files or folders; write annotated images and a JSON of the predictions.

The tool lives in ``mnv2_vision/commands/predict.py`` (a wrapper of ``mnv2_vision.load(...).predict``); installed,
it is also the ``mnv2-predict`` command.
"""
from mnv2_vision.commands.predict import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
