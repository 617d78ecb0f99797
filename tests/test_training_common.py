"""Shared training machinery: LR schedules (hand-computed), atomic checkpoints, the non-finite-loss guard."""
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mnv2_vision.config import SchedCfg, load_config
from mnv2_vision.lit.common import (AtomicCheckpointIO, LRSchedule, NonFiniteLossError, build_optimizer,
                                    build_scheduler, make_trainer)


def test_cosine_with_warmup_hand_computed():
    s = LRSchedule(SchedCfg(name="cosine", warmup_epochs=1, warmup_factor=0.1), base_lr=1.0, total_steps=110,
                   steps_per_epoch=10)
    assert s(0) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.1 * 0.5 + 0.5)  # halfway through the linear warm-up
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)  # half of the cosine
    assert s(110) == pytest.approx(0.0, abs=1e-12)


def test_poly_and_exponential_hand_computed():
    poly = LRSchedule(SchedCfg(name="poly", power=0.9), base_lr=0.01, total_steps=100, steps_per_epoch=10)
    assert poly(50) == pytest.approx(0.5 ** 0.9)
    exp = LRSchedule(SchedCfg(name="exponential", gamma=0.98, decay_epochs=1.0), 0.045, 1000, 100)
    assert exp(99) == 1.0 and exp(100) == pytest.approx(0.98) and exp(250) == pytest.approx(0.98 ** 2)


def test_rmsprop_matches_tf_recipe_settings():
    cfg = load_config(None, ["optim.name=rmsprop", "optim.lr=0.045", "optim.eps=1.0", "optim.alpha=0.9"])
    opt = build_optimizer(cfg.optim, torch.nn.Linear(2, 2))
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.RMSprop) and g["alpha"] == 0.9 and g["momentum"] == 0.9 and g["eps"] == 1.0


def test_norm_weight_decay_splits_groups():
    cfg = load_config(None, ["optim.norm_weight_decay=0.0", "optim.weight_decay=0.1"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(cfg.optim, model)
    wd = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert wd == {0.1: 3 * 4 * 9 + 8, 0.0: 8 + 2}


def test_scheduler_state_round_trips():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(SchedCfg(name="cosine"), opt, 100, 10)["scheduler"]
    for _ in range(37):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1)
    sched2 = build_scheduler(SchedCfg(name="poly"), opt2, 5, 1)["scheduler"]
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    sched.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 38 / 100)))


def test_atomic_checkpoint_survives_a_crash_during_save(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


class _Ids(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((2,), float(i)), f"img_{i:03d}"


class _NaNAtStep2(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        x, _ids = batch
        loss = self.lin(x).pow(2).mean()
        return loss * float("nan") if self.global_step == 2 else loss

    def batch_ids(self, batch):
        return list(batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_nan_loss_stops_with_step_and_image_ids(tmp_path):
    cfg = load_config(None, ["trainer.max_epochs=1", "data.batch_size=8", "trainer.accelerator=cpu",
                             "trainer.devices=1"])
    trainer = make_trainer(cfg, tmp_path, monitor="train/loss", mode="min")
    module = _NaNAtStep2()
    with pytest.raises(NonFiniteLossError, match=r"global step 2 .*img_004', 'img_005'"):
        loader = DataLoader(_Ids(), batch_size=2)
        trainer.fit(module, loader)
    assert torch.isfinite(module.lin.weight).all()  # stopped before the update


class _Counting(pl.LightningModule):
    """Records the epochs at which validation ran."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.validated: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.lin(torch.ones(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(self.current_epoch))

    def on_validation_epoch_end(self):
        self.validated.append(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_last_epoch_is_always_validated(tmp_path, capsys):
    # 7 epochs, validation every 2: without ValidateLastEpoch the final weights (epoch index 6) are never evaluated.
    cfg = load_config(None, ["trainer.max_epochs=7", "trainer.check_val_every_n_epoch=2", "data.batch_size=8",
                             "trainer.accelerator=cpu", "trainer.devices=1"])
    trainer = make_trainer(cfg, tmp_path, monitor="val/score", mode="max")
    module = _Counting()
    loader = DataLoader(_Ids(), batch_size=2)
    trainer.fit(module, loader, loader)
    assert module.validated == [1, 3, 5, 6]
    assert "epoch=006" in trainer.checkpoint_callback.best_model_path  # the final weights were scored and kept
    # One line per epoch (stdout is not a TTY here); validation numbers only on the epochs that validated, never the
    # previous validation's numbers repeated as if they were this epoch's.
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == [f"{e}/7" for e in range(1, 8)]
    assert [("val/score=" in ln) for ln in lines] == [False, True, False, True, False, True, True]
