"""Measurement, kept apart from what ships (``deploy/``): latency timing (``timing``) and the data-pipeline benchmark
(``data``), both driven by ``tools/benchmark.py``."""
