"""Shared by the Lightning modules and train tools: optimiser, per-step LR schedule, the Trainer set-up and the
progress lines. Checkpoint writing lives in ``lit/checkpointing.py``, the safety stops in ``lit/guards.py``."""
from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from ..config import Config, OptimCfg, SchedCfg
from .threads import choose_num_threads
from ..data.resumable import derive_seed
from .checkpointing import AtomicCheckpointIO, LastCheckpoint, NonFiniteWeightsError, RunCSVLogger
from .guards import FiniteLossGuard, NonFiniteLossError, StopOnSignal

__all__ = ["build_optimizer", "build_scheduler", "LRSchedule", "make_trainer", "EpochLine", "FiniteLossGuard",
           "AtomicCheckpointIO", "NonFiniteLossError", "NonFiniteWeightsError", "LastCheckpoint", "StepSeed",
           "ValidateLastEpoch", "LogWithinRun", "StopOnSignal", "set_num_threads", "gather_lists", "skipped_note",
           "quiet_lightning", "batch_limits", "evaluation_trainer"]


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
    """Without a terminal (logs, CI, nohup): one line per epoch and a progress line at least every ``interval_s``
    seconds (and after the first step), so a long epoch never looks hung. Only while fitting: the final evaluation
    (``trainer.validate``) prints nothing here, so no "epoch 16/15" line."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last_line = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._run_t0 = time.time()
        self._run_step0 = trainer.global_step
        self._last_line = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._t0 = time.time()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.time()
        first = trainer.global_step == self._run_step0 + 1
        if trainer.global_rank != 0 or not (first or now - self._last_line >= self.interval_s):
            return
        self._last_line = now
        done = trainer.global_step - self._run_step0
        rate = done / max(now - self._run_t0, 1e-9)
        total = trainer.estimated_stepping_batches
        eta = f", ETA {_duration((total - trainer.global_step) / rate)}" if math.isfinite(total) and rate > 0 else ""
        loss = trainer.callback_metrics.get("train/loss")
        loss_s = f" train/loss={float(loss):.4f}" if loss is not None else ""
        print(f"  step {trainer.global_step}/{int(total) if math.isfinite(total) else '?'} (epoch "
              f"{trainer.current_epoch + 1}, batch {batch_idx + 1}/{trainer.num_training_batches}) "
              f"{rate:.2f} steps/s{eta}{loss_s}", flush=True)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
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
        keys = [k for k in sorted(m) if k.startswith(prefixes) and "/ap_" not in k and "/iou_" not in k
                and k != "val/num_images"]
        parts = " ".join(f"{k}={float(m[k]):.4f}" for k in keys)
        if with_val and "val/num_images" in m:
            parts += f" ({int(m['val/num_images'])} val images)"
        dt = time.time() - getattr(self, "_t0", time.time())
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {trainer.current_epoch + 1}{epochs} step {trainer.global_step} ({dt:.0f}s) {parts}", flush=True)
        self._last_line = time.time()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


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


class LogWithinRun(Callback):
    """Lower ``log_every_n_steps`` to the run's length when the run is shorter: Lightning logs the training metrics
    every N steps counted over the whole run, so a run of fewer steps (a smoke test, a 1-epoch check) would leave
    ``metrics.csv`` and TensorBoard without a single training row. Longer runs keep their interval."""

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if math.isfinite(total) and 0 < total < trainer.log_every_n_steps:
            trainer.log_every_n_steps = int(total)


def warn_small_batch(batch_size: int, devices: Any, sync_batchnorm: bool) -> None:
    """BatchNorm statistics from a handful of images are noisy (users.md §2.2.2): say so once, up front."""
    if batch_size < 8 and not sync_batchnorm:
        logging.getLogger("mnv2_vision").warning(
            "warning: per-device batch size %d is small for BatchNorm (statistics from < 8 images are noisy); "
            "prefer ≥ 8 per device, or trainer.sync_batchnorm=true across devices", batch_size)


def gather_lists(items: list[Any]) -> list[Any]:
    """The concatenation of ``items`` over all ranks (``items`` itself when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]
    return list(items)


def skipped_note(skipped: list[Any], shown: int = 5) -> str:
    """", 2 unusable file(s) skipped: a.jpg (reason), ..."" for a report line; empty when nothing was skipped."""
    if not skipped:
        return ""
    names = ", ".join(str(s) for s in skipped[:shown]) + (", ..." if len(skipped) > shown else "")
    return f"; {len(skipped)} unusable file(s) skipped: {names}"


def set_num_threads(cfg: Config) -> int:
    """Set torch's intra-op threads from ``trainer.num_threads`` (or the available cores, ``threads.py``); one line says
    how many and why."""
    threads, why = choose_num_threads(cfg.trainer.num_threads, cfg.data.num_workers)
    torch.set_num_threads(threads)
    print(f"threads: {threads} ({why})", flush=True)
    return threads


