"""mnv2_vision: MobileNetV2 with SSDLite detection and DeepLabv3 segmentation."""
from .config import load_config
from .models import build_model, list_models
from .predictor import load
from .version import __version__

__all__ = ["build_model", "list_models", "load", "load_config", "__version__"]
