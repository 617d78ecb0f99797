"""mnv2_runtime (runtime/, issue #25): the runtime without PyTorch imports none of it, makes the evaluation pipeline's
network input to the bit, decodes and runs NMS as torchvision does, and its predictions from an exported model equal
the PyTorch predictor's on the same checkpoint (same labels, boxes within 0.01 px, masks ≥ 99.9 %), for every task,
on generated images always and on real coco128 / coco_masks images when MNV2_REAL_DATA is set."""
from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms as tv_batched_nms

import mnv2_runtime
from mnv2_runtime import postprocess as rpp
from mnv2_runtime.backends import require
from mnv2_runtime.metadata import decode_props, encode_props
from mnv2_runtime.preprocess import detection_input, resize_linear, segmentation_input
from mnv2_vision.checkpoint import build_from_config
from mnv2_vision.config import load_config, to_dict
from mnv2_vision.data.detection.pipeline import FastDetectionTransform
from mnv2_vision.data.io.decode import EncodedImage
from mnv2_vision.deploy.onnx_export import read_metadata
from mnv2_vision.errors import CheckpointError, UserError
from mnv2_vision.ops.boxes import BoxCoder
from mnv2_vision.ops.postprocess import PostprocessSettings, postprocess_detections

from helpers import real_data, tool as _tool

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime" / "mnv2_runtime"
spec = importlib.util.spec_from_file_location("runtime_check", REPO / ".ci" / "runtime_check.py")
runtime_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime_check)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NAMES = ["background", "circle", "square", "star", "triangle"]
HPARAMS = {"detection": {"category_ids": [1, 3, 4, 7], "category_names": NAMES[1:]},
           "segmentation": {"class_names": NAMES},
           "multitask": {"category_ids": [1, 3, 4, 7], "category_names": NAMES[1:], "class_names": NAMES}}


# ---------------------------------------------------------------------------------------------- what it imports
def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path``, and of the packages it imports by name (``require``,
    ``importlib.import_module`` with a constant)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
              in ("require", "import_module") and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_the_runtime_imports_no_torch_and_only_its_dependencies():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) >= 10, files
    forbidden = {"torch", "torchvision", "pytorch_lightning", "lightning", "mnv2_vision", "cv2", "simplejpeg"}
    # numpy, Pillow, onnxruntime (pyproject's dependencies); its extras' ai_edge_litert and openvino
    allowed = {"numpy", "PIL", "onnxruntime", "ai_edge_litert", "openvino", "__future__"}
    found = {f.relative_to(RUNTIME).as_posix(): _imports(f) - set(sys.stdlib_module_names) for f in files}
    bad = {f: sorted(names - allowed) for f, names in found.items() if names - allowed}
    assert not bad, f"mnv2_runtime imports beyond numpy, Pillow and its runtimes: {bad}"
    assert {"onnxruntime", "numpy", "PIL"} <= set().union(*found.values())
    assert not forbidden & set().union(*found.values())
    # the walker sees what it must: a file that imports torch is reported
    assert "torch" in _imports(Path(torch.__file__).parent / "nn" / "functional.py")
    text = (RUNTIME.parent / "pyproject.toml").read_text()
    for dep in ('"numpy', '"pillow', '"onnxruntime', 'litert = ["ai-edge-litert', 'openvino = ["openvino'):
        assert dep in text, dep


# ---------------------------------------------------------------------------------------------- network input
def _random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_equals_opencv_bit_for_bit():
    """Every source length 1..1200 along each axis to the usual input sizes, then random images and sizes."""
    rng = np.random.default_rng(0)
    for out in (64, 300, 320):
        for n in range(1, 1201):
            for shape, size in (((n, 3), (out, 2)), ((3, n), (2, out))):  # the swept axis to `out`
                image = _random_image(rng, *shape)
                want = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
                got = resize_linear(image, size)
                assert np.array_equal(got, want), (shape, out, int(np.abs(got.astype(int) - want).max()))
    for _ in range(200):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 900, 4))
        image = _random_image(rng, h, w)
        want = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_linear(image, (oh, ow)), want), (h, w, oh, ow)


