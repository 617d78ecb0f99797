"""What ships: fused inference (``fuse``), memory-efficient inverted residuals (``memory``), ONNX export with the ONNX
Runtime parity check (``onnx_export``), int8 quantisation (``quantize``) and the exported model's metadata
(``metadata``). Measuring them is ``perf/``'s business; nothing here imports it.

``onnx_export`` and ``quantize`` need the ``deploy`` extra (onnx, onnxruntime); the rest only torch.
"""
