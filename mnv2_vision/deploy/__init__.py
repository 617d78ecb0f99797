"""Deployment and speed: fused inference (``fuse``), memory-efficient inverted residuals (``memory``), ONNX export
with the ONNX Runtime parity check (``onnx_export``), int8 quantisation (``quantize``), accuracy of exported models
(``evaluate``), the fused path's post-processing (``postprocess``) and the model benchmark's parts (``bench``; its
timing helpers are in ``perf/timing.py``).

``onnx_export``, ``quantize`` and ``evaluate`` need the ``deploy`` extra (onnx, onnxruntime); the rest only torch.
"""
