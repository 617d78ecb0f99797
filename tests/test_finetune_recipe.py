"""Few-image fine-tuning (issue #26 item 3): the start reported key by key, class rows kept by name, freezing."""
from __future__ import annotations

import json
import re

import pytest
import torch

from mnv2_vision.config import ConfigError, OptimCfg, load_config
from mnv2_vision.lit.common import build_optimizer
from mnv2_vision.lit.finetune import backbone_stages, freeze_backbone, start_report
from mnv2_vision.models import build_model
from mnv2_vision.models.weights import WeightsMismatchError, collect_reports

from helpers import fails, sets, tool

DET = "ssdlite320_mobilenet_v2"


def _trained_ckpt(path, names, width=0.35, name=DET):
    """A "trained" detector on ``names`` saved as tools/train_det.py writes it: seeded weights, non-trivial BN
    statistics and biases, the network under ``model.``, the class names in the hyperparameters."""
    torch.manual_seed(0)
    trained = build_model(name, num_classes=len(names) + 1, width_mult=width)
    for m in trained.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
        elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            torch.nn.init.uniform_(m.bias, -1, 1)  # a trained bias, unlike init_conv's zeros
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
                "hyper_parameters": {"category_ids": list(range(1, len(names) + 1)), "category_names": list(names),
                                     "config": {}}}, path)
    return trained.state_dict()


def _start(path, new_names, freeze="none", keep=True):
    torch.manual_seed(1)
    with collect_reports() as loads:
        model = build_model(DET, num_classes=len(new_names) + 1, width_mult=0.35, pretrained=str(path))
    return model, start_report(model, loads, source=str(path), freeze=freeze, keep_rows=keep, new_names=new_names)


CLS_KEY = re.compile(r"head\.cls_heads\.\d\.1\.(weight|bias)")


