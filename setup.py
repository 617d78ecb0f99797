from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec((Path(__file__).parent / "mnv2_vision" / "version.py").read_text(), version)

# Console commands: mnv2-<tool> runs tools/<tool>.py's main (the code lives in mnv2_vision/commands/).
COMMANDS = {
    "train-det": "train_det", "train-seg": "train_seg", "train-cls": "train_cls",
    "train-multitask": "train_multitask", "eval-det": "eval_det", "eval-seg": "eval_seg", "eval-cls": "eval_cls",
    "predict": "predict", "export": "export", "benchmark": "benchmark", "check-data": "check_data",
    "prepare-data": "prepare_data", "ablate": "ablate", "plot-logs": "plot_logs", "compare-multitask": "compare_multitask",
    "complexity": "complexity",
    "convert-data": "convert_data",
}

setup(
    name="mnv2_vision",
    version=version["__version__"],
    description="MobileNetV2 backbone with SSDLite detection and DeepLabv3 segmentation, trained with PyTorch Lightning",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # configs/ (named configs and ablation studies) ships inside the package as mnv2_vision/configs, so
    # load_config("ssdlite_coco") works after a plain `pip install` (config.config_dir finds either place).
    # mnv2_runtime (runtime/, also its own distribution: `pip install ./runtime`, no PyTorch) ships here too: it is
    # where exported models' metadata rules, preprocessing and post-processing live, and mnv2_vision imports them.
    packages=[*find_packages(include=["mnv2_vision", "mnv2_vision.*"]), "mnv2_vision.configs",
              "mnv2_vision.configs.studies", *find_packages("runtime", include=["mnv2_runtime", "mnv2_runtime.*"])],
    package_dir={"mnv2_vision.configs": "configs", "mnv2_runtime": "runtime/mnv2_runtime"},
    package_data={"mnv2_vision.configs": ["*.yaml", "studies/*.yaml"]},
    entry_points={"console_scripts": [
        *(f"mnv2-{name} = mnv2_vision.commands.{module}:console" for name, module in COMMANDS.items()),
        "mnv2-profile = mnv2_vision.commands.complexity:console",  # the old name of tools/complexity.py
    ]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2",
        "torchvision>=0.17",
        "pytorch-lightning>=2.2",
        "pycocotools>=2.0.7",
        "albumentations>=2.0",  # 2.x API (fill=, pixel.functional) used by data/
        "simplejpeg>=1.8",  # libjpeg-turbo decoding with DCT scaling (data/decode.py)
        "zlib-ng>=0.4",  # label PNGs inflated in one call, ~10x faster than zlib (data/decode.py)
        "pyyaml>=6.0",
        "numpy>=1.24",
        "pillow>=10.0",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        "defusedxml>=0.7",  # VOC XML and CVAT annotations from users' files (data/formats): no entity expansion
    ],
    extras_require={
        "dev": [
            "pytest>=7.4",
            "torchmetrics>=1.2",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "onnxscript>=0.1",
            "faster-coco-eval>=1.6",
            "av>=14",  # the video extra: tests/test_video*.py
            "trackers>=2.6",
        ],
        # eval.coco_evaluator=faster_coco_eval: the same COCO stats as pycocotools, several times faster
        "fast-eval": [
            "faster-coco-eval>=1.6",
        ],
        # `make docs`: the documentation site (mkdocs.yml), API pages generated from the docstrings
        "docs": [
            "mkdocs>=1.6",
            "mkdocs-material>=9.5",
            "mkdocstrings[python]>=1.0",
        ],
        # video files, cameras and streams (Predictor.stream, tools/predict.py on a video): PyAV decodes and writes
        # (its wheels carry FFmpeg with libx264); --track's ByteTrack comes from Roboflow's trackers (where
        # supervision's sv.ByteTrack moved; it pulls supervision and opencv-python)
        "video": [
            "av>=14",
            "trackers>=2.6",
        ],
        # tools/export.py and tools/benchmark.py: ONNX export, ONNX Runtime parity check, int8 quantisation
        "deploy": [
            "onnx>=1.15",
            "onnxruntime>=1.17",
        ],
        # tools/export.py --format litert: .tflite conversion (litert-torch, its PT2E int8 quantizer) and the LiteRT
        # interpreter. About 0.9 GB installed (litert-torch pulls jax, jaxlib, transformers and the MLIR converter),
        # so not in dev: tests/test_litert.py skips without it; `make extras-check` runs it in a venv of its own.
        # Running .tflite files needs only ai-edge-litert. onnx and onnxruntime as in deploy: tools/export.py's
        # checks (deploy/onnx_export.py) import them.
        "litert": [
            "litert-torch>=0.10",
            "ai-edge-litert>=2.3",
            "onnx>=1.15",
            "onnxruntime>=1.17",
        ],
        # tools/export.py --format openvino: the ONNX graph converted to OpenVINO IR, NNCF int8 (tested with
        # openvino 2026.4, nncf 3.4); loading an .xml needs openvino alone. Not in dev: a pytest process that has
        # run OpenVINO and then forks DataLoader workers segfaulted at the fork (2 of 3 runs, 2026-12-07), so
        # tests/test_openvino.py runs where the extra is installed, in its own pytest process (`make extras-check`)
        "openvino": [
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "openvino>=2026.4",
            "nncf>=3.4",
        ],
    },
)
