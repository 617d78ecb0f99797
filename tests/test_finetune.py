"""Fine-tuning a trained detector / segmenter to another class count through ``pretrained=`` (issue #6 item 5)."""
from __future__ import annotations

import re

import torch

from mnv2_vision.models import build_model
from mnv2_vision.models.weights import holds_whole_model


def _trained(name: str, num_classes: int, path) -> torch.nn.Module:
    """A "trained" ``name`` (seeded weights, non-trivial BN statistics) saved to ``path`` as tools/train_*.py write
    it: the LightningModule holds the network as ``self.model``."""
    torch.manual_seed(0)
    trained = build_model(name, num_classes=num_classes, width_mult=0.35)
    for m in trained.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3}, path)
    return trained


def test_detector_checkpoint_fine_tunes_to_new_classes(tmp_path, capsys):
    path = tmp_path / "det.ckpt"
    trained = _trained("ssdlite320_mobilenet_v2", 5, path)
    assert holds_whole_model(path)

    model = build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.35, pretrained=str(path))
    report = capsys.readouterr().out
    src, own = trained.state_dict(), model.state_dict()
    reinit = {k for k in own if re.fullmatch(r"head\.cls_heads\.\d\.1\.(weight|bias)", k)}
    assert len(reinit) == 12  # 6 levels × (weight, bias) of the last class conv
    for k, v in own.items():
        if k in reinit:
            assert v.shape != src[k].shape
        else:
            assert torch.equal(v, src[k]), k  # backbone, extras, box heads, the class heads' depthwise parts
    assert f"loaded {len(own) - 12} tensors" in report and "skipped 12" in report
    # Level 0 has 3 anchors: 3·5 class outputs in the file, 3·3 in the new model.
    assert re.search(r"head\.cls_heads\.0\.1\.weight: shape \(15, (\d+), 1, 1\) in file vs \(9, \1, 1, 1\) in model",
                     report)


def test_detector_checkpoint_with_the_same_classes_loads_everything(tmp_path, capsys):
    trained = build_model("ssdlite320_mobilenet_v2", num_classes=4, width_mult=0.35)
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)  # the plain state dict train_det writes as model.pt
    model = build_model("ssdlite320_mobilenet_v2", num_classes=4, width_mult=0.35, pretrained=str(path))
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    assert "skipped" not in capsys.readouterr().out


def test_segmenter_checkpoint_fine_tunes_to_new_classes(tmp_path, capsys):
    path = tmp_path / "seg.ckpt"
    trained = _trained("deeplabv3_mobilenet_v2", 21, path)
    model = build_model("deeplabv3_mobilenet_v2", num_classes=5, width_mult=0.35, pretrained=str(path))
    src, own = trained.state_dict(), model.state_dict()
    for k, v in own.items():
        if k.startswith("classifier."):
            assert v.shape[0] == 5 and src[k].shape[0] == 21
        else:
            assert torch.equal(v, src[k]), k
    out = capsys.readouterr().out
    assert "skipped 2" in out and "classifier.weight" in out


def test_a_classifier_file_still_fills_only_the_backbone(tmp_path):
    cls = build_model("mobilenet_v2", num_classes=4, width_mult=0.35)
    path = tmp_path / "cls.pt"
    torch.save(cls.state_dict(), path)
    assert not holds_whole_model(path) and not holds_whole_model("imagenet")
    det = build_model("ssdlite320_mobilenet_v2", num_classes=3, width_mult=0.35, pretrained=str(path))
    assert torch.equal(det.backbone.features[3].conv[0][0].weight, cls.features[3].conv[0][0].weight)
