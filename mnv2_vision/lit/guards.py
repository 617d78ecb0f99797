"""Stopping a run safely: on a non-finite loss (saying why) and on SIGTERM / Ctrl-C (saving ``last.ckpt`` first).

Lightning's own SIGTERM handling raises ``SIGTERMException``, a ``SystemExit`` with no code, so a run stopped by a
scheduler or ``kill`` printed "Received SIGTERM" and exited 0: scripts and CI counted it as passed. ``StopOnSignal``
replaces it for the run: the current batch finishes, ``last.ckpt`` is written at that batch end (the same point as
the periodic step saves, so ``--resume last`` continues exactly), and ``errors.RunInterrupted`` makes the tool exit
with 128 + the signal number.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ..errors import RunInterrupted, UserError
from .checkpointing import LastCheckpoint

__all__ = ["NonFiniteLossError", "FiniteLossGuard", "StopOnSignal"]


class NonFiniteLossError(UserError, RuntimeError):
    """Training stopped because the loss became NaN or infinite (exit status 1); the message names the cause."""

    exit_code = 1


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _non_finite_batch(batch: Any) -> bool:
    return any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _tensors(batch))


class FiniteLossGuard(Callback):
    """Stop on a non-finite loss *before* backward, naming the step, the images of the batch and the cause:

    - the weights: already NaN/inf (an earlier update diverged: learning rate too high, or a mixed-precision
      overflow);
    - the learning rate: not finite;
    - the data: the batch's images or targets hold NaN/inf;
    - otherwise the loss itself overflowed with finite weights and inputs.

    The LightningModule may define ``batch_ids(batch) -> list`` (COCO image ids, VOC ids or file names).
    """

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        ids_fn = getattr(module, "batch_ids", None)
        ids = ids_fn(self._batch) if ids_fn is not None else "unknown"
        state = module.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        if bad:
            cause = (f"cause: the weights — {len(bad)} of {len(state)} tensors are already NaN/inf (e.g. {bad[0]}), so "
                     f"an earlier update diverged; lower optim.lr (now {lrs[0] if lrs else '?'}) or turn off mixed "
                     "precision, and resume from the last checkpoint (never written with non-finite weights)")
        elif any(not math.isfinite(lr) for lr in lrs):
            cause = f"cause: the learning rate is not finite ({lrs}); check optim.lr and the sched.* settings"
        elif _non_finite_batch(self._batch):
            cause = ("cause: the data — this batch's images or targets hold NaN/inf; check data.mean / data.std and "
                     "these files with tools/check_data.py")
        else:
            cause = ("cause: the loss overflowed with finite weights and inputs; lower optim.lr, add "
                     "trainer.gradient_clip_val, or turn off mixed precision")
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at global step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {self._batch_idx}); images in this batch: {ids}. {cause}")


class StopOnSignal(Callback):
    """SIGTERM or Ctrl-C: finish the current batch, write ``last.ckpt`` there, and raise ``RunInterrupted``.

    On an epoch's last batch or during validation no new ``last.ckpt`` is written (one written there would skip the
    unfinished validation on resume, ``LastCheckpoint``): the run stops at once and ``--resume last`` redoes the
    steps since the last save. A second Ctrl-C stops at once. Handlers are installed when training or validation
    starts (after Lightning's, which they replace; Lightning restores the previous ones at its teardown).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, last: LastCheckpoint) -> None:
        self.last = last
        self.signum: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after the current batch", file=sys.stderr,
              flush=True)

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                signal.signal(s, self._handler)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._install()

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._install()

    def _requested(self, trainer: pl.Trainer) -> bool:
        flag = self.signum is not None
        if trainer.world_size > 1:  # every rank must stop at the same batch (the save is collective)
            flag = trainer.strategy.reduce_boolean_decision(flag, all=False)
        return flag

    def _stop(self, trainer: pl.Trainer, what: str) -> None:
        signum = self.signum if self.signum is not None else signal.SIGTERM
        raise RunInterrupted(signum, f"{signal.Signals(signum).name} {what}; run the same command with --resume last "
                                     "to continue")

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._requested(trainer):
            return
        if LastCheckpoint.at_epoch_end(trainer) or trainer.fit_loop.epoch_loop._is_training_done:
            self._stop(trainer, f"at global step {trainer.global_step}, the last batch of epoch "
                                f"{trainer.current_epoch}: the last saved last.ckpt is kept (the epoch's end is redone "
                                "on resume)")
        self.last.save(trainer)
        self._stop(trainer, f"at global step {trainer.global_step}: {self.last.last_model_path} saved")

    def on_validation_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not self._requested(trainer):
            return
        if trainer.state.fn == "fit":
            self._stop(trainer, f"during the validation of epoch {trainer.current_epoch}: the last saved last.ckpt is "
                                "kept and the validation is redone on resume")
        self._stop(trainer, "during the final evaluation")
