"""The steps of ``tools/export.py`` beyond ONNX: what every format shares (``inputs``) and the LiteRT and OpenVINO
formats (``litert``, ``openvino``), each imported by ``commands/export.py`` once its extra is known installed."""
