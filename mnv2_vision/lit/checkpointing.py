"""What a training run writes while it runs — checkpoints and the metrics log — written so that a kill, a full disk
or a resume never leaves a wrong file behind.

- ``AtomicCheckpointIO``: every checkpoint through ``files.atomic_write``; read back with ``weights_only=True``
  explicitly (Lightning's own load path too, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says); a checkpoint whose
  weights are not finite is never written.
- ``LastCheckpoint``: ``last.ckpt`` at every epoch end and every N steps, never between an epoch's last batch and
  its validation, so a resume always redoes a validation that did not finish.
- ``RunCSVLogger``: ``metrics.csv`` keeps the whole history across resumes (the rows of the steps a resumed run
  replays are dropped first) and is only ever appended to whole rows or replaced atomically.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..config import Config, TrainerCfg, config_from_dict
from ..errors import CheckpointError, UserError
from ..files import atomic_write, load_torch, write_text

__all__ = ["AtomicCheckpointIO", "NonFiniteWeightsError", "LastCheckpoint", "RunCSVLogger", "resume_step",
           "inspect_resume", "ResumeInfo"]


class NonFiniteWeightsError(UserError, RuntimeError):
    """The weights turned NaN/inf: such a checkpoint is never written (exit status 1, like a diverged loss)."""

    exit_code = 1


def _non_finite(state: dict[str, Any]) -> list[str]:
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name, fsynced, then renamed (a crash never truncates ``last.ckpt``), read
    with ``weights_only=True`` (a checkpoint is data, never code), and refused when their weights are not finite."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        bad = _non_finite(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteWeightsError(
                f"not writing {Path(path).name}: {len(bad)} of {len(checkpoint['state_dict'])} weight tensors are "
                f"NaN/inf (e.g. {bad[0]}) at global step {checkpoint.get('global_step')}; the previous checkpoints "
                "are kept. The weights diverged: lower optim.lr (or turn off mixed precision) and resume from "
                "the last good checkpoint")
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return load_torch(path, "checkpoint")


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` at the end of every training epoch (after its validation) and, with
    ``every_n_train_steps=N``, after every N-th optimiser step, so a killed run loses at most N steps; on a resume,
    make sure the training loaders get their saved place in the epoch back (``data/resumable.py``).

    The step save is skipped on an epoch's last batch: a ``last.ckpt`` from between the last batch and the
    validation would, on resume, start the next epoch and never run the validation the killed run did not finish
    (the best checkpoint and the final metrics then differed from an uninterrupted run's). The epoch-end save
    follows a moment later anyway.

    Separate from the best-metric ``ModelCheckpoint``: with a monitor, Lightning 2.6 rewrites that callback's
    ``save_last`` file only in an epoch where the metric improved, so its ``last.ckpt`` could be epochs old.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self.last_model_path = ""
        self._last_step_saved = -1

    def save(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` now (the training state at this batch end / epoch end); loggers are flushed first,
        so ``metrics.csv`` holds every row up to the checkpoint."""
        for logger in trainer.loggers:
            logger.save()
        path = self.dirpath / "last.ckpt"
        # Through the strategy: rank 0 writes (AtomicCheckpointIO: never a truncated file), all ranks wait.
        trainer.save_checkpoint(path, weights_only=False)
        self.last_model_path, self._last_step_saved = str(path), trainer.global_step

    @staticmethod
    def at_epoch_end(trainer: pl.Trainer) -> bool:
        """Whether the batch that just ended is the last of its epoch (its validation and epoch end follow)."""
        loop = trainer.fit_loop.epoch_loop
        return bool(loop.batch_progress.is_last_batch) or loop._num_ready_batches_reached()

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
        if self.at_epoch_end(trainer) or trainer.fit_loop.epoch_loop._is_training_done:
            return
        self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            self.save(trainer)


