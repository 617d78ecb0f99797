"""CPU benchmark: params, MAdds and median batch-1 latency of SSDLite-MobileNetV2 (320²) and DeepLabv3-MobileNetV2

The tool lives in ``mnv2_vision/commands/benchmark.py``; installed, it is also the ``mnv2-benchmark`` command.
"""
from mnv2_vision.commands.benchmark import console, main

__all__ = ["console", "main"]  # main(argv) for Python callers and tests

if __name__ == "__main__":
    raise SystemExit(console())