def _written_images(folder: Path) -> list[Path]:
    """JPEGs (colour, grayscale, EXIF-rotated, 4:2:0 and 4:4:4) and a PNG, of several sizes."""
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(480, 640), (333, 517), (64, 64), (1000, 37), (41, 57)]):
        smooth = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        image = Image.fromarray((smooth + rng.integers(0, 40, smooth.shape)).clip(0, 255).astype(np.uint8))
        paths.append(folder / f"colour_{i}.jpg")
        image.save(paths[-1], quality=85, subsampling=2 if i % 2 else 0)
    gray = Image.fromarray(rng.integers(0, 256, (200, 300), dtype=np.uint8))
    gray.save(folder / "gray.jpg", quality=90)
    rotated = Image.fromarray(_random_image(rng, 120, 90))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90° clockwise
    rotated.save(folder / "exif6.jpg", exif=exif, quality=90)
    Image.fromarray(_random_image(rng, 77, 99)).save(folder / "plain.png")
    return [*paths, folder / "gray.jpg", folder / "exif6.jpg", folder / "plain.png"]


def _pipeline_input(path: Path, size: int) -> np.ndarray:
    """The evaluation preset's network input of a file, as the data module makes it."""
    tf = FastDetectionTransform("none", False, size, MEAN, STD)
    none = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    return tf.from_file(EncodedImage(path), *none)[0].numpy()


def _check_inputs(paths: list[Path], sizes: tuple[int, ...]) -> None:
    for path in paths:
        image = mnv2_runtime.images.load_rgb(path)  # Pillow, where the pipeline decodes JPEGs with simplejpeg
        assert image.shape[:2] == tuple(EncodedImage(path).size), path
        for size in sizes:
            got = detection_input(image, (size, size), MEAN, STD)
            want = _pipeline_input(path, size)
            assert got.dtype == np.float32 and np.array_equal(got, want), (path, size, np.abs(got - want).max())


def test_detection_input_equals_the_evaluation_pipeline(tmp_path):
    _check_inputs(_written_images(tmp_path), (64, 320))


def test_detection_input_equals_the_evaluation_pipeline_on_real_images():
    root = real_data("coco128", "val2017")
    _check_inputs(sorted((root / "val2017").glob("*.jpg")), (320,))


def test_segmentation_input_is_the_predictors_arithmetic():
    image = _random_image(np.random.default_rng(2), 37, 53)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    want = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert np.array_equal(segmentation_input(image, MEAN, STD), want.numpy())


# ---------------------------------------------------------------------------------------------- decode and NMS
def test_nms_hand_checked_cases():
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [10, 10, 12, 12], [10, 10, 12, 12.5]], np.float32)
    labels = np.array([1, 1, 1, 2])
    # IoU of boxes 0 and 1 is exactly 0.5: not above a 0.5 threshold, so both stay; at 0.49 the lower score goes
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    assert rpp.batched_nms(boxes, scores, labels, 0.5).tolist() == [3, 0, 1, 2]
    assert rpp.batched_nms(boxes, scores, labels, 0.49).tolist() == [3, 0, 2]
    # boxes 2 and 3 overlap (IoU 0.8) but have different labels: both stay; with one label the better one wins
    assert rpp.batched_nms(boxes, scores, np.ones(4, int), 0.5).tolist() == [3, 0, 1]
    # a tie: equal scores, the same box twice: the lower index is kept, as torchvision's stable sort keeps it
    twins = np.array([[5, 5, 9, 9], [5, 5, 9, 9], [0, 0, 1, 1]], np.float32)
    tied = np.array([0.5, 0.5, 0.5], np.float32)
    assert rpp.batched_nms(twins, tied, np.ones(3, int), 0.5).tolist() == [0, 2]
    assert tv_batched_nms(torch.from_numpy(twins), torch.from_numpy(tied), torch.ones(3, dtype=torch.int64),
                          0.5).tolist() == [0, 2]
    assert rpp.batched_nms(twins, tied, np.ones(3, int), 0.5, max_keep=1).tolist() == [0]
    assert rpp.batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), 0.5).size == 0