def resume_step(checkpoint: dict[str, Any]) -> int:
    """The logging step at which a run resumed from ``checkpoint`` continues: rows of ``metrics.csv`` (and TensorBoard
    events) from this step on were written after the checkpoint, and the resumed run writes them again."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    state = loops.get("epoch_loop.state_dict", {})
    batches = int(state.get("_batches_that_stepped", checkpoint.get("global_step", 0)))
    progress = loops.get("epoch_loop.batch_progress", {}).get("total", {})
    # Saved in on_train_batch_end (a step save): the batch was processed but not yet counted as completed, and the
    # counter moves on when the run restarts (Lightning's training_epoch_loop.reset does the same).
    if progress and progress.get("completed", 0) == progress.get("processed", 0) - 1:
        batches += 1
    return batches


class _AppendOnlyWriter(ExperimentWriter):
    """``metrics.csv`` written only as whole rows: appends are fsynced and rolled back (truncated) if they fail
    (a full disk), a new header rewrites the file atomically. On a resume the rows from ``resume_from`` on are
    dropped (the resumed run logs those steps again); on a fresh start an old file is replaced."""

    def __init__(self, log_dir: str, resume_from: int | None) -> None:
        # Not super().__init__: Lightning's writer deletes an existing metrics.csv (dropping a resumed run's history)
        # and warns that the folder is not empty.
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        os.makedirs(log_dir, exist_ok=True)
        path = Path(self.metrics_file_path)
        if resume_from is None:
            if path.exists():
                path.unlink()
            return
        rows, keys = self._read(path)
        keep = [r for r in rows if int(r["step"]) < resume_from]
        self.metrics_keys = keys
        if path.exists():
            self._write_all(keep, keys)

    @staticmethod
    def _read(path: Path) -> tuple[list[dict[str, str]], list[str]]:
        """Whole rows only: a row cut short by a kill has missing fields and is dropped."""
        if not path.is_file():
            return [], []
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if None not in r.values() and None not in r and r.get("step", "").isdigit()]
        return rows, keys

    def _write_all(self, rows: list[dict[str, Any]], keys: list[str]) -> None:
        with atomic_write(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        write_text(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), yaml.safe_dump(self.hparams, sort_keys=False))

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        path = Path(self.metrics_file_path)
        if new_keys or not path.exists():
            rows, _ = self._read(path)
            self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
            self._write_all(rows + self.metrics, self.metrics_keys)
        else:
            with open(path, "r+", newline="") as f:
                end = f.seek(0, os.SEEK_END)
                try:
                    csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:
                    f.truncate(end)  # no half-written rows: the file stays as it was
                    raise
        self.metrics = []


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/metrics.csv`` through ``_AppendOnlyWriter``.

    Args:
        save_dir: the run folder.
        resume_from: the logging step a resumed run continues at (``resume_step``); ``None`` for a fresh run.
    """

    def __init__(self, save_dir: str | Path, resume_from: int | None = None) -> None:
        super().__init__(save_dir, name="", version="")
        self._resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendOnlyWriter(self.log_dir, self._resume_from)
        return self._experiment


# ---------------------------------------------------------------------------------------------- resuming a run
@dataclasses.dataclass(frozen=True)
class ResumeInfo:
    """What ``--resume`` will continue: the checkpoint, whether its training already finished, and the logging step
    the run continues at (the logs drop rows written after the checkpoint)."""

    path: Path
    finished: bool
    epochs_done: int
    global_step: int
    log_step: int


