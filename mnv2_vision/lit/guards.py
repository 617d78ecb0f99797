"""Stopping a run safely: on a non-finite loss (saying why) and on SIGTERM / Ctrl-C (saving ``last.ckpt`` first).

Lightning's own SIGTERM handling raises ``SIGTERMException``, a ``SystemExit`` with no code, so a run stopped by a
scheduler or ``kill`` printed "Received SIGTERM" and exited 0: scripts and CI counted it as passed. ``StopOnSignal``
saves ``last.ckpt`` at the point where Lightning stops (so ``--resume last`` continues exactly) and ``cli.guarded``
exits with 128 + the signal number (143 for SIGTERM, 130 for Ctrl-C).
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

from ..errors import UserError
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
    """SIGTERM or Ctrl-C: stop at the next clean point with ``last.ckpt`` saved, then exit 128 + the signal number.

    The stop itself is Lightning's: its loops raise ``SIGTERMException`` once the current training batch is complete
    (its update, logs and progress counters done), or after the current validation batch. Ctrl-C is routed the same
    way (a second one stops at once). Here, in ``on_exception``: a stop after a training batch writes ``last.ckpt``
    at that point; a stop during validation writes nothing (``last.ckpt`` from before the validation is kept, and
    the validation is redone on resume; see ``LastCheckpoint``). ``cli.guarded`` turns the exception into the exit
    status, with ``signum`` and ``where`` set on it here. Handlers are installed when training or validation starts
    (after Lightning's; it restores the previous ones at its teardown).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, last: LastCheckpoint) -> None:
        self.last = last
        self.signum: int | None = None
        self._trainer: pl.Trainer | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True  # Lightning's loops stop at the next clean point
        print(f"\nreceived {signal.Signals(signum).name}: stopping after the current batch", file=sys.stderr,
              flush=True)

    def _install(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                signal.signal(s, self._handler)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        exception.signum = self.signum if self.signum is not None else signal.SIGTERM  # type: ignore[attr-defined]
        if trainer.state.fn == "fit" and trainer.training and not trainer.sanity_checking:
            self.last.save(trainer)
            where = f"at global step {trainer.global_step}: {self.last.last_model_path} saved"
        elif trainer.state.fn == "fit":
            where = (f"during the validation of epoch {trainer.current_epoch}: the last saved last.ckpt is kept and "
                     "the validation is redone on resume")
        else:
            where = "during the final evaluation"
        exception.where = where  # type: ignore[attr-defined]