def test_other_class_count_keeps_background_and_shared_rows(tmp_path):
    path = tmp_path / "old.ckpt"
    old = _trained_ckpt(path, ["circle", "square", "star"])  # K = 4 labels per anchor in the file
    model, report = _start(path, ["star", "triangle"])  # K = 3 in the model
    own = model.state_dict()
    reinit = sorted(k for k in own if CLS_KEY.fullmatch(k))
    assert len(reinit) == 12 and sorted(r.split(":")[0] for r in report.reinitialised) == reinit
    assert sorted(report.loaded) == sorted(k for k in own if k not in reinit)
    assert report.missing == [] and report.unexpected == []
    assert report.class_rows_kept == {k: ["background", "star"] for k in reinit}
    for k in reinit:
        src, dst = old[k], own[k]
        for a in range(dst.shape[0] // 3):
            assert torch.equal(dst[3 * a], src[4 * a])  # background: label 0 in both
            assert torch.equal(dst[3 * a + 1], src[4 * a + 3])  # star: label 3 in the file, 1 in the model
            # triangle is new: its row keeps the initialisation (zero bias, σ 0.03 weights), no row of the file
            assert not any(torch.equal(dst[3 * a + 2], src[4 * a + i]) for i in range(4))
    for k in report.loaded:
        assert torch.equal(own[k], old[k]), k


def test_same_class_count_other_names_reinitialises_the_class_layers(tmp_path):
    """circle/square → star/triangle: the shapes fit, but the rows mean other classes; only the background's stay."""
    path = tmp_path / "old.ckpt"
    old = _trained_ckpt(path, ["circle", "square"])
    model, report = _start(path, ["star", "triangle"])
    own = model.state_dict()
    reinit = sorted(k for k in own if CLS_KEY.fullmatch(k))
    assert sorted(r.split(":")[0] for r in report.reinitialised) == reinit
    assert all("classes ['circle', 'square'] in file vs ['star', 'triangle'] in model" in r
               for r in report.reinitialised)
    assert len(report.loaded) == len(own) - 12
    k = "head.cls_heads.0.1.bias"
    a = own[k].shape[0] // 3
    assert torch.equal(own[k].view(a, 3)[:, 0], old[k].view(a, 3)[:, 0])
    assert torch.equal(own[k].view(a, 3)[:, 1:], torch.zeros(a, 2))  # init_conv: zero bias
    # Without keep_class_rows the background is re-initialised too.
    model, report = _start(path, ["star", "triangle"], keep=False)
    assert report.class_rows_kept == {} and torch.equal(model.state_dict()[k], torch.zeros_like(old[k]))
    # The same names in the same order: everything is loaded as it is.
    model, report = _start(path, ["circle", "square"])
    assert report.reinitialised == [] and all(torch.equal(v, old[n]) for n, v in model.state_dict().items())


def test_wrong_width_or_architecture_names_the_file_and_the_first_key(tmp_path):
    path = tmp_path / "wide.ckpt"
    _trained_ckpt(path, ["a", "b"], width=0.5)
    with pytest.raises(WeightsMismatchError) as e:
        build_model(DET, num_classes=3, width_mult=0.35, pretrained=str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    # The stems agree (32·α rounds to 16 channels for both); the first c = 24 block differs: 16 vs 8 channels.
    assert ("first mismatching key backbone.features.2.conv.2.weight: shape (16, 48, 1, 1) in file vs (8, 48, 1, 1)"
            in msg)
    seg = tmp_path / "seg.ckpt"
    _trained_ckpt(seg, ["a", "b"], name="deeplabv3_mobilenet_v2")
    with pytest.raises(WeightsMismatchError, match=r"first mismatching key \S+: missing from file") as e:
        build_model(DET, num_classes=3, width_mult=0.35, pretrained=str(seg))
    assert str(seg) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"pretrained weights file not found: .*typo\.ckpt"):
        build_model(DET, num_classes=3, width_mult=0.35, pretrained=str(tmp_path / "typo.ckpt"))


@pytest.mark.parametrize("what", ["width", "typo", "stages"])
def test_train_det_stops_in_one_line_on_a_start_that_does_not_fit(tmp_path, capsys, shapes_root, what):
    path = tmp_path / "wide.ckpt"
    if what == "width":
        _trained_ckpt(path, ["circle", "square"], width=0.5)
    out = tmp_path / "run"
    start = ["finetune.freeze=stages:10"] if what == "stages" else [f"model.pretrained={path}",
                                                                    "finetune.freeze=stages:4"]
    line = fails(capsys, "train_det", ["--cfg", "ssdlite_shapes", "--out", str(out),
                                       *sets("data.subset=4", "model.width_mult=0.35", *start)])
    expected = {"width": f"cannot load {path} into SSDLite: first mismatching key backbone.features.2.conv.2.weight",
                "typo": f"pretrained weights file not found: {path}",
                "stages": "finetune.freeze=stages:10: this backbone has 9 stages (0-8)"}[what]
    assert expected in line, line
    assert not (out / "finetune_report.json").exists()


def test_stages_follow_the_table_and_bad_settings_are_named():
    model = build_model(DET, num_classes=3, width_mult=0.35)
    # stem, the 7 rows of t, c, n, s (n = 1, 2, 3, 4, 3, 3, 1), the last 1×1 conv
    assert [len(s) for s in backbone_stages(model)] == [1, 1, 2, 3, 4, 3, 3, 1, 1]
    with pytest.raises(ValueError, match=r"finetune.freeze=stages:10: this backbone has 9 stages"):
        freeze_backbone(model, "stages:10")
    for bad in ("stages:0", "stage:3", "head", "stages:x"):
        with pytest.raises(ConfigError, match=rf"finetune.freeze='{bad}' is not one of none, backbone, stages:N"):
            load_config("ssdlite_shapes", [f"finetune.freeze={bad}"])


def test_frozen_stages_do_not_move_and_their_bn_statistics_stay(tmp_path):
    torch.manual_seed(0)
    model = build_model(DET, num_classes=3, width_mult=0.35)
    stages, frozen, trainable, norms = freeze_backbone(model, "stages:3")  # stem, row 1, row 2: features 0-3
    assert stages == [0, 1, 2] and norms == 1 + 2 + 2 * 3  # BNs: stem 1, row 1 (t = 1) 2, row 2: 2 blocks of 3
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_names == {n for n, _ in model.named_parameters() if re.match(r"backbone\.features\.[0-3]\.", n)}
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if n in frozen_names)
    assert trainable == sum(p.numel() for p in model.parameters()) - frozen
    opt = build_optimizer(OptimCfg(name="sgd", lr=0.1), model)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        model.train()  # as Lightning does every epoch: the frozen BatchNorms stay in eval mode
        out = model(torch.rand(2, 3, 96, 96))
        (out["cls_logits"].square().mean() + out["bbox_regression"].square().mean()).backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in before.items():
        is_frozen = re.match(r"backbone\.features\.[0-3]\.", k) is not None
        if k.endswith("num_batches_tracked"):
            assert int(after[k] - v) == (0 if is_frozen else 2), k
        elif is_frozen:
            assert torch.equal(after[k], v), k  # weights and running statistics
        elif k.endswith(("weight", "running_mean", "running_var")) and "cls_heads" not in k:
            assert not torch.equal(after[k], v), k