def _diff(a: dict, b: dict, prefix: str) -> list[str]:
    return [f"{prefix}{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k != "pretrained" and a.get(k) != b.get(k)]


def _check_limits(path: Path, old: Config, t: TrainerCfg, epochs_done: int, mid_epoch: bool, step: int) -> None:
    """A resume only trains on: a ``trainer.max_epochs`` / ``max_steps`` below what the checkpoint has trained is
    refused here, before any file of the run is rewritten (Lightning would stop with a traceback or, at an epoch's
    end, quietly record the smaller limit in config.yaml as if the run had trained that long)."""

    trained = f"{epochs_done} epoch(s){' and part of the next' if mid_epoch else ''} (step {step})"
    hint = f"or start a new run from these weights with --set model.pretrained={path}"
    if t.max_epochs > 0 and (epochs_done > t.max_epochs or (mid_epoch and epochs_done >= t.max_epochs)):
        need = epochs_done + int(mid_epoch)
        raise CheckpointError(f"{path} has trained {trained}, more than trainer.max_epochs={t.max_epochs}: a resume "
                              f"only trains on. Resume with at least trainer.max_epochs={need} (its run was set "
                              f"to {old.trainer.max_epochs}), {hint}")
    if t.max_steps > 0 and step > t.max_steps:
        raise CheckpointError(f"{path} has trained {trained}, more than trainer.max_steps={t.max_steps}: a resume "
                              f"only trains on. Resume with at least trainer.max_steps={step} (its run was set "
                              f"to {old.trainer.max_steps}), {hint}")


def inspect_resume(path: str | Path, cfg: Config, run_dir: str | Path) -> ResumeInfo:
    """Check that ``path`` is a training checkpoint this run can continue, before Lightning loads it.

    Errors (``CheckpointError``, one line each): not a readable checkpoint; a plain state dict (``model.pt``); a
    checkpoint of another task or of another model than ``cfg.model``; a finished training of another run folder
    (continuing it would write that run's results here).
    """

    path = Path(path)
    ckpt = load_torch(path, "checkpoint")
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path} is a plain state dict (like model.pt), not a training checkpoint: it has no "
                              "optimiser, schedule or epoch to resume. Resume from <run>/ckpt/last.ckpt, or start a "
                              f"new run from these weights with --set model.pretrained={path}")
    if not isinstance(ckpt, dict) or "loops" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint of mnv2_vision (no training loop state); resume "
                              "from <run>/ckpt/last.ckpt")
    stored = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} carries no config; was it written by an mnv2_vision training tool?")
    old = config_from_dict(stored, where=f" in checkpoint {path}")
    if old.task != cfg.task:
        raise CheckpointError(f"{path} is a {old.task} checkpoint; this run trains {cfg.task}: resume it with the "
                              f"{old.task} tool, or give this task's checkpoint")
    diffs = _diff(dataclasses.asdict(old.model), dataclasses.asdict(cfg.model), "model.")
    if diffs:
        raise CheckpointError(f"{path} holds another model than this config builds ({'; '.join(diffs[:4])}); "
                              "resume with the config it was trained with (its config.yaml)")
    progress = ckpt["loops"].get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    # An epoch counts once its training batches are done ("processed"): last.ckpt at an epoch's end is written
    # before Lightning counts the epoch "completed". A step save inside the next epoch has "started" it.
    completed = int(progress.get("completed", ckpt.get("epoch", 0)))
    epochs_done = max(completed, int(progress.get("processed", completed)))
    mid_epoch = int(progress.get("started", epochs_done)) > epochs_done
    step = int(ckpt.get("global_step", 0))
    t = cfg.trainer
    _check_limits(path, old, t, epochs_done, mid_epoch, step)
    finished = (t.max_epochs > 0 and epochs_done >= t.max_epochs) or (t.max_steps > 0 and step >= t.max_steps)
    inside = Path(run_dir).resolve() in path.resolve().parents
    if finished and not inside:
        raise CheckpointError(f"{path} finished its training ({epochs_done} epoch(s), step {step}; "
                              f"trainer.max_epochs={t.max_epochs}): there is nothing to resume, and continuing it "
                              "here would copy another run's results into this folder. Train longer with a larger "
                              f"trainer.max_epochs, start a new run from its weights with --set model.pretrained="
                              f"{path}, or evaluate it with the eval tool")
    return ResumeInfo(path, finished, epochs_done, step, resume_step(ckpt))
