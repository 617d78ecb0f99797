"""Measurement, kept apart from what ships (``deploy/``), all driven by ``tools/benchmark.py`` unless named:

- ``timing``: round-robin latency timing and the machine's fp32 multiply-add rate (the compute floor);
- ``network``: end-to-end inference callables, torchvision's peers, training-step throughput;
- ``latency``: the latency table of our models and their exports against the floor, and its ratios;
- ``runtimes``, ``formats``: one table per model, the PyTorch CPU graph and each export format (fp32, int8);
- ``ort_profile``: where ONNX Runtime's time goes, by convolution kind;
- ``memory``: peak tensor memory and the memory-efficient-mode table;
- ``complexity``: parameters and multiply-adds (also ``tools/complexity.py``);
- ``accuracy``: exported and int8 models scored on the validation split (``tools/export.py --int8``);
- ``data``, ``coco_eval``, ``predictor``: data pipelines, COCO evaluation time, the predictor's paths.
"""