@pytest.mark.parametrize("n", [7, 300, 1000, 1001, 2500])
def test_batched_nms_equals_torchvision(n):
    """Random boxes on a coarse grid with quantised scores (many exact ties and touching boxes), both of
    torchvision's ways: up to 1,000 boxes (tiles per class) the same indices in the same order; above, one NMS per
    class, whose kept boxes are the same but come out of torch's unstable sort, so equal scores may swap places."""
    rng = np.random.default_rng(n)
    for trial in range(20 if n <= 1000 else 4):  # a quadratic NMS in Python above 1,000 boxes
        xy = rng.integers(0, 40, (n, 2)).astype(np.float32) * 4
        wh = rng.integers(1, 12, (n, 2)).astype(np.float32) * 4
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = (rng.integers(0, 20, n) / 20).astype(np.float32)
        labels = rng.integers(1, 4, n)
        for iou in (0.3, 0.5, 0.6):
            want = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou)
            got = rpp.batched_nms(boxes, scores, labels, iou)
            first = rpp.batched_nms(boxes, scores, labels, iou, max_keep=10)
            if n <= 1000:
                assert got.tolist() == want.tolist(), (n, trial, iou)
                assert first.tolist() == want[:10].tolist()
            else:
                assert sorted(got.tolist()) == sorted(want.tolist()) and np.array_equal(scores[got], scores[want])
                assert first.tolist() == got[:10].tolist() and np.array_equal(scores[first], scores[want[:10]])


def test_detections_equal_postprocess_detections():
    """Raw heads of random logits through the runtime's numpy decode + NMS and through the PyTorch code that
    eval_det runs: the same detections in the same order."""
    rng = np.random.default_rng(3)
    num_anchors, k, size = 600, 6, (96, 128)
    centres = rng.uniform(0, 1, (num_anchors, 2)) * (size[1], size[0])
    half = rng.uniform(4, 30, (num_anchors, 2))
    anchors = np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)
    originals = [(480, 640), (200, 150)]
    for settings in (PostprocessSettings(0.01, 0.6, 400, 100), PostprocessSettings(0.3, 0.45, 50, 10)):
        logits = (rng.normal(0, 3, (2, num_anchors, k))).astype(np.float32)
        rel = rng.normal(0, 1, (2, num_anchors, 4)).astype(np.float32)
        rel[0, :5, 2:] = 40.0  # beyond the exp clamp
        want = postprocess_detections(torch.from_numpy(logits), torch.from_numpy(rel), torch.from_numpy(anchors),
                                      BoxCoder(), size, originals, settings)
        got = rpp.detections(logits, rel, anchors, size, originals, rpp.Postprocess(**vars(settings)))
        for g, w in zip(got, want):
            assert len(w["scores"]) > 0 and g["labels"].tolist() == w["labels"].tolist()
            np.testing.assert_allclose(g["scores"], w["scores"].numpy(), rtol=0, atol=1e-6)
            np.testing.assert_allclose(g["boxes"], w["boxes"].numpy(), rtol=0, atol=1e-3)


