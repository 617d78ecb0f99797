"""Resumable training data: the loader's place in the epoch goes into Lightning checkpoints, and augmentation
depends only on ``(seed, epoch, index)``.

Lightning restores weights, optimiser, LR schedule, epoch and step from a checkpoint, but a plain ``DataLoader``
starts its epoch again from the first batch, with a new shuffle and new augmentation draws (worker and global RNG
states are in no checkpoint). Here:

- ``ResumableSampler`` orders each epoch by a permutation drawn from ``(seed, epoch)`` alone and yields
  ``(index, sample_seed)`` pairs, ``sample_seed`` drawn from ``(seed, epoch, index)``. The datasets
  (``CocoDetection``, ``VOCSegmentation``) accept such a pair and seed their transform with it before augmenting
  (``seed_sample``); a plain int index still means "no reseeding" (evaluation, tools).
- ``ResumableDataLoader`` counts the batches its iterator has returned in the current epoch. Lightning stores the
  ``state_dict()`` of every training loader that has one in the checkpoint (``loops.fit_loop.state_dict.
  combined_loader``) and hands it back through ``load_state_dict()`` on a mid-epoch resume; the next iteration then
  starts right after those batches.

So a run killed mid-epoch and resumed from ``last.ckpt`` sees the same batches, in the same order and with the same
augmentation, as an uninterrupted run; and the augmentation of a sample does not depend on ``num_workers``, on the
worker that loads it, or on anything else that draws from the global RNGs. The sampler subclasses
``DistributedSampler``, so Lightning keeps it under DDP (the data modules pass ``num_replicas``/``rank``).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sized

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["ResumableSampler", "ResumableDataLoader", "derive_seed", "sample_seed", "seed_sample", "replicas"]

# Domain tags, so the epoch order and the per-sample seeds never share a SeedSequence input.
_ORDER, _SAMPLE = 0x6F72, 0x736D


def _u64(seed: int) -> int:
    return int(seed) % 2**64  # SeedSequence takes non-negative entropy; a negative config seed still works


def derive_seed(*words: int) -> int:
    """A 32-bit seed that depends only on ``words`` (hashed by ``np.random.SeedSequence``)."""
    return int(np.random.SeedSequence([_u64(w) for w in words]).generate_state(1)[0])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` (a 32-bit int)."""
    return derive_seed(_SAMPLE, seed, epoch, index)


def seed_sample(transform: Any, index: Any) -> int:
    """Dataset helper: ``index`` is an int, or an ``(index, sample_seed)`` pair from ``ResumableSampler``; with a
    seed, ``transform.set_random_seed(seed)`` is called first. Returns the int index."""
    if isinstance(index, tuple):
        index, seed = index
        if transform is not None:
            set_seed = getattr(transform, "set_random_seed", None)
            if set_seed is None:
                raise TypeError(f"{type(transform).__name__} has no set_random_seed(seed); it cannot take the "
                                "per-sample augmentation seeds of ResumableSampler")
            set_seed(int(seed))
    return int(index)


class ResumableSampler(DistributedSampler):
    """Per-epoch order from ``(seed, epoch)`` only; yields ``(index, sample_seed(seed, epoch, index))``.

    Like ``DistributedSampler`` (padding with repeats unless ``drop_last``; replica ``rank`` takes every
    ``num_replicas``-th index), with a numpy permutation. ``start`` skips that many of this replica's samples in the
    next iteration only (set by ``ResumableDataLoader.load_state_dict``); ``set_epoch`` to another epoch clears it.
    ``len()`` is always the whole epoch's count.
    """

    def __init__(self, dataset: Sized, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        super().set_epoch(epoch)

    def order(self, epoch: int | None = None) -> list[int]:
        """This replica's indices of ``epoch`` (default: the current one), before any ``start`` offset."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([_ORDER, _u64(self.seed), int(epoch)]))
            indices = rng.permutation(n).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[: self.total_size]
        elif self.total_size > n:
            pad = self.total_size - n
            indices += (indices * math.ceil(pad / n))[:pad]
        return indices[self.rank: self.total_size: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        start, self.start = self.start, 0
        epoch, seed = self.epoch, self.seed
        order = self.order(epoch)[start:]
        return ((i, sample_seed(seed, epoch, i)) for i in order)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler`` whose position in the epoch is checkpointed.

    ``state_dict()`` → ``{"epoch", "batches_done"}``: the epoch of the current (or last) iteration and the batches
    its iterator has returned. ``load_state_dict()`` sets the sampler to that epoch and makes the next iteration skip
    those batches (``batches_done * batch_size`` samples; every batch before the last is full); a finished epoch
    continues with the next one from its start. The underlying iterator (and its workers' prefetching) starts at the
    first ``next()``, so a ``set_epoch`` between ``iter()`` and the first batch (Lightning does this when it resumes)
    still takes effect. Other arguments are ``DataLoader``'s; ``batch_sampler`` is not supported.
    """

    def __init__(self, dataset: Any, *, sampler: ResumableSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"ResumableDataLoader needs a ResumableSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)
        if self.batch_size is None:
            raise ValueError("ResumableDataLoader needs a batch_size")
        self._epoch = sampler.epoch
        self._batches_done = 0

    def __iter__(self) -> Iterator[Any]:
        return _ResumableIterator(self)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches_done": int(self._batches_done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):
            epoch, done = epoch + 1, 0
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        sampler.set_epoch(epoch)
        sampler.start = done * int(self.batch_size)  # type: ignore[arg-type]
        self._epoch, self._batches_done = epoch, done


class _ResumableIterator:
    """Starts the DataLoader's own iterator at the first ``next()`` and counts the batches it returns."""

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self._it: Iterator[Any] | None = None

    def __iter__(self) -> "_ResumableIterator":
        return self

    def __next__(self) -> Any:
        loader = self.loader
        if self._it is None:
            sampler: ResumableSampler = loader.sampler  # type: ignore[assignment]
            loader._epoch = sampler.epoch
            loader._batches_done = sampler.start // int(loader.batch_size)  # type: ignore[arg-type]
            self._it = DataLoader.__iter__(loader)
        batch = next(self._it)
        loader._batches_done += 1
        return batch


def replicas(trainer: Any) -> tuple[int, int]:
    """``(num_replicas, rank)`` for the training sampler: Lightning's own choice under a distributed strategy
    (``trainer.distributed_sampler_kwargs``), ``(1, 0)`` otherwise or without a trainer."""
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kwargs:
        return 1, 0
    return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))
