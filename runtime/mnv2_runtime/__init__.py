"""mnv2_runtime: run models exported by mnv2_vision (``tools/export.py``) without PyTorch.

    import mnv2_runtime
    model = mnv2_runtime.load("model.onnx")
    [result] = model.predict("photo.jpg", score_thresh=0.3)    # boxes, scores, labels, names, ... as numpy arrays

Needs numpy, Pillow and ONNX Runtime (``.tflite``: the ``litert`` extra; OpenVINO ``.xml``: ``openvino``). It is
the one home of what an exported model needs at run time (metadata checks, the network input, decoding and NMS,
masks, result dicts); ``mnv2_vision.load`` runs exported files through it.
"""
from .errors import MissingRuntime, ModelError
from .model import Model, load
from .version import __version__

__all__ = ["load", "Model", "ModelError", "MissingRuntime", "__version__"]