class _NoAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines (adverts, not information) and
    its note that it reads the training loader to count the steps (our schedules always do)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip", "Loading `train_dataloader` to estimate"))


def quiet_lightning() -> None:
    """Keep Lightning's console output to what a user acts on: no adverts, and no deprecation warning that
    Lightning's own code triggers on every run (``_pytree``'s ``LeafSpec`` check, which users cannot fix)."""
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in log.filters):
        log.addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Lightning compares ONE epoch's batches with log_every_n_steps, but counts the interval over the whole run: a run
    # of many short epochs (ssdlite_coco128: 2 batches, an interval of 10, 150 epochs) logs every 10 steps all the
    # same. A run too short to log at all gets its interval lowered instead (LogWithinRun).
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                                              r"interval")
    # A resumed run continues in its own folder: that its checkpoint folder is not empty is the point, not news.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # finetune.freeze keeps the frozen BatchNorms in eval mode on purpose (the run's finetune report says so); nothing
    # else here starts training with modules in eval mode.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def batch_limits(**limits: int | float) -> dict[str, int | float]:
    """The ``limit_*_batches`` Trainer arguments worth passing: an int is a number of batches (1: one batch), a
    float a fraction of them, as Lightning reads them. The whole set (the float 1.0) is left out: Lightning announces
    an explicit 1.0 ("`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used") as news."""
    return {name: value for name, value in limits.items() if not (isinstance(value, float) and value == 1.0)}


def evaluation_trainer(cfg: Config) -> pl.Trainer:
    """A Trainer that only evaluates (``trainer.validate``) on one device of ``trainer.accelerator``, at
    ``trainer.precision`` and over ``trainer.limit_val_batches``: no logger, checkpoints, progress bar or summary,
    and no Lightning noise (``quiet_lightning``)."""
    quiet_lightning()
    t = cfg.trainer
    return pl.Trainer(accelerator=t.accelerator, devices=1, precision=t.precision, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      **batch_limits(limit_val_batches=t.limit_val_batches))


def make_trainer(cfg: Config, out_dir: str | Path, monitor: str, mode: str = "max",
                 resume_from: int | None = None) -> pl.Trainer:
    """Trainer from ``cfg.trainer``: best-``monitor`` checkpoint (``trainer.checkpoint_callback``) and ``last.ckpt``
    (every epoch, and every ``trainer.ckpt_every_n_steps`` steps) in ``out_dir/ckpt``, ``metrics.csv`` and TensorBoard
    logs in ``out_dir``, an LR monitor, per-batch seeding (``StepSeed``), validation after the last epoch
    (``ValidateLastEpoch``), training logs even in a run shorter than ``log_every_n_steps`` (``LogWithinRun``), a
    clean stop on SIGTERM / Ctrl-C (``StopOnSignal``), a progress bar in a terminal and
    progress lines otherwise. ``resume_from``: the logging step a resumed run continues at
    (``checkpointing.resume_step``): the logs drop what was written after it."""
    out_dir = Path(out_dir)
    t = cfg.trainer
    short = monitor.split("/")[-1]
    # No version counter: a resumed run that redoes an epoch's validation writes the same best file again rather than
    # a "-v1" copy next to the one the killed run wrote.
    best = ModelCheckpoint(dirpath=out_dir / "ckpt", monitor=monitor, mode=mode, save_last=False,
                           filename=f"best-epoch={{epoch:03d}}-{short}={{{monitor}:.4f}}",
                           auto_insert_metric_name=False, enable_version_counter=False)
    last = LastCheckpoint(out_dir / "ckpt", every_n_train_steps=t.ckpt_every_n_steps)
    tty = sys.stdout.isatty()
    callbacks: list[Callback] = [best, last, LearningRateMonitor(logging_interval="step"), FiniteLossGuard(),
                                 StepSeed(cfg.seed), ValidateLastEpoch(), LogWithinRun(), StopOnSignal(last)]
    if not tty:
        callbacks.append(EpochLine(t.progress_interval_s))
    tb_kwargs = {"purge_step": resume_from} if resume_from else {}  # TensorBoard drops the replayed steps too
    loggers = [RunCSVLogger(out_dir, resume_from=resume_from),
               TensorBoardLogger(out_dir, name="tb", version="", default_hp_metric=False, **tb_kwargs)]
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(out_dir), max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        sync_batchnorm=t.sync_batchnorm, check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic, callbacks=callbacks, logger=loggers, enable_progress_bar=tty,
        num_sanity_val_steps=0, enable_model_summary=tty, plugins=[AtomicCheckpointIO()],
    )
    kwargs.update(batch_limits(limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches))
    warn_small_batch(cfg.data.batch_size, t.devices, t.sync_batchnorm)
    quiet_lightning()
    return pl.Trainer(**kwargs)
