"""What ships: fused inference (``fuse``), memory-efficient inverted residuals (``memory``), ONNX export with the ONNX
Runtime parity check (``onnx_export``) and int8 quantisation (``quantize``). The exported model's metadata rules live
in ``mnv2_runtime.metadata`` (the runtime without PyTorch checks files by them too). Measuring them is ``perf/``'s
business; nothing here imports it.

``onnx_export`` and ``quantize`` need the ``deploy`` extra (onnx, onnxruntime); the rest only torch.
"""