def test_mask_upsampling_equals_interpolate():
    rng = np.random.default_rng(4)
    for (h, w), size in [((8, 8), (64, 64)), ((17, 23), (480, 640)), ((40, 30), (41, 29)), ((5, 7), (5, 7))]:
        logits = rng.normal(0, 1, (3, h, w)).astype(np.float32)
        want = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear",
                                               align_corners=False)[0].numpy()
        np.testing.assert_allclose(rpp.resize_bilinear(logits, size), want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- exported models
def _checkpoint(path: Path, task: str) -> Path:
    """A checkpoint as training writes it, with random weights that make the outputs depend on the image: a fresh
    model's do not (its zero-initialised residual BN layers leave logits that differ by ~1e-6 between two images, so
    any input would pass), so every convolution gets He-normal weights and every BN layer is the identity (logits
    ~3 apart from image to image)."""
    torch.manual_seed(0)
    name, extra = {"detection": ("ssdlite_shapes", []), "segmentation": ("deeplabv3_shapes", []),
                   "multitask": ("multitask_shapes", ["model.seg_num_classes=5"])}[task]
    cfg = load_config(name, ["data.image_size=96", "model.width_mult=0.35", "model.num_classes=5",
                             "data.num_workers=0", *extra])
    model = runtime_check.sensitive(build_from_config(cfg, pretrained=False))
    torch.save({"hyper_parameters": {"config": to_dict(cfg), **HPARAMS[task]},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


EXPORTS = {"detection": ("detection", "nms"), "detection-raw": ("detection", "raw"),
           "segmentation": ("segmentation", "nms"), "multitask": ("multitask", "nms")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per case of ``EXPORTS``: (checkpoint, the model.onnx tools/export.py wrote from it)."""
    found = {}
    for case, (task, mode) in EXPORTS.items():
        folder = tmp_path_factory.mktemp(case)
        ckpt = _checkpoint(folder / "last.ckpt", task)
        out = _tool("export").main(["--ckpt", str(ckpt), "--out", str(folder / "export"), "--check-images", "0",
                                    "--threads", "1", "--detection-output", mode])
        found[case] = (ckpt, Path(out["onnx"]))
    return found


def _equal_to_pytorch(ckpt: Path, model: Path, images: list[Path], folder: Path) -> dict[str, int]:
    """The runtime's predictions (a subprocess that cannot import torch) against the PyTorch predictor's."""
    import mnv2_vision

    reference = mnv2_vision.load(ckpt, device="cpu", threads=1).predict(images, batch_size=2)
    got = runtime_check.run_runtime(None, model, images, folder / "runtime.npz")
    assert runtime_check.compare(reference, got) == []
    return {"detections": sum(len(r.get("boxes", ())) for r in reference),
            "masks": sum("mask" in r for r in reference)}


@pytest.mark.parametrize("case", list(EXPORTS))
def test_runtime_predictions_equal_the_pytorch_predictor(case, exported, tmp_path):
    ckpt, model = exported[case]
    counts = _equal_to_pytorch(ckpt, model, _written_images(tmp_path), tmp_path)
    task = EXPORTS[case][0]
    assert (counts["detections"] > 0) == (task != "segmentation") and (counts["masks"] == 8) == (task != "detection")


@pytest.mark.parametrize("case", list(EXPORTS))
def test_runtime_predictions_equal_the_pytorch_predictor_on_real_images(case, exported, tmp_path):
    name = "coco_masks" if EXPORTS[case][0] == "segmentation" else "coco128"
    root = real_data(name, "val2017")
    images = sorted((root / "val2017").glob("*.jpg"))[:6 if EXPORTS[case][0] == "segmentation" else 12]
    counts = _equal_to_pytorch(*exported[case], images, tmp_path)
    assert counts["detections"] > 0 or counts["masks"] == len(images)


def test_mnv2_vision_load_gives_the_runtimes_results_as_tensors(exported, tmp_path):
    import mnv2_vision

    _, model = exported["multitask"]
    images = _written_images(tmp_path)[:3]
    mine = mnv2_runtime.load(model, threads=1).predict(images, batch_size=3, score_thresh=0.2, probs=True)
    theirs = mnv2_vision.load(model, device="cpu", threads=1).predict(images, score_thresh=0.2, probs=True)
    for a, b in zip(mine, theirs):
        assert isinstance(b["boxes"], torch.Tensor) and isinstance(b["mask"], torch.Tensor)
        for key in ("boxes", "scores", "labels", "mask", "probs"):
            assert np.array_equal(a[key], b[key].numpy()), key
        assert a["names"] == b["names"] and a["size"] == b["size"] and a["path"] == b["path"]
        assert a["probs"].shape == (5, *a["size"]) and np.allclose(a["probs"].sum(0), 1, atol=1e-5)


def test_the_metadata_round_trip(exported):
    """What the exporter wrote is what the runtime reads (the ONNX file read by the onnx package vs the runtime's
    ONNX Runtime session), and encode_props / decode_props are inverse."""
    for case, (_, model) in exported.items():
        meta = dict(mnv2_runtime.load(model, threads=1).metadata)
        assert meta == read_metadata(model), case
        assert decode_props(encode_props(meta).items(), "m.onnx") == meta
        assert meta["class_names"] == NAMES and meta["input_size"] == [96, 96] and meta["mean"] == list(MEAN)
    assert meta["task"] == "multitask" and meta["seg_class_names"] == NAMES
    props = encode_props({"task": "detection", "input_size": [96, 96], "postprocess": {"nms_iou": 0.5}})
    assert props == {"task": "detection", "input_size": "[96, 96]", "postprocess": json.dumps({"nms_iou": 0.5})}


# ---------------------------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_a_bad_onnx_file_is_one_line_naming_it(kind, exported, tmp_path):
    data = exported["detection"][1].read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes({"random": np.random.default_rng(0).bytes(5000), "truncated": data[:len(data) // 2],
                      "empty": b""}[kind])
    with pytest.raises(mnv2_runtime.ModelError) as e:
        mnv2_runtime.load(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f"{path} ") and "tools/export.py" in msg, msg
    with pytest.raises(CheckpointError) as e2:  # the same line through mnv2_vision
        import mnv2_vision

        mnv2_vision.load(path, device="cpu")
    assert str(e2.value) == msg


def test_files_the_runtime_cannot_read_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        mnv2_runtime.load(tmp_path / "model.onnx")
    (tmp_path / "model.pb").write_bytes(b"x")
    with pytest.raises(mnv2_runtime.ModelError, match=r"model\.pb is not a model file this runtime reads"):
        mnv2_runtime.load(tmp_path / "model.pb")
    with pytest.raises(mnv2_runtime.MissingRuntime) as e:
        require("no_such_runtime_package", tmp_path / "m.xml", "openvino", "openvino")
    assert str(e.value) == (f"running {tmp_path / 'm.xml'} needs no_such_runtime_package, which is not installed: "
                            "pip install 'mnv2_runtime[openvino]'")
    from mnv2_vision.predictor import _runtime_errors

    with pytest.raises(UserError, match=r"pip install 'mnv2_vision\[openvino\]'"):
        with _runtime_errors():
            raise e.value


def test_a_bad_image_is_named(exported, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    model = mnv2_runtime.load(exported["detection"][1], threads=1)
    with pytest.raises(ValueError, match="broken.jpg"):
        model.predict([_written_images(tmp_path)[0], bad])
    with pytest.raises(ValueError, match="score_thresh must be a number in"):
        model.predict(bad, score_thresh=2.0)


def test_the_comparison_sees_half_a_grey_level(exported, tmp_path):
    """The equality above can fail: the runtime fed a network input half a grey level off (its metadata's mean
    raised by 0.5 / 255) gives detections and masks that ``compare`` reports."""
    import mnv2_vision
    from mnv2_runtime.backends.onnx import OnnxBackend

    images = _written_images(tmp_path)[:3]
    for case in ("detection", "multitask"):
        ckpt, model = exported[case]
        backend = OnnxBackend(model, 1)
        meta = {**backend.metadata, "mean": [m + 0.5 / 255 for m in backend.metadata["mean"]]}
        shifted = mnv2_runtime.Model(backend, str(model), metadata=meta).predict(images)
        reference = mnv2_vision.load(ckpt, device="cpu", threads=1).predict(images)
        assert len(runtime_check.compare(reference, dict(enumerate(shifted)))) > 10, case
