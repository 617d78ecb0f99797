"""Validation loaders under DDP: every image on exactly one rank, none repeated.

Lightning gives a validation ``DataLoader`` a ``DistributedSampler`` that *pads* the split to a multiple of the world
size by repeating images (7 images on 2 ranks → 8, one image twice). Dataset-level metrics would then count those
images twice (a segmentation confusion matrix) or need de-duplication (COCO evaluation keys by image id). The helpers
here give the loader a non-padding ``UnrepeatedDistributedSampler`` instead: rank ``r`` of ``R`` reads indices
``r, r + R, r + 2R, ...``, so the ranks' shares are disjoint, cover the split, and differ by at most one image
(hence possibly by one batch). Lightning keeps a user sampler that is a ``DistributedSampler`` instance.

Uneven batch counts are safe for validation because no collective runs per validation step: the modules keep
per-rank state (detections, a confusion matrix) and gather or reduce it once, in ``on_validation_epoch_end``, which
every rank reaches; DDP's buffer broadcast runs only on a rank's first validation batch, and every rank has at least
one (a split with fewer images than ranks falls back to Lightning's padding sampler, with a warning).
"""
from __future__ import annotations

import logging
from typing import Any

from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

__all__ = ["eval_sampler", "distributed_eval_loader"]

log = logging.getLogger("mnv2_vision")


def eval_sampler(dataset: Dataset, trainer: Any) -> UnrepeatedDistributedSampler | None:
    """A non-padding, non-shuffling sampler for this rank's share of ``dataset``, or None when not distributed.

    Args:
        dataset: a sized dataset.
        trainer: the attached ``pl.Trainer`` (None outside a trainer, e.g. a tool calling ``val_dataloader()``).
    """
    kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
    if not kwargs or int(kwargs.get("num_replicas", 1)) <= 1:
        return None
    replicas, rank = int(kwargs["num_replicas"]), int(kwargs["rank"])
    if len(dataset) < replicas:  # some rank would get no batch at all: let Lightning pad instead
        log.warning("validation split has %d images for %d ranks: using Lightning's padding sampler, so some "
                    "images are evaluated more than once", len(dataset), replicas)
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)


def distributed_eval_loader(loader: DataLoader, trainer: Any) -> DataLoader:
    """``loader`` itself when not distributed; otherwise the same loader (batch size, collate, workers, ...) reading
    only this rank's share of its dataset, each image once over all ranks (``eval_sampler``)."""
    sampler = eval_sampler(loader.dataset, trainer)
    if sampler is None:
        return loader
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device, in_order=loader.in_order)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)
