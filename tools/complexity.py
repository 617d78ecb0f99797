"""Complexity of a model: parameters, multiply-adds (torch.utils.flop_counter, MAdds = FLOPs / 2), per-stage table.

    python tools/complexity.py mobilenet_v2 --size 224 224
    python tools/complexity.py ssdlite320_mobilenet_v2 --size 320 320 --set num_classes=91
    python tools/complexity.py deeplabv3_mobilenet_v2 --size 513 513 --set aspp=full

Formerly tools/profile.py (a name that shadowed the standard library's ``profile`` module whenever a tool ran);
installed, it is the ``mnv2-complexity`` command, with ``mnv2-profile`` kept as an alias. The tool lives in
``mnv2_vision/commands/complexity.py``.
"""
from mnv2_vision.commands.complexity import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
