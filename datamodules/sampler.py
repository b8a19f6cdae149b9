"""Batches packed by size: at most ``max_atoms`` atoms and/or ``max_edges`` edges per batch.

A fixed number of structures per batch makes a batch's cost follow its largest members: one
300-atom structure among QM9 molecules multiplies the step's time and memory, and the batch size
must be chosen for the worst batch. Packing by size bounds every batch's atoms (and edges, which
set a message-passing step's cost: PyG issue #10467) instead, as fairchem's balanced batches do
(fairchem PR #267).

:class:`SizeBalancedSampler` packs structures greedily, in the epoch's order, into consecutive
batches: a structure that would take the batch over either budget starts the next one (a structure
larger than the budget alone forms a batch of its own). It is a ``DistributedSampler`` whose
items are whole batches (lists of dataset positions), so Lightning keeps it under DDP instead of
injecting its own, calls ``set_epoch`` on it, and the loader (:class:`SizeBalancedDataLoader`,
``batch_size=None``) reads each batch from the store at once.

- **Training** (``shuffle=True``): the permutation is seeded with ``seed + epoch`` (the same on
  every rank and after a restart); every rank packs the same batches and takes batches
  ``r, r + R, ...``; when the number of batches is not a multiple of the ranks ``R``, the first
  batches are repeated (as PyTorch's ``DistributedSampler`` repeats samples), so every rank runs the
  same number of steps and DDP's gradient all-reduce never waits on a rank that has finished. The
  number of batches can differ by a few between epochs (another permutation packs differently);
  Lightning sizes every epoch (and the learning-rate schedule) by the first epoch's count: an epoch
  that packs into more batches stops there, leaving its last batches out (the same on every rank).
- **Evaluation** (``shuffle=False``): structures in store order, every one exactly once (no
  repeats); to give every rank the same number of batches without repeating anything, the batch
  with the most structures is split in two until the count is a multiple of ``R`` (possible
  while there are at least ``R`` structures). Metrics are sample-weighted means, so batches of
  unequal size do not bias them.
- **Resuming mid-epoch**: the loader's ``state_dict`` records the epoch and the batches already
  trained on; on restore the sampler skips exactly those batches of the epoch's (deterministic) list,
  and only of that epoch: a checkpoint at an epoch's last batch resumes with the whole next epoch.

Edge counts depend on the model's cutoff, which the store does not know when it is built: they are
computed once per cutoff with the model's own neighbour list (:func:`atomzoo.nn.graph.build_graph`,
periodic images included) and cached beside the store (:func:`edge_counts`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from atomzoo.nn.graph import build_graph

from .loaders import StoreDataLoader, _world
from .storage import Store


def pack(sizes: np.ndarray, order: np.ndarray, max_atoms: int | None, edges: np.ndarray | None = None,
         max_edges: int | None = None) -> list[np.ndarray]:  # fmt: skip
    """Greedy packing of the structures ``order`` (in that order) into batches within the budgets.

    Args:
        sizes: ``[M]`` atoms per structure (indexed by dataset position).
        order: positions to pack, in the order they are taken.
        max_atoms: most atoms per batch (``None``: no atom budget).
        edges: ``[M]`` edges per structure (needed with ``max_edges``).
        max_edges: most edges per batch (``None``: no edge budget).

    Returns:
        consecutive slices of ``order``; a batch exceeds a budget only when it is one structure
        larger than the budget.
    """
    budgets = [(np.asarray(sizes, np.int64)[order], max_atoms)]
    if max_edges is not None:
        budgets.append((np.asarray(edges, np.int64)[order], max_edges))
    # prefix sums per budget; a batch starting at s ends before the first k with sum[k] - sum[s] > budget
    starts = [0]
    sums = [(np.concatenate([[0], np.cumsum(v)]), limit) for v, limit in budgets if limit is not None]
    n = len(order)
    while starts[-1] < n:
        s = starts[-1]
        end = n
        for cumulative, limit in sums:
            end = min(end, int(np.searchsorted(cumulative, cumulative[s] + limit, side="right")) - 1)
        starts.append(max(end, s + 1))
    return [order[a:b] for a, b in zip(starts[:-1], starts[1:])]


class SizeBalancedSampler(DistributedSampler):
    """Yields this rank's batches (lists of dataset positions) packed to ``max_atoms`` / ``max_edges``.

    Args:
        dataset: the dataset the positions index (its length is ``len(atoms)``).
        atoms: ``[M]`` atoms of each structure of ``dataset``.
        max_atoms: most atoms per batch, or ``None``.
        edges: ``[M]`` edges of each structure at the model's cutoff (with ``max_edges``).
        max_edges: most edges per batch, or ``None``.
        shuffle: training (seeded shuffling, batches repeated to equal counts) if ``True``, else
            evaluation (store order, every structure exactly once).
        seed: the shuffling seed (``seed_everything``'s); the epoch is added.

    Raises:
        ValueError: neither budget given, a budget below 1, or ``max_edges`` without ``edges``.
    """

    def __init__(self, dataset, atoms: np.ndarray, max_atoms: int | None = None, edges: np.ndarray | None = None,
                 max_edges: int | None = None, shuffle: bool = True, seed: int = 0) -> None:  # fmt: skip
        replicas, rank = _world()
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        if max_atoms is None and max_edges is None:
            raise ValueError("SizeBalancedSampler needs --data.max_atoms and/or --data.max_edges")
        for name, value in (("max_atoms", max_atoms), ("max_edges", max_edges)):
            if value is not None and int(value) < 1:
                raise ValueError(f"--data.{name} is {value}: give a positive number of {name[4:]} per batch")
        if max_edges is not None and edges is None:
            raise ValueError("max_edges needs the structures' edge counts (edges=...)")
        self.atoms = np.asarray(atoms, dtype=np.int64)
        self.edges = None if edges is None else np.asarray(edges, dtype=np.int64)
        if self.atoms.size != len(dataset) or (self.edges is not None and self.edges.size != len(dataset)):
            raise ValueError(f"{self.atoms.size} atom counts for a dataset of {len(dataset)} structures")
        self.max_atoms = None if max_atoms is None else int(max_atoms)
        self.max_edges = None if max_edges is None else int(max_edges)
        self.skip = 0  #: batches of this rank's list to leave out of the next iteration only (resuming) ...
        self.skip_epoch: int | None = None  #: ... when that iteration is of this epoch (None: any)
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def batches(self) -> list[np.ndarray]:
        """Every rank's batches of the current epoch, before they are dealt out (the same on every rank)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.atoms), generator=generator).numpy()
        else:
            order = np.arange(len(self.atoms))
        batches = pack(self.atoms, order, self.max_atoms, self.edges, self.max_edges)
        if self.shuffle:  # equal counts: repeat the first batches
            batches += [batches[k % len(batches)] for k in range(-len(batches) % self.num_replicas)]
        else:
            while len(batches) % self.num_replicas and max(map(len, batches)) > 1:  # split, never repeat
                k = max(range(len(batches)), key=lambda i: len(batches[i]))
                half = len(batches[k]) // 2
                batches[k : k + 1] = [batches[k][:half], batches[k][half:]]
        self._cache = (self.epoch, batches)
        return batches

    def rank_batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch: ``batches()[rank::num_replicas]``."""
        return self.batches()[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the epoch and the skip are read at the first batch, not when the loader's iterator is
        # made. Lightning makes the iterator of a resumed run before it calls set_epoch, and after a checkpoint
        # at an epoch's last batch it moves on to the next epoch, whose batches are all new (no skip).
        skip = self.skip if self.skip_epoch in (None, self.epoch) else 0
        self.skip, self.skip_epoch = 0, None
        for batch in self.rank_batches()[skip:]:
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self.rank_batches())


class SizeBalancedDataLoader(StoreDataLoader):
    """Loader over a :class:`SizeBalancedSampler` (``batch_size=None``: the sampler's items are batches).

    Each item the sampler yields is read from the store as one ``Batch``
    (:meth:`~atomzoo.datamodules.base.StoreDataset.collate`). ``state_dict``/``load_state_dict``
    (saved by Lightning in every checkpoint) hold the epoch and the batches already trained on.

    Args:
        dataset: a :class:`~atomzoo.datamodules.base.StoreDataset`.
        sampler: its :class:`SizeBalancedSampler`.
        batches_done: callable returning the batches of the current epoch already trained on
            (``None`` for evaluation loaders, which are not resumed).
        **kwargs: ``num_workers``, ``pin_memory``, ``persistent_workers``.
    """

    def __init__(self, dataset, sampler: SizeBalancedSampler, batches_done: Callable[[], int] | None = None,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(_Batches(dataset), batch_size=None, sampler=sampler, **kwargs)
        self.balanced_sampler = sampler
        self._batches_done = batches_done

    def state_dict(self) -> dict:
        done = int(self._batches_done()) if self._batches_done is not None else 0
        return {"epoch": int(self.balanced_sampler.epoch), "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        # the batches done are of the saved epoch only: a checkpoint at an epoch's last batch resumes with
        # the next epoch (Lightning calls set_epoch) from its first batch
        self.balanced_sampler.set_epoch(state["epoch"])
        self.balanced_sampler.skip = int(state["batches_done"])
        self.balanced_sampler.skip_epoch = int(state["epoch"])


class _Batches(torch.utils.data.Dataset):
    """``dataset`` indexed by whole batches: ``self[positions]`` is ``dataset.__getitems__(positions)``
    (what the loader's collate function turns into one ``Batch``)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, positions):
        return self.dataset.__getitems__(positions)


def edge_counts(store: Store, cutoff: float, chunk_atoms: int = 200_000) -> np.ndarray:
    """``[M]`` int64 edges (directed, both directions; periodic images included) of every structure of
    ``store`` within ``cutoff`` Angstrom, as :func:`~atomzoo.nn.graph.build_graph` builds them.

    Computed once per store and cutoff, in chunks of about ``chunk_atoms`` atoms (bounded memory),
    and cached beside the store as ``.<store>.edges-<cutoff>A-<pos checksum>.npy`` (written to a
    temporary file and renamed: concurrent processes never see half a file; a rebuilt store has
    another checksum and gets new counts).

    Raises:
        ValueError: a cutoff that is not positive.
    """
    if not cutoff > 0:
        raise ValueError(f"edge counts need a positive cutoff (Angstrom), got {cutoff}")
    checksum = str(store.meta["arrays"]["pos"].get("blake2b", store.meta.get("num_atoms")))[:16]
    cache = store.path.parent / f".{store.path.name}.edges-{cutoff:g}A-{checksum}.npy"
    if cache.exists():
        counts = np.load(cache)
        if counts.shape == (len(store),):
            return counts
    periodic = {"cell", "pbc"} <= set(store.molecule_arrays())
    counts = np.zeros(len(store), dtype=np.int64)
    ends = np.searchsorted(store.offsets, np.arange(chunk_atoms, store.offsets[-1] + chunk_atoms, chunk_atoms))
    start = 0
    for end in np.unique(np.clip(ends, 1, len(store))):
        if end <= start:
            continue
        a, b = int(store.offsets[start]), int(store.offsets[end])
        pos = torch.from_numpy(np.array(store.arrays["pos"][a:b], dtype=np.float32))
        batch = torch.repeat_interleave(torch.arange(end - start), torch.from_numpy(
            np.asarray(store.counts[start:end], dtype=np.int64)))
        cell = torch.from_numpy(np.array(store.arrays["cell"][start:end], dtype=np.float32)) if periodic else None
        pbc = torch.from_numpy(np.array(store.arrays["pbc"][start:end], dtype=bool)) if periodic else None
        graph = build_graph(pos, batch, float(cutoff), cell=cell, pbc=pbc)
        counts[start:end] = np.bincount(batch[graph.edge_index[1]].numpy(), minlength=end - start)
        start = end
    handle, tmp = tempfile.mkstemp(prefix=cache.name + ".tmp-", suffix=".npy", dir=cache.parent)
    with os.fdopen(handle, "wb") as f:
        np.save(f, counts)
    os.replace(tmp, cache)
    return counts


__all__ = ["SizeBalancedDataLoader", "SizeBalancedSampler", "edge_counts", "pack"]
