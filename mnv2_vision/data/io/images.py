"""Robust image loading shared by every dataset and tool: ``mnv2_runtime.images``'s readers (EXIF orientation,
grayscale / palette / RGBA / CMYK / 16-bit to RGB), which the runtime that runs exported models without PyTorch
needs too, so the conversions exist once.
"""
from __future__ import annotations

from mnv2_runtime.images import load_rgb, pil_to_rgb

__all__ = ["load_rgb", "pil_to_rgb"]
