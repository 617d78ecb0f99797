"""Deployment and speed: fused inference (``fuse``), memory-efficient inverted residuals (``memory``), ONNX export
with the ONNX Runtime parity check (``onnx_export``), int8 quantisation (``quantize``), accuracy of exported models
(``evaluate``), the fused path's post-processing (``postprocess``) and the benchmark's parts (``timing``, ``bench``).

``onnx_export``, ``quantize`` and ``evaluate`` need the ``deploy`` extra (onnx, onnxruntime); the rest only torch.
"""
