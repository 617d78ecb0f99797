"""The runtime without PyTorch gives the PyTorch predictor's results (issue #25; `.ci/run` runs it via `make
runtime-check`, tests/test_runtime.py through its `predict` mode).

    python .ci/runtime_check.py --runtime-python /tmp/rt/bin/python      # in the project's venv (torch, onnx)

1. A checkpoint as training writes it (SSDLite 320², width 1.0, the shapes classes; random weights whose outputs
   depend on the image: ``sensitive``) is exported by ``tools/export.py`` to ``model.onnx`` (NMS in the graph).
2. The PyTorch predictor (``mnv2_vision.load(ckpt)``) predicts the images: real coco128 validation images when
   ``$MNV2_REAL_DATA/coco128`` exists, else generated JPEGs of several sizes.
3. ``--runtime-python`` (a venv holding only ``pip install ./runtime``) runs this script's ``predict`` mode, which
   refuses to import torch, torchvision, Lightning, OpenCV, simplejpeg and mnv2_vision and predicts with
   ``mnv2_runtime`` alone, into an ``.npz``.
4. The two are compared with the export's own rule (``deploy.onnx_export.match_detections``: same labels, boxes
   within 0.01 px, scores within 1e-4; masks: ≥ 99.9 % of pixels agree). Any difference exits 1.

``predict`` mode: ``python runtime_check.py predict MODEL OUT.npz IMAGE...`` (any model an export writes; boxes,
scores, labels and masks of each image into ``OUT.npz``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
# what the runtime must run without (torch's wheel alone is ~1 GB; OpenCV's and simplejpeg are the training
# pipeline's decoders, which the runtime replaces with Pillow and its own resize)
FORBIDDEN = ("torch", "torchvision", "pytorch_lightning", "lightning", "cv2", "simplejpeg", "mnv2_vision")
MASK_AGREEMENT = 0.999


def predict(model: str, out: str, images: Sequence[str]) -> None:
    """Predict ``images`` with ``mnv2_runtime`` alone and save the results (``predict`` mode)."""
    for name in FORBIDDEN:  # an import of any of them now raises ImportError
        sys.modules[name] = None  # type: ignore[assignment]
    import numpy as np

    import mnv2_runtime

    results = mnv2_runtime.load(model, threads=1).predict(list(images), batch_size=2)
    arrays: dict[str, Any] = {}
    for i, r in enumerate(results):
        for key in ("boxes", "scores", "labels", "mask"):
            if key in r:
                arrays[f"{i}/{key}"] = r[key]
        arrays[f"{i}/size"] = np.array(r["size"])
    np.savez(out, **arrays)
    loaded = sorted(n for n in FORBIDDEN if sys.modules.get(n) is not None)
    assert not loaded, f"mnv2_runtime imported {loaded}"
    print(f"mnv2_runtime {mnv2_runtime.__version__} from {Path(mnv2_runtime.__file__).parent}: "
          f"{len(results)} images, no torch")


def run_runtime(python: str | None, model: Path, images: Sequence[Path], out: Path) -> dict[int, dict[str, Any]]:
    """``predict`` mode run by ``python`` in a folder outside the repository, so that only what its venv installed
    counts (``None``: this interpreter, with the source tree's ``runtime/``); its results by image."""
    import numpy as np

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if python is None:
        python, env["PYTHONPATH"] = sys.executable, str(REPO / "runtime")
    python = os.path.abspath(python)  # not resolved: a venv's python is a symlink to the interpreter it wraps
    subprocess.run([python, str(Path(__file__).resolve()), "predict", str(model), str(out), *map(str, images)],
                   check=True, env=env, cwd=out.parent)
    data = np.load(out)
    found: dict[int, dict[str, Any]] = {}
    for key in data.files:
        i, name = key.split("/")
        found.setdefault(int(i), {})[name] = data[key]
    return found


def compare(reference: Sequence[dict[str, Any]], got: dict[int, dict[str, Any]]) -> list[str]:
    """Differences between the PyTorch predictor's results and the runtime's (empty: equal)."""
    import numpy as np
    import torch

    from mnv2_vision.deploy.onnx_export import match_detections

    problems = []
    for i, ref in enumerate(reference):
        mine = got.get(i)
        if mine is None:
            problems.append(f"image {i}: no runtime result")
            continue
        if tuple(mine["size"]) != tuple(ref["size"]):
            problems.append(f"image {i}: size {tuple(mine['size'])} vs {tuple(ref['size'])}")
        if "boxes" in ref:
            dets = {k: torch.from_numpy(np.asarray(mine[k])) for k in ("boxes", "scores", "labels")}
            problems += [f"image {i}: {p}" for p in match_detections(ref, dets)]
        if "mask" in ref:
            agree = float((torch.from_numpy(mine["mask"]) == ref["mask"]).float().mean())
            if agree < MASK_AGREEMENT:
                problems.append(f"image {i}: masks agree on {agree:.4%} of pixels, under {MASK_AGREEMENT:.1%}")
    return problems


def _images(folder: Path, n: int) -> list[Path]:
    """``n`` real coco128 validation images, or generated JPEGs of several sizes without real data."""
    base = os.environ.get("MNV2_REAL_DATA")
    real = Path(base) / "coco128" / "val2017" if base else None
    if real is not None and real.is_dir():
        return sorted(real.glob("*.jpg"))[:n]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(200, 700)), int(rng.integers(200, 700))
        smooth = np.kron(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)), np.ones((16, 16, 1)))[:h, :w]
        paths.append(folder / f"synthetic_{i}.jpg")
        Image.fromarray(smooth.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def sensitive(model: Any) -> Any:
    """``model`` (a fresh one) with random weights that make its outputs depend on the image: He-normal
    convolutions, identity BN layers. A fresh model's outputs barely do (its zero-initialised residual BN layers
    leave logits ~1e-6 apart between two images), so any network input would give the same detections."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0), m.bias.zero_(), m.running_mean.zero_(), m.running_var.fill_(1.0)
    return model.eval()


def _checkpoint(path: Path) -> Path:
    """An SSDLite checkpoint as train_det writes it (random weights: ``sensitive``)."""
    import torch

    from mnv2_vision.checkpoint import build_from_config
    from mnv2_vision.config import load_config, to_dict

    torch.manual_seed(0)
    cfg = load_config("ssdlite_shapes", ["data.image_size=320", "model.num_classes=5", "data.num_workers=0"])
    model = sensitive(build_from_config(cfg, pretrained=False))
    torch.save({"hyper_parameters": {"config": to_dict(cfg), "category_ids": [1, 3, 4, 7],
                                     "category_names": ["circle", "square", "star", "triangle"]},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def check(runtime_python: str | None, n: int) -> int:
    """Steps 1-4 of the module docstring; 0 when the runtime's results equal the PyTorch predictor's."""
    sys.path.insert(0, str(REPO))
    import mnv2_vision
    from mnv2_vision.commands import export

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = _checkpoint(work / "last.ckpt")
        model = Path(export.main(["--ckpt", str(ckpt), "--out", str(work / "export"), "--check-images", "0",
                                  "--threads", "2"])["onnx"])
        images = _images(work, n)
        reference = mnv2_vision.load(ckpt, device="cpu").predict(images, batch_size=2)
        got = run_runtime(runtime_python, model, images, work / "runtime.npz")
        problems = compare(reference, got)
    boxes = sum(len(r["boxes"]) for r in reference)
    if problems:
        print(f"runtime check: the runtime differs from the PyTorch predictor on {len(problems)} detection(s):")
        print("\n".join(f"  {p}" for p in problems[:20]))
        return 1
    print(f"runtime check: {len(images)} images ({images[0].parent}), {boxes} detections of {model.name} from "
          f"{runtime_python or 'the source tree'} equal the PyTorch predictor's ({time.perf_counter() - start:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["predict"]:
        if len(argv) < 4:
            raise SystemExit("usage: runtime_check.py predict MODEL OUT.npz IMAGE...")
        predict(argv[1], argv[2], argv[3:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime-python", default=None,
                   help="the python of a venv holding only mnv2_runtime (default: this one, with the source tree's)")
    p.add_argument("--images", type=int, default=16, help="how many images to compare")
    args = p.parse_args(argv)
    return check(args.runtime_python, args.images)


if __name__ == "__main__":
    raise SystemExit(main())
