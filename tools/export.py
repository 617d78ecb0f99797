"""Export a checkpoint to ONNX (verified against PyTorch with ONNX Runtime), optionally also int8; or a state dict.

The tool lives in ``mnv2_vision/commands/export.py``; installed, it is also the ``mnv2-export`` command.
"""
from mnv2_vision.commands.export import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