def test_train_writes_the_report_and_keeps_the_frozen_backbone(tmp_path, shapes_root):
    """Through tools/train_det.py: the report in the run folder, the frozen backbone unchanged in last.ckpt."""
    path = tmp_path / "old.ckpt"
    old = _trained_ckpt(path, ["circle", "square"])
    out = tmp_path / "run"
    sets = ["data.synthetic=true", "data.subset=8", "data.image_size=96", "model.width_mult=0.35",
            "data.batch_size=4", "data.val_batch_size=8", "data.num_workers=0", "trainer.max_epochs=1",
            f"model.pretrained={path}", "finetune.freeze=backbone", "trainer.num_threads=1"]
    tool("train_det").main(["--cfg", "ssdlite_shapes", "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["freeze"] == "backbone" and report["frozen_stages"] == list(range(9))
    assert str(path) in report["source"] and len(report["reinitialised"]) == 12  # 2 → 4 classes
    assert report["class_rows_kept"]["head.cls_heads.0.1.weight"] == ["background", "circle", "square"]
    trained = torch.load(out / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert trained["model.head.cls_heads.0.1.weight"].shape[0] == 3 * 5
    for k, v in old.items():
        if k.startswith("backbone."):
            assert torch.equal(trained[f"model.{k}"], v), k
    assert not torch.equal(trained["model.extras.0.0.0.weight"], old["extras.0.0.0.weight"])


@pytest.mark.slow
def test_a_frozen_fine_tuning_run_killed_mid_epoch_resumes_exactly(tmp_path, shapes_root):
    """The project's exact-resume guarantee with a frozen backbone: the optimiser holds the trainable parameters
    only, and after the restart the frozen BatchNorms are held in eval mode again (tests/test_resume.py's harness)."""
    from test_resume import DET_ARGS, _assert_same_final_state, _killed_and_uninterrupted, _load

    path = tmp_path / "old.ckpt"
    old = _trained_ckpt(path, ["circle", "square"])
    args = [*DET_ARGS, "--set", f"model.pretrained={path}", "--set", "finetune.freeze=stages:4"]
    ref, run, at_kill = _killed_and_uninterrupted("train_det", tmp_path, args, kill_at="9")
    assert at_kill["global_step"] == 9
    _assert_same_final_state(ref, run)
    final = _load(run)["state_dict"]
    for k, v in old.items():
        if re.match(r"backbone\.features\.[0-6]\.", k):  # stages 0-3: features 0-6
            assert torch.equal(final[f"model.{k}"], v), k
    n_trainable = sum(1 for k in final if not re.match(r"model\.backbone\.features\.[0-6]\.", k)
                      and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert len(_load(run)["optimizer_states"][0]["state"]) == n_trainable
