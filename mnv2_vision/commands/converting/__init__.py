"""Helpers of ``tools/convert_data.py``: the output folder, written whole or not at all."""
