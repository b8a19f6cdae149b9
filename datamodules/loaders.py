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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler
from torch_geometric.loader import DataLoader


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(DistributedSampler):
    """Seeded, epoch-dependent shuffling, sharded across ranks, able to skip already-seen samples.

    ``skip`` samples (of this rank's share) are dropped from the start of the next iteration only.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0) -> None:
        replicas, rank = _world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
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


class ResumableDataLoader(DataLoader):
    """PyG DataLoader over a :class:`ResumableSampler` whose position is saved in checkpoints.

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


__all__ = ["ExactDistributedSampler", "ResumableDataLoader", "ResumableSampler"]
