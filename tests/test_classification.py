"""Classification: the CIFAR-10 / Flowers102 / ImageFolder readers on files written here in the exact formats, the
transforms, hand-computed validation metrics, train → eval tools, and classifier → detector/segmenter transfer."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader, TensorDataset

from mnv2_vision.config import load_config
from mnv2_vision.data.classification.datamodule import ClassificationDataModule
from mnv2_vision.data.classification.datasets import Cifar10, Flowers102, ImageFolderClassification
from mnv2_vision.data.classification.transforms import classification_transform
from mnv2_vision.lit.classification import ClassificationModule, accuracy_from_confusion
from mnv2_vision.models import build_model

from helpers import tool as _tool


train_cls, eval_cls = _tool("train_cls"), _tool("eval_cls")


# ---------------------------------------------------------------------------------------------- CIFAR-10
def _cifar_image(i: int) -> np.ndarray:
    """A 32×32×3 uint8 image whose every pixel encodes (index, row, column, channel)."""
    y, x, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((i * 7 + y * 3 + x * 5 + c * 50) % 256).astype(np.uint8)


def _write_cifar(root: Path, per_batch: int = 2) -> dict[str, list[int]]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels: dict[str, list[int]] = {}
    i = 0
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        imgs = [_cifar_image(i + j) for j in range(per_batch)]
        labs = [(i + j) % 10 for j in range(per_batch)]
        i += per_batch
        # the python version's layout: each row = 1024 red, 1024 green, 1024 blue values, row-major 32×32
        data = np.stack([im.transpose(2, 0, 1).reshape(-1) for im in imgs])
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": f"{name} of 6", "labels": labs, "data": data,
                         "filenames": [f"img_{k}.png" for k in range(per_batch)]}, f, protocol=2)
        labels[name] = labs
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return labels


def test_cifar10_reader_exact_pixels_and_labels(tmp_path):
    labels = _write_cifar(tmp_path)
    train, test = Cifar10(tmp_path, "train"), Cifar10(tmp_path, "test")
    assert len(train) == 10 and len(test) == 2 and train.classes[0] == "airplane" and len(train.classes) == 10
    assert train.targets == sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    for i in (0, 7):
        image, label = train[i]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert np.array_equal(image, _cifar_image(i)) and label == i % 10
    assert np.array_equal(test[1][0], _cifar_image(11))
    with pytest.raises(ValueError, match="splits"):
        Cifar10(tmp_path, "valid")


def test_cifar10_refuses_code_and_names_missing_files(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        Cifar10(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        Cifar10(tmp_path, "train")


# ---------------------------------------------------------------------------------------------- Flowers102
def test_flowers102_reader(tmp_path):
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    colours = {}
    for i in range(1, 7):
        colours[i] = (40 * i, 255 - 40 * i, 100)
        Image.new("RGB", (48, 40), colours[i]).save(base / "jpg" / f"image_{i:05d}.jpg", quality=95)
    # as in the real files: 1-based labels in a 1×N array, 1-based image ids per split
    savemat(base / "imagelabels.mat", {"labels": np.array([[3, 1, 102, 3, 2, 1]], dtype=np.uint8)})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 5]]), "valid": np.array([[3, 6]]),
                                 "tstid": np.array([[4]])})
    train, val, test = (Flowers102(tmp_path, s) for s in ("train", "val", "test"))
    assert train.targets == [2, 0, 1] and val.targets == [101, 0] and test.targets == [2]
    assert len(train.classes) == 102 and train.classes[101] == "102"
    image, label = val[0]
    assert image.shape == (40, 48, 3) and label == 101
    assert np.abs(image.reshape(-1, 3).mean(0) - colours[3]).max() < 3  # image_00003.jpg, up to JPEG error
    with pytest.raises(FileNotFoundError, match="setid.mat"):
        Flowers102(tmp_path / "nowhere", "train")


# ---------------------------------------------------------------------------------------------- ImageFolder, transforms
def _write_folder(root: Path, classes=("cat", "dog"), per_class: int = 4, size: int = 40) -> None:
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                arr = np.full((size, size + 8, 3), 60 + 120 * k, np.uint8)
                arr[:, : (i + 1) * 4] = 255 - 60 * k
                Image.fromarray(arr).save(root / split / name / f"{i}.jpg")


def test_imagefolder_datamodule_subset_and_errors(tmp_path):
    _write_folder(tmp_path, classes=("b_dog", "a_cat"), per_class=5)
    ds = ImageFolderClassification(tmp_path, "train")
    assert ds.classes == ["a_cat", "b_dog"] and ds.targets == [0] * 5 + [1] * 5  # torchvision's sorted order
    dm = ClassificationDataModule(tmp_path, "imagefolder", image_size=32, augment="cls", batch_size=4, subset=4,
                                  num_workers=0)
    assert dm.num_classes == 2 and len(dm.train_dataset) == 4
    assert sorted(ds.targets[i] for i in dm.train_dataset.indices) == [0, 0, 1, 1]  # spread over both classes
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="ImageFolder layout"):
        ImageFolderClassification(tmp_path, "test")


def test_transforms():
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = 255
    ev = classification_transform("cls", False, 32, mean=(0, 0, 0), std=(1, 1, 1))(image=image)["image"]
    # shorter side 60 → round(32 / 0.875) = 37, width 80 → 49; centre crop 32 keeps the white | black edge centred
    assert ev.shape == (3, 32, 32) and ev[:, :, 15].min() > 0.9 and ev[:, :, 17].max() < 0.1
    tr = classification_transform("cifar", True, 32)(image=np.zeros((32, 32, 3), np.uint8))["image"]
    assert tr.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="preset"):
        classification_transform("autoaugment", True, 32)


# ---------------------------------------------------------------------------------------------- metrics
def test_accuracy_from_confusion_hand_computed():
    m = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    top1, per_class = accuracy_from_confusion(m)
    assert top1 == pytest.approx(5 / 8)
    assert per_class[:2].tolist() == pytest.approx([0.75, 0.5]) and torch.isnan(per_class[2])


class _Lookup(torch.nn.Module):
    """Logits read from the input: each image carries its logit vector in its first row of pixels."""

    num_classes = 6

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :6] + 0 * self.dummy


def test_validation_metrics_over_whole_split():
    labels = [0, 1, 1, 2, 1, 2, 0]
    ranks = [0, 0, 1, 5, 2, 5, 0]  # where the true class sits in each image's ranking
    logits = torch.zeros(7, 6)
    for i, (y, r) in enumerate(zip(labels, ranks)):
        others = [c for c in range(6) if c != y]
        for j, c in enumerate(others[:r] + [y] + others[r:]):
            logits[i, c] = 6.0 - j
    images = torch.zeros(7, 3, 6, 6)
    images[:, 0, 0, :] = logits
    module = ClassificationModule(_Lookup(), num_classes=6, optim=load_config(None).optim,
                                  sched=load_config(None).sched)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    # batches of 3 / 3 / 1: dataset-level accuracy must not be a mean of per-batch accuracies
    out = trainer.validate(module, DataLoader(TensorDataset(images, torch.tensor(labels)), batch_size=3),
                           verbose=False)[0]
    # predictions by hand: the true class when ranked first, else class 0 (or 1 for label 0)
    expected = torch.zeros(6, 6, dtype=torch.int64)
    expected[0, 0], expected[1, 1], expected[1, 0], expected[2, 0] = 2, 1, 2, 2
    assert torch.equal(module.confusion, expected)
    assert out["val/top1"] == pytest.approx(3 / 7) and out["val/top5"] == pytest.approx(5 / 7)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert out["val/loss"] == pytest.approx(loss, rel=1e-5)


# ---------------------------------------------------------------------------------------------- tools end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One short training run of a tiny classifier (α = 0.35, 32 px): its folder and result."""
    root = tmp_path_factory.mktemp("folder")
    _write_folder(root, per_class=6, size=32)
    out = tmp_path_factory.mktemp("run")
    argv = ["--cfg", "mobilenet_v2_shapes", "--out", str(out), "--set", "data.synthetic=false",
            "--set", f"data.root={root}", "--set", "data.image_size=32", "--set", "model.width_mult=0.35",
            "--set", "trainer.max_epochs=2", "--set", "trainer.check_val_every_n_epoch=1", "--set", "data.batch_size=6",
            "--set", "data.val_batch_size=5"]
    return out, train_cls.main(argv)


