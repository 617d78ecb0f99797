"""The steps of ``tools/predict.py`` beyond images: a video file, a camera or a stream (``video``)."""
