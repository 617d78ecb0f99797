"""Shared by the Lightning modules and train tools: optimiser, per-step LR schedule, and the Trainer set-up."""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, Checkpoint, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from ..config import Config, OptimCfg, SchedCfg
from ..data.resumable import derive_seed

__all__ = ["build_optimizer", "build_scheduler", "LRSchedule", "make_trainer", "EpochLine", "FiniteLossGuard",
           "AtomicCheckpointIO", "NonFiniteLossError", "LastCheckpoint", "StepSeed", "ValidateLastEpoch"]


def build_optimizer(optim: OptimCfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD, RMSProp or AdamW; BN and bias parameters may get their own weight decay (``norm_weight_decay``)."""
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)) or name == "bias"
            (no_decay if is_norm and optim.norm_weight_decay is not None else decay).append(p)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": optim.norm_weight_decay})
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "rmsprop":
        # TF adds epsilon inside the square root, PyTorch outside: eps_torch = sqrt(eps_tf) keeps the same
        # denominator floor (torchvision's TF-style recipes make the same conversion).
        return torch.optim.RMSprop(groups, lr=optim.lr, alpha=optim.alpha, eps=math.sqrt(optim.eps),
                                   momentum=optim.momentum)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr)
    raise ValueError(f"unknown optim.name {optim.name!r}")


class LRSchedule:
    """LR multiplier per optimiser step: linear warm-up, then cosine / poly / exponential (staircase) / constant.

    A plain object (not a closure) so ``LambdaLR.state_dict`` saves it and resume restores the schedule exactly.
    """

    def __init__(self, sched: SchedCfg, base_lr: float, total_steps: int, steps_per_epoch: int) -> None:
        self.name = sched.name
        self.total = max(1, int(total_steps))
        self.per_epoch = max(1, int(steps_per_epoch))
        self.warmup = min(int(round(sched.warmup_epochs * self.per_epoch)), self.total - 1)
        self.warmup_factor = sched.warmup_factor
        self.power, self.gamma, self.decay_epochs = sched.power, sched.gamma, sched.decay_epochs
        self.min_ratio = sched.min_lr / base_lr if base_lr > 0 else 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            a = step / max(1, self.warmup)
            return self.warmup_factor * (1 - a) + a
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.name == "cosine":
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if self.name == "poly":
            return self.min_ratio + (1 - self.min_ratio) * (1 - t) ** self.power
        if self.name == "exponential":
            return self.gamma ** math.floor(step / (self.decay_epochs * self.per_epoch))
        return 1.0


def build_scheduler(sched: SchedCfg, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> dict[str, Any]:
    """A Lightning ``lr_scheduler`` dict stepped every iteration."""
    base_lr = optimizer.param_groups[0]["lr"]
    fn = LRSchedule(sched, base_lr, total_steps, steps_per_epoch)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step", "frequency": 1}


class EpochLine(Callback):
    """One line per epoch (for logs and CI, where a live progress bar floods the output)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._t0 = time.time()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._print(trainer, with_val=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % (trainer.check_val_every_n_epoch or 1) != 0 or not trainer.val_dataloaders:
            self._print(trainer, with_val=False)

    def _print(self, trainer: pl.Trainer, with_val: bool) -> None:
        """``with_val``: this epoch validated. Otherwise ``callback_metrics`` still holds the last validation's
        numbers, which would read as this epoch's, so only the training ones are printed."""
        if trainer.global_rank != 0:
            return
        m = trainer.callback_metrics
        prefixes = ("train/loss", "val/") if with_val else ("train/loss",)
        keys = [k for k in sorted(m) if k.startswith(prefixes) and "/ap_" not in k and "/iou_" not in k]
        parts = " ".join(f"{k}={float(m[k]):.4f}" for k in keys)
        dt = time.time() - getattr(self, "_t0", time.time())
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {trainer.global_step} "
              f"({dt:.0f}s) {parts}", flush=True)


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Stop on a non-finite loss *before* backward, naming the step and the images of the batch.

    The LightningModule may define ``batch_ids(batch) -> list`` (COCO image ids, VOC ids or file names).
    """

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        ids_fn = getattr(module, "batch_ids", None)
        ids = ids_fn(self._batch) if ids_fn is not None else "unknown"
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at global step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {self._batch_idx}); images in this batch: {ids}. Check these files "
            "with tools/check_data.py, lower optim.lr, or turn off mixed precision.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary name, fsync, then rename: a crash mid-save never truncates
    ``last.ckpt`` (``os.replace`` is atomic on POSIX and Windows)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` at the end of every training epoch (after its validation) and, with
    ``every_n_train_steps=N``, after every N-th optimiser step, so a killed run loses at most N steps; on a resume,
    make sure the training loaders get their saved place in the epoch back (``data/resumable.py``).

    Separate from the best-metric ``ModelCheckpoint``: with a monitor, Lightning 2.6 rewrites that callback's
    ``save_last`` file only in an epoch where the metric improved, so its ``last.ckpt`` could be epochs old.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self.last_model_path = ""
        self._last_step_saved = -1

    def _save(self, trainer: pl.Trainer) -> None:
        path = self.dirpath / "last.ckpt"
        # Through the strategy: rank 0 writes (AtomicCheckpointIO: never a truncated file), all ranks wait.
        trainer.save_checkpoint(path, weights_only=False)
        self.last_model_path, self._last_step_saved = str(path), trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Lightning 2.6 skips restoring the training loaders' state when configure_optimizers reads
        # trainer.estimated_stepping_batches (ours do): that sets the loaders up before the checkpoint is restored,
        # and the restore step, which lives in that set-up, never runs again (Lightning-AI/pytorch-lightning#20550).
        # Run it here, before the first batch is drawn; it does nothing unless resuming mid-epoch with saved states.
        trainer.fit_loop._load_combined_loader_states()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n, step = self.every_n_train_steps, trainer.global_step
        if not n or step % n or step == self._last_step_saved or trainer.sanity_checking or trainer.fast_dev_run:
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save(trainer)


class StepSeed(Callback):
    """Seed torch's global RNG before every training batch from (seed, epoch, batch index, rank).

    Dropout (DeepLab's head, the classifiers) then draws the same masks in a resumed run as in an uninterrupted
    one: the global RNG state is in no checkpoint, and every DataLoader iterator that starts draws from it.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        torch.manual_seed(derive_seed(0x7374, self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


class ValidateLastEpoch(Callback):
    """Always validate after the final epoch, whatever ``check_val_every_n_epoch`` says: otherwise a run of 7 epochs
    validated every 2 ends on weights that were never evaluated, and the best checkpoint, the reported metric and
    ``model.pt`` come from epoch 6 (seen with the shapes demo). Lightning reads ``trainer.check_val_every_n_epoch``
    afresh at every epoch end, so it is set to 1 when the last epoch starts."""

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and \
            trainer.current_epoch == trainer.max_epochs - 1
        if last and trainer.check_val_every_n_epoch not in (None, 1):
            trainer.check_val_every_n_epoch = 1


def warn_small_batch(batch_size: int, devices: Any, sync_batchnorm: bool) -> None:
    """BatchNorm statistics from a handful of images are noisy (users.md §2.2.2): say so once, up front."""
    if batch_size < 8 and not sync_batchnorm:
        warnings.warn(f"per-device batch size {batch_size} is small for BatchNorm (statistics from < 8 images are "
                      "noisy); prefer ≥ 8 per device, or trainer.sync_batchnorm=true across devices", stacklevel=2)


def make_trainer(cfg: Config, out_dir: str | Path, monitor: str, mode: str = "max", **overrides: Any) -> pl.Trainer:
    """Trainer from ``cfg.trainer``: best-``monitor`` checkpoint (``trainer.checkpoint_callback``) and ``last.ckpt``
    (every epoch, and every ``trainer.ckpt_every_n_steps`` steps) in ``out_dir/ckpt``, CSV and TensorBoard logs in
    ``out_dir``, an LR monitor, per-batch seeding (``StepSeed``), validation after the last epoch
    (``ValidateLastEpoch``), a progress bar in a terminal and one line per epoch otherwise."""
    out_dir = Path(out_dir)
    t = cfg.trainer
    short = monitor.split("/")[-1]
    best = ModelCheckpoint(dirpath=out_dir / "ckpt", monitor=monitor, mode=mode, save_last=False,
                           filename=f"best-epoch={{epoch:03d}}-{short}={{{monitor}:.4f}}",
                           auto_insert_metric_name=False)
    last = LastCheckpoint(out_dir / "ckpt", every_n_train_steps=t.ckpt_every_n_steps)
    tty = sys.stdout.isatty()
    callbacks: list[Callback] = [best, last, LearningRateMonitor(logging_interval="step"), FiniteLossGuard(),
                                 StepSeed(cfg.seed), ValidateLastEpoch()]
    if not tty:
        callbacks.append(EpochLine())
    loggers = [CSVLogger(out_dir, name="", version=""), TensorBoardLogger(out_dir, name="tb", version="")]
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(out_dir), max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        sync_batchnorm=t.sync_batchnorm, check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        deterministic=t.deterministic, callbacks=callbacks, logger=loggers, enable_progress_bar=tty,
        num_sanity_val_steps=0, enable_model_summary=tty, plugins=[AtomicCheckpointIO()],
    )
    warn_small_batch(cfg.data.batch_size, t.devices, t.sync_batchnorm)
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)