def test_train_cls_writes_checkpoints_and_result(tiny_run):
    out, result = tiny_run
    assert Path(result["checkpoint"]).is_file() and (out / "ckpt" / "last.ckpt").is_file()
    assert result["epochs"] == 2 and len(result["history"]) == 2 and result["classes"] == ["cat", "dog"]
    assert result["best_top1"] == max(h["top1"] for h in result["history"])
    assert json.loads((out / "result.json").read_text())["final_top1"] == result["final_top1"]
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["model"]["num_classes"] == 2
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    sd = torch.load(out / "model.pt", weights_only=True)
    assert torch.equal(sd["classifier.1.weight"], ckpt["state_dict"]["model.classifier.1.weight"])


def test_eval_cls_agrees_with_training_validation(tiny_run, tmp_path):
    out, result = tiny_run
    best_epoch = max(result["history"], key=lambda h: h["top1"])
    res = eval_cls.main(["--ckpt", result["checkpoint"], "--out", str(tmp_path)])
    assert res["top1"] == pytest.approx(best_epoch["top1"])  # same split, same transform, same weights
    m = np.array(res["confusion"])
    assert m.sum() == res["images"] == 12
    assert [res["per_class"][c] for c in ("cat", "dog")] == pytest.approx(list(np.diag(m) / m.sum(1)))
    png = Image.open(tmp_path / "confusion.png")
    assert png.size[0] > 100 and json.loads((tmp_path / "metrics.json").read_text())["top1"] == res["top1"]


def _assert_backbone_loaded(backbone: torch.nn.Module, ckpt_path: str, report_out: str) -> None:
    sd = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    own = backbone.state_dict()
    assert own, "empty backbone"
    for k, v in own.items():
        assert torch.equal(v, sd[f"model.{k}"]), k
    assert f"loaded {len(own)} tensors" in report_out
    assert "classifier.1.weight: not in model" in report_out and "classifier.1.bias: not in model" in report_out


def test_classifier_checkpoint_into_detector_and_segmenter(tiny_run, capsys):
    _, result = tiny_run
    ckpt = result["checkpoint"]
    det = build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.35, pretrained=ckpt)
    _assert_backbone_loaded(det.backbone, ckpt, capsys.readouterr().out)
    seg = build_model("deeplabv3_mobilenet_v2", num_classes=3, width_mult=0.35, pretrained=ckpt)
    # DeepLab drops the 1280 conv after loading; every kept tensor must still be the checkpoint's
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    out = capsys.readouterr().out
    assert all(torch.equal(v, sd[f"model.{k}"]) for k, v in seg.backbone.state_dict().items())
    assert "loaded" in out and "classifier.1.weight: not in model" in out
    with pytest.raises(RuntimeError, match="shape"):  # a different α is an error, never a silent partial load
        build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.5, pretrained=ckpt)
