"""DataLoaders that are exact under DDP and resumable mid-epoch.

Training: :class:`ResumableSampler` shuffles with a seed and the epoch (the same order on every rank
and after a restart), shards the permutation across DDP ranks (padding by wrap-around, as training
needs equal step counts on all ranks), and can skip the batches an interrupted epoch already
trained on. :class:`ResumableDataLoader` exposes ``state_dict``/``load_state_dict``, which Lightning
saves in every checkpoint and restores on ``--ckpt_path``, so a run killed mid-epoch continues with
the very next batch instead of replaying or skipping data.

Evaluation: :class:`ExactDistributedSampler` splits the data across ranks without padding, so that
validation/test metrics (torchmetrics, synced over ranks) see every molecule exactly once -- PyTorch's
``DistributedSampler`` would repeat molecules to even out the ranks and bias the MAE.

Both samplers subclass ``DistributedSampler``, so Lightning keeps them instead of injecting its own.

Batches are read whole: the samplers stay per-molecule (so DDP sharding, resuming and any sampler
Lightning injects work unchanged), torch's DataLoader groups their indices into batches and hands
each list to the dataset's ``__getitems__``, which returns :class:`BatchItems`; the loaders'
:class:`BatchCollater` turns that into one PyG ``Batch`` with a single vectorised read of the store
(:meth:`~atomzoo.datamodules.base.StoreDataset.collate`) instead of one ``Data`` object per molecule
and PyG's per-molecule collation. Any other collate function (e.g. a plain PyG ``DataLoader``)
still sees a sequence of ``Data`` objects and gives the same batches, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler
from torch_geometric.loader import DataLoader
from torch_geometric.loader.dataloader import Collater


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """Seeded, epoch-dependent shuffling, sharded across ranks, able to skip already-seen samples.

    ``skip`` samples (of this rank's share) are dropped from the start of the next iteration only, and
    only when that iteration is of epoch ``skip_epoch`` (``None``: any): a run saved at an epoch's last
    batch resumes with the next epoch, whose samples are all new.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0) -> None:
        replicas, rank = _world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0
        self.skip_epoch: int | None = None

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip = self.skip if self.skip_epoch in (None, self.epoch) else 0
        self.skip, self.skip_epoch = 0, None
        return iter(indices[skip:])


class ExactDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``R`` gets molecules ``r, r + R, r + 2R, ...`` in order: no padding, no repeats."""

    def __init__(self, dataset: Dataset) -> None:
        replicas, rank = _world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(self.dataset), self.num_replicas))
        self.total_size = len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class BatchItems(Sequence):
    """The samples of one batch, as a batched dataset's ``__getitems__`` returns them.

    A sequence of ``len(positions)`` samples, ``items[k] = dataset[positions[k]]``, built only when
    accessed (torch's contract for ``__getitems__``: a list of samples, e.g. for ``Subset``, or for a
    collate function that expects ``Data`` objects); :meth:`collate` builds the whole collated batch
    at once with ``dataset.collate(positions)``, which :class:`BatchCollater` calls.
    """

    __slots__ = ("dataset", "positions")

    def __init__(self, dataset: Any, positions: Sequence[int]) -> None:
        self.dataset = dataset
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return BatchItems(self.dataset, self.positions[k])
        return self.dataset[self.positions[k]]

    def collate(self):
        """The collated batch of these samples (``dataset.collate(positions)``)."""
        return self.dataset.collate(self.positions)


class BatchCollater(Collater):
    """PyG's ``Collater`` that lets :class:`BatchItems` collate themselves (one vectorised read per batch).

    With ``follow_batch`` or ``exclude_keys``, or for anything but :class:`BatchItems` (a list of
    ``Data`` objects), it collates exactly like PyG's ``Collater``.
    """

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, BatchItems) and not self.follow_batch and not self.exclude_keys:
            return batch.collate()
        return super().__call__(list(batch) if isinstance(batch, BatchItems) else batch)


class StoreDataLoader(DataLoader):
    """PyG ``DataLoader`` whose collate function is a :class:`BatchCollater`.

    Same arguments as ``torch_geometric.loader.DataLoader``. Over a
    :class:`~atomzoo.datamodules.base.StoreDataset` each batch is read from the store at once; the
    batches (molecules, order, tensors, dtypes, attributes) are those PyG's collation of the
    per-molecule ``Data`` objects gives.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = False, follow_batch=None,
                 exclude_keys=None, **kwargs) -> None:  # fmt: skip
        super().__init__(dataset, batch_size, shuffle, follow_batch=follow_batch, exclude_keys=exclude_keys, **kwargs)
        self.collate_fn = BatchCollater(dataset, follow_batch, exclude_keys)


class ResumableDataLoader(StoreDataLoader):
    """:class:`StoreDataLoader` over a :class:`ResumableSampler` whose position is saved in checkpoints.

    Args:
        batches_done: callable returning how many batches of the current epoch have been trained on
            (the DataModule reads it from the trainer; counting yielded batches would be off by
            Lightning's prefetch).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, batches_done: Callable[[], int], **kwargs) -> None:
        self.resumable_sampler = ResumableSampler(dataset, shuffle=True, seed=seed)
        super().__init__(dataset, batch_size=batch_size, sampler=self.resumable_sampler, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict:
        return {"epoch": int(self.resumable_sampler.epoch), "batches_done": int(self._batches_done())}

    def load_state_dict(self, state: dict) -> None:
        self.resumable_sampler.set_epoch(state["epoch"])
        self.resumable_sampler.skip = state["batches_done"] * self.batch_size
        self.resumable_sampler.skip_epoch = int(state["epoch"])  # of this epoch only (see ResumableSampler)


__all__ = [
    "BatchCollater",
    "BatchItems",
    "ExactDistributedSampler",
    "ResumableDataLoader",
    "ResumableSampler",
    "StoreDataLoader",
]
