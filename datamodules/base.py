"""Shared machinery of every molecular DataModule: store, splits, datasets, loaders, target metadata.

A concrete DataModule (QM9, MD17, ...) says where its store lives, how to build it from the raw
files, and what its labels mean (:class:`~atomzoo.nn.statistics.TargetInfo`). Everything else --
splits, low-data subsets, saving the split next to the run, DataLoaders, and the one summary a model
is handed at ``setup`` (:meth:`AtomsDataModule.data_summary`: label metadata, units, elements and
training statistics, as :class:`~atomzoo.nn.statistics.DataSummary`) -- is here.

A batch is a PyG ``Batch`` with
    ``z`` ``[N]`` long, ``pos`` ``[N, 3]`` float32 (Angstrom), ``batch`` ``[N]`` long, ``ptr``
    ``[num_graphs + 1]`` long,
    ``y`` ``[num_graphs, T]`` float64 -- the selected targets in their physical units,
    ``idx`` ``[num_graphs]`` long -- the molecule's row in the store,
plus any per-atom label arrays the store has (e.g. ``forces`` ``[N, 3]`` float32) and, for periodic
stores, ``cell`` ``[num_graphs, 3, 3]`` float32 (Angstrom) and ``pbc`` ``[num_graphs, 3]`` bool, and for
stores with stress ``stress`` ``[num_graphs, 3, 3]`` float32 (eV/A^3, ASE's sign; NaN where a structure has none).
The DataModules' loaders read each batch from the store at once (:meth:`StoreDataset.collate`); the
result is the batch PyG's ``Batch.from_data_list`` makes of the per-molecule ``Data`` objects.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from atomzoo.nn.statistics import (MAX_Z, DataSummary, StatisticsRequest, StreamingTargetStatistics, TargetInfo,
                                   TargetStatistics)  # fmt: skip

from .artifacts import Corruption
from .duplicates import DECIMALS, HASH_ARRAY, shared_with_training
from .loaders import BatchItems, ExactDistributedSampler, ResumableDataLoader, StoreDataLoader
from .sampler import SizeBalancedDataLoader, SizeBalancedSampler, edge_counts
from .splits import DEFAULT_TRAIN_FRACTION, load_splits, random_split, save_splits
from .storage import Store, open_or_build


def default_cache_root() -> Path:
    """``$ATOMZOO_CACHE``, else ``$XDG_CACHE_HOME/atomzoo``, else ``~/.cache/atomzoo``."""
    if os.environ.get("ATOMZOO_CACHE"):
        return Path(os.environ["ATOMZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atomzoo"


class StoreDataset(torch.utils.data.Dataset):
    """Molecules ``indices`` of a :class:`Store` as PyG ``Data`` objects (read from the memory map).

    ``dataset[i]`` is molecule ``indices[i]`` as a ``Data`` with ``z`` ``[n]`` long, ``pos`` ``[n, 3]``
    float32 (Angstrom), ``idx`` ``[1]`` long (the store row), ``y`` ``[1, T]`` float64 (when
    ``label_columns`` is given), every other per-atom array of the store as float32 (``forces``
    ``[n, 3]``) and, for periodic stores, ``cell`` ``[1, 3, 3]`` float32 and ``pbc`` ``[1, 3]`` bool.
    A batched DataLoader gets whole batches: ``__getitems__`` returns :class:`BatchItems` and
    :meth:`collate` reads them from the store in one go.
    """

    #: per-atom array names that PyG would concatenate along another dimension or increment
    #: (``__cat_dim__``/``__inc__``): batches with such arrays are collated molecule by molecule
    _PYG_SPECIAL = ("index", "batch", "face", "adj")

    def __init__(
        self,
        store: Store,
        indices: np.ndarray,
        label_columns: list[int] | None,
        corruption: Corruption | None = None,
    ) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_columns = label_columns
        self._extra_atom_arrays = [n for n in store.atom_arrays() if n not in ("z", "pos")]
        self._periodic = {"cell", "pbc"} <= set(store.molecule_arrays())
        self._stress = "stress" in store.molecule_arrays()  # [M, 3, 3] eV/A^3, NaN where a structure has none
        self.corruption = corruption if corruption is not None and corruption.rate > 0 else None
        self._corrupted: set[int] = self.corruption.select(self.indices) if self.corruption else set()
        self._label_std = None
        if self.corruption and self.corruption.kind == "label_noise" and label_columns is not None:
            labels = np.asarray(store.arrays["labels"][np.sort(self.indices)][:, label_columns])
            self._label_std = labels.std(axis=0)[None]

    def __len__(self) -> int:
        return self.indices.size

    def __getitem__(self, i: int) -> Data:
        m = int(self.indices[i])
        a, b = int(self.store.offsets[m]), int(self.store.offsets[m + 1])
        arrays = self.store.arrays
        data = Data(
            z=torch.from_numpy(arrays["z"][a:b].astype(np.int64)),
            pos=torch.from_numpy(np.array(arrays["pos"][a:b], dtype=np.float32)),
            idx=torch.tensor([m]),
        )
        if self.label_columns is not None:
            data.y = torch.from_numpy(np.array(arrays["labels"][m, self.label_columns], dtype=np.float64))[None]
        for name in self._extra_atom_arrays:
            setattr(data, name, torch.from_numpy(np.array(arrays[name][a:b], dtype=np.float32)))
        if self._periodic:  # [1, 3, 3] and [1, 3]: a batch stacks them to [B, 3, 3] and [B, 3]
            data.cell = torch.from_numpy(np.array(arrays["cell"][m], dtype=np.float32))[None]
            data.pbc = torch.from_numpy(np.array(arrays["pbc"][m], dtype=bool))[None]
        if self._stress:
            data.stress = torch.from_numpy(np.array(arrays["stress"][m], dtype=np.float32))[None]
        if m in self._corrupted:
            data = self.corruption.apply(data, m, self._label_std)
        return data

    def __getitems__(self, positions: list[int]) -> BatchItems:
        """The molecules at dataset ``positions`` (torch's DataLoader passes each batch of sampler
        indices): a sequence of ``Data`` built on access, or one ``Batch`` from :meth:`collate`."""
        return BatchItems(self, positions)

    def collate(self, positions) -> Batch:
        """One PyG ``Batch`` of the molecules at dataset ``positions`` (in that order), read at once.

        Equal to ``Batch.from_data_list([self[p] for p in positions])`` -- same tensors, dtypes and
        attributes (``batch``, ``ptr``, ``num_graphs``, and the slice/increment dictionaries that
        ``get_example``/``to_data_list`` use) -- but the store's concatenated arrays are gathered
        with one vectorised index per array instead of one ``Data`` object per molecule.
        ``N`` atoms, ``B = len(positions)`` molecules: ``pos`` ``[N, 3]`` float32 (Angstrom), ``z``
        ``[N]`` long, ``idx`` ``[B]`` long, ``y`` ``[B, T]`` float64, per-atom arrays ``[N, ...]``
        float32 (``forces`` in the store's force unit), ``cell`` ``[B, 3, 3]`` float32, ``pbc``
        ``[B, 3]`` bool, ``batch`` ``[N]`` long, ``ptr`` ``[B + 1]`` long. Corrupted molecules
        (``corruption``) are built one by one with :meth:`__getitem__` and spliced in.
        """
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size == 0:
            raise ValueError("StoreDataset.collate needs at least one molecule")
        if any(any(word in name for word in self._PYG_SPECIAL) for name in self._extra_atom_arrays):
            return Batch.from_data_list([self[int(p)] for p in positions])
        store, arrays = self.store, self.store.arrays
        molecules = self.indices[positions]
        starts = store.offsets[molecules]
        counts = store.offsets[molecules + 1] - starts
        # store row of every atom of the batch, molecule after molecule
        rows = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        # (name, value, per-atom?) in the key order of a Data from __getitem__
        fields = [
            ("pos", np.asarray(arrays["pos"][rows], dtype=np.float32), True),
            ("z", np.asarray(arrays["z"][rows], dtype=np.int64), True),
            ("idx", molecules, False),
        ]
        if self.label_columns is not None:
            labels = np.asarray(arrays["labels"][molecules], dtype=np.float64)[:, self.label_columns]
            fields.append(("y", labels, False))
        fields += [(name, np.asarray(arrays[name][rows], dtype=np.float32), True) for name in self._extra_atom_arrays]
        if self._periodic:
            fields.append(("cell", np.asarray(arrays["cell"][molecules], dtype=np.float32), False))
            fields.append(("pbc", np.asarray(arrays["pbc"][molecules], dtype=bool), False))
        if self._stress:
            fields.append(("stress", np.asarray(arrays["stress"][molecules], dtype=np.float32), False))
        values = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value, _ in fields}
        sizes = {name: counts if per_atom else np.ones_like(counts) for name, _, per_atom in fields}
        corrupted = [k for k, m in enumerate(molecules.tolist()) if m in self._corrupted] if self._corrupted else []
        if corrupted:
            values, sizes = self._splice(positions, corrupted, values, sizes)

        out = Batch(_base_cls=Data)
        slice_dict, inc_dict = {}, {}
        for name, value in values.items():
            out[name] = value
            slice_dict[name] = _with_leading_zero(sizes[name])
            inc_dict[name] = torch.zeros(positions.size, dtype=torch.long)
        nodes = np.asarray(sizes["pos"], dtype=np.int64)  # (torch.repeat_interleave is ~100x slower here)
        out.batch = torch.from_numpy(np.repeat(np.arange(positions.size, dtype=np.int64), nodes))
        out.ptr = _with_leading_zero(nodes)
        out._num_graphs = int(positions.size)
        out._slice_dict = slice_dict
        out._inc_dict = inc_dict
        if torch.utils.data.get_worker_info() is not None:
            _share_by_dtype(out)
        return out

    def _splice(self, positions, corrupted, values, sizes):
        """Replace the molecules at batch slots ``corrupted`` by their corrupted ``Data`` (:meth:`__getitem__`)."""
        replaced = {k: self[int(positions[k])] for k in corrupted}
        out_values, out_sizes = {}, {}
        for name, value in values.items():
            pieces = list(torch.split(value, sizes[name].tolist()))
            new_sizes = np.array(sizes[name], dtype=np.int64)
            for k, data in replaced.items():
                pieces[k] = data[name]
                new_sizes[k] = data[name].size(0)
            out_values[name], out_sizes[name] = torch.cat(pieces), new_sizes
        return out_values, out_sizes


def _share_by_dtype(batch: Batch) -> None:
    """Move ``batch``'s tensors (attributes, slice and increment vectors) into one shared-memory block per
    dtype, as views. A DataLoader worker sends each storage to the main process separately (a
    shared-memory file each), which for a batch of ~14 small tensors costs far more than reading it;
    with 3-4 storages the transfer is 2-4x faster. Values, dtypes, shapes and contiguity are unchanged."""
    groups: dict[torch.dtype, list] = {}
    for owner in (batch._store, batch._slice_dict, batch._inc_dict):
        for key, value in list(owner.items()):
            if torch.is_tensor(value):
                groups.setdefault(value.dtype, []).append((owner, key, value))
    for dtype, members in groups.items():
        block = torch.empty(sum(v.numel() for _, _, v in members), dtype=dtype).share_memory_()
        start = 0
        for owner, key, value in members:
            view = block[start : start + value.numel()].view(value.shape)
            view.copy_(value)
            owner[key] = view
            start += value.numel()


def _with_leading_zero(sizes) -> torch.Tensor:
    """``[len(sizes) + 1]`` long: 0 followed by the running sum of ``sizes`` (PyG's slice vectors and ``ptr``)."""
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return torch.from_numpy(out)


class AtomsDataModule(L.LightningDataModule):
    """Base DataModule over a memory-mapped molecular store.

    Args:
        targets: label names to put in ``batch.y`` (in this order); ``None`` selects no labels
            (label-free pretraining).
        batch_size: molecules per training batch.
        eval_batch_size: molecules per validation/test batch (default: ``batch_size``).
        num_workers: DataLoader worker processes (they share the memory map).
        num_train, num_val, num_test: split sizes, counts or fractions; ``num_test=None`` = the rest.
            ``num_train=None`` (default): the rest when ``num_test`` is given (the user sized validation
            and test), else 0.8.
        train_size: use only the first ``train_size`` molecules of the training permutation
            (low-data studies); validation and test are unchanged.
        split_seed: seed of the random permutation (independent of ``seed_everything``).
        split_file: ``.npz`` with ``train``/``val``/``test`` index arrays to use instead.
        cache_dir: where processed stores go (default :func:`default_cache_root`).
        pin_memory: pin host memory in the loaders (GPU training).
        corruption: corrupt part of the training split on purpose (noise-robustness studies):
            ``displacement``, ``duplicate_atoms`` or ``label_noise`` (see
            :mod:`atomzoo.datamodules.artifacts`); ``None`` for clean data.
        corruption_rate: fraction of training molecules corrupted.
        corruption_scale: size of the corruption (Angstrom, or label standard deviations).
        corruption_seed: which molecules are corrupted and how.
        allow_unseen_elements: a training run (``fit``) refuses data whose validation or test split
            holds elements absent from the training split (the model has never seen them: their
            predictions are meaningless); ``True`` turns that error into a warning.
        max_atoms: pack batches by size instead of by count: at most this many atoms per batch
            (training and evaluation; ``batch_size`` and ``eval_batch_size`` are then unused). See
            :mod:`atomzoo.datamodules.sampler`.
        max_edges: at most this many edges per batch (at the model backbone's cutoff, counted once
            and cached beside the store); alone or with ``max_atoms``.

    The dataset contract (what every subclass declares; see docs/datasets.md "Adding a dataset"):
    :meth:`store_path`, :meth:`fingerprint`, :meth:`label_names`, :meth:`build_store` (which must call
    :meth:`~atomzoo.datamodules.storage.StoreWriter.describe` with label names, units, atomic
    numbers and the force unit), :meth:`target_info`, and the attributes :attr:`forces` /
    :attr:`force_unit` when the store has per-atom forces. From these the base class hands a model
    everything it takes from the data in one call, :meth:`data_summary`.
    """

    name = "atoms"
    #: read by the CLI (linked to the regression objective's ``forces``): train on per-atom forces
    forces: bool = False
    #: unit of the per-atom ``forces`` array (e.g. ``"eV/A"``); ``None`` when the dataset has none
    force_unit: str | None = None
    #: read by the CLI (linked to the regression objective's ``stress``): train on per-structure stress
    stress: bool = False
    #: unit of the per-structure ``stress`` array (``"eV/A^3"``); ``None`` when the dataset has none
    stress_unit: str | None = None

    def __init__(
        self,
        targets: list[str | int] | str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_train: int | float | None = None,
        num_val: int | float = 0.1,
        num_test: int | float | None = None,
        train_size: int | None = None,
        split_seed: int = 0,
        split_file: str | None = None,
        cache_dir: str | None = None,
        pin_memory: bool = False,
        corruption: str | None = None,
        corruption_rate: float = 0.0,
        corruption_scale: float = 0.5,
        corruption_seed: int = 0,
        allow_unseen_elements: bool = False,
        max_atoms: int | None = None,
        max_edges: int | None = None,
    ) -> None:
        super().__init__()
        self.max_atoms, self.max_edges = max_atoms, max_edges
        self.allow_unseen_elements = bool(allow_unseen_elements)
        self._checked_stages: set[str] = set()
        self._splits_recorded = False  # splits.npz written into the run directory (or there is none)
        self.corruption = (
            Corruption(corruption, corruption_rate, corruption_scale, corruption_seed) if corruption else None
        )
        if isinstance(targets, str):
            targets = [targets]
        self.targets = list(targets) if targets is not None else None
        numbers = [t for t in self.targets or [] if not isinstance(t, str)]
        if numbers:
            try:
                names = ", ".join(self.label_names())
            except (AttributeError, NotImplementedError):  # names known only once the store is read
                names = "see docs/datasets.md"
            raise ValueError(
                f"--data.targets {self.targets}: targets are label names, not column numbers ({numbers} given, "
                f"PyG-style); valid names for {type(self).__name__}: {names}"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.train_size = train_size
        self.split_seed = split_seed
        self.split_file = split_file
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_root()
        self.pin_memory = pin_memory
        self.store: Store | None = None
        self.splits: dict[str, np.ndarray] | None = None

    # ----- what subclasses provide -------------------------------------------------------------
    def store_path(self) -> Path:
        """Directory of the processed store."""
        raise NotImplementedError

    def fingerprint(self) -> dict:
        """JSON-able description of the sources and processing settings; a change rebuilds."""
        raise NotImplementedError

    def build_store(self, path: Path) -> None:
        """Read the raw files and write the store at ``path`` (with :class:`StoreWriter`)."""
        raise NotImplementedError

    def target_info(self, name: str) -> TargetInfo:
        """Metadata of label ``name``."""
        raise NotImplementedError

    def label_names(self) -> list[str]:
        """Names of the store's label columns, in order (valid ``targets``); known before the store is built."""
        raise NotImplementedError

    # ----- Lightning hooks ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        open_or_build(self.store_path(), self.fingerprint(), self.build_store)

    def setup(self, stage: str | None = None) -> None:
        if self.store is None:
            self.store = open_or_build(self.store_path(), self.fingerprint(), self.build_store)
        self.label_columns = self._resolve_targets()
        if self.splits is None:
            self.splits = self._make_splits()
        if not self._splits_recorded:  # retried: a setup before the trainer exists (test_after_fit) cannot save
            self._splits_recorded = self._save_splits_next_to_run()
        if stage is not None and stage not in self._checked_stages:
            self._checked_stages.add(stage)
            self._check_splits(stage)

    def _warn_shared_structures(self, splits: tuple[str, ...]) -> None:
        """Warn with the numbers when structures of ``splits`` also occur in the training split (exact
        duplicates by :func:`~atomzoo.datamodules.duplicates.structure_hashes`; stores built before the
        hash existed are not checked)."""
        if HASH_ARRAY not in self.store.arrays or not splits:
            return
        counts = shared_with_training(self.store.arrays[HASH_ARRAY], {"train": self.splits["train"],
                                                                      **{s: self.splits[s] for s in splits}})
        if not any(counts.values()):
            return
        names = {"val": "validation", "test": "test"}
        listing = " and ".join(f"{counts.get(s, 0)} of {self.splits[s].size} {names.get(s, s)}" for s in splits)
        warnings.warn(
            f"{getattr(self, 'path', None) or type(self).__name__}: {listing} structures are also in the training "
            f"split (exact duplicates: the same elements at the same positions to 1e-{DECIMALS} A); their errors "
            "flatter the metrics: remove the duplicates from the data or give a --data.split_file that keeps them together",
            stacklevel=3,
        )

    def _check_splits(self, stage: str) -> None:
        """Refuse an empty split the stage needs; report elements absent from the training split."""
        needed = {"validate": "val", "test": "test", "predict": "test"}.get(stage)
        if needed and self.splits[needed].size == 0:
            raise ValueError(
                f"{type(self).__name__}: the {needed} split is empty (num_train={self.num_train}, num_val={self.num_val}, "
                f"num_test={self.num_test} of {len(self.store)} molecules) so `{stage}` has nothing to evaluate; "
                "lower --data.num_train / --data.num_val or set --data.num_test"
            )
        self._warn_shared_structures(("val", "test") if stage == "fit" else (needed,) if stage in ("validate", "test") else ())
        train = self.element_presence("train")
        unseen = {}
        for split in ("val", "test") if stage == "fit" else (needed,) if needed else ():
            counts = self.element_presence(split)
            for z in np.flatnonzero((counts > 0) & (train == 0)):
                unseen.setdefault(int(z), {})[split] = int(counts[z])
        if not unseen:
            return
        from ase.data import chemical_symbols

        # a low-data subset (train_size) may miss rare elements by design; the full training split may not
        pool = self.element_presence("train_pool") if self.train_size is not None else train
        missing = [z for z in unseen if pool[z] == 0]
        listing = "; ".join(
            f"{chemical_symbols[z]} (Z={z}): " + ", ".join(f"{n} structures in {s}" for s, n in where.items())
            for z, where in sorted(unseen.items())
        )
        subset = f" (its first train_size={self.train_size})" if self.train_size is not None else ""
        message = (
            f"{type(self).__name__}: elements absent from the training split{subset} "
            f"({int(self.splits['train'].size)} structures): {listing}. The model has never seen them, so its "
            "numbers for these structures are meaningless"
        )
        if stage == "fit" and missing and not self.allow_unseen_elements:
            raise ValueError(
                message + ". Put structures with these elements into the training split (another --data.split_seed or "
                "--data.split_file) or remove them; --data.allow_unseen_elements true only warns"
            )
        warnings.warn(message, stacklevel=2)

    def element_presence(self, split: str) -> np.ndarray:
        """``[MAX_Z + 1]`` int64: number of structures of ``split`` that contain each element
        (``"train_pool"``: the training split before the ``train_size`` cut). Computed once per split."""
        self.setup() if self.splits is None else None
        indices = self._train_pool if split == "train_pool" else self.splits[split]
        cache = self.__dict__.setdefault("_element_presence", {})
        if split in cache and cache[split][0] is indices:  # the same split array: the same answer
            return cache[split][1].copy()
        idx = np.sort(indices)
        out = np.zeros(MAX_Z + 1, dtype=np.int64)
        for chunk in np.array_split(idx, max(1, idx.size // 50_000)):
            counts = self.store.counts[chunk]
            if counts.sum() == 0:
                continue
            starts = self.store.offsets[chunk]
            rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            z = np.asarray(self.store.arrays["z"][rows], dtype=np.int64)
            pairs = np.unique(np.repeat(np.arange(chunk.size), counts) * (MAX_Z + 1) + z)
            out += np.bincount(pairs % (MAX_Z + 1), minlength=MAX_Z + 1)
        cache[split] = (indices, out)
        return out.copy()

    def _resolve_targets(self) -> list[int] | None:
        if self.targets is None:
            return None
        names = list(self.store.meta.get("label_names", []))
        unknown = [t for t in self.targets if t not in names]
        if unknown:
            raise ValueError(
                f"unknown target(s) {unknown} for {type(self).__name__}; valid names: {', '.join(names)} "
                "(set --data.targets)"
            )
        return [names.index(t) for t in self.targets]

    def _make_splits(self) -> dict[str, np.ndarray]:
        total = len(self.store)
        if self.split_file:
            splits = load_splits(self.split_file, total)
        else:
            num_train = self.num_train
            if num_train is None and self.num_test is None:
                num_train = DEFAULT_TRAIN_FRACTION  # (None with num_test given: the rest)
            splits = random_split(total, num_train, self.num_val, self.num_test, self.split_seed)
        return self._apply_train_size(splits)

    def _apply_train_size(self, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keep the first ``train_size`` molecules of the training split (low-data studies)."""
        self._train_pool = splits["train"]
        if self.train_size is not None:
            if not 0 < self.train_size <= splits["train"].size:
                raise ValueError(
                    f"train_size={self.train_size} must be between 1 and the training split's "
                    f"{splits['train'].size} molecules (--data.train_size)"
                )
            splits["train"] = splits["train"][: self.train_size]
        return splits

    def _save_splits_next_to_run(self) -> bool:
        """Write ``splits.npz`` into the run directory; ``False`` while there is no trainer yet (try again)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return False
        if not trainer.loggers:  # no logger: no run directory to write to
            return True
        log_dir = trainer.log_dir  # a collective under DDP (it broadcasts): every rank must ask
        if log_dir and trainer.is_global_zero:
            save_splits(Path(log_dir) / "splits.npz", self.splits)
        return True

    # ----- datasets and loaders -------------------------------------------------------------------
    def dataset(self, split: str) -> StoreDataset:
        if self.store is None or self.splits is None:
            self.setup()
        corruption = self.corruption if split == "train" else None
        return StoreDataset(self.store, self.splits[split], self.label_columns, corruption)

    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self.pin_memory,
        }

    def _batches_done(self) -> int:
        """Training batches of the current epoch already trained on (for mid-epoch resume)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def _size_balanced(self, dataset: StoreDataset, shuffle: bool, seed: int = 0) -> SizeBalancedSampler | None:
        """The :class:`~atomzoo.datamodules.sampler.SizeBalancedSampler` of ``dataset`` when
        ``max_atoms`` or ``max_edges`` is set, else ``None`` (batches of ``batch_size`` structures)."""
        if self.max_atoms is None and self.max_edges is None:
            return None
        edges = None
        if self.max_edges is not None:
            module = getattr(getattr(self, "trainer", None), "lightning_module", None)
            cutoff = getattr(getattr(module, "backbone", None), "cutoff", None)
            if cutoff is None:
                raise ValueError("--data.max_edges counts edges at the model backbone's cutoff, but this run has no "
                                 "model with a backbone; use --data.max_atoms")  # fmt: skip
            edges = edge_counts(self.store, float(cutoff))[dataset.indices]
        atoms = self.store.counts[dataset.indices]
        return SizeBalancedSampler(dataset, atoms, self.max_atoms, edges, self.max_edges, shuffle=shuffle, seed=seed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled with ``seed_everything``'s seed and the epoch; sharded over DDP ranks; resumable."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        dataset = self.dataset("train")
        sampler = self._size_balanced(dataset, shuffle=True, seed=seed)
        if sampler is not None:
            return SizeBalancedDataLoader(dataset, sampler, self._batches_done, **self._loader_options())
        return ResumableDataLoader(
            dataset, self.batch_size, seed=seed, batches_done=self._batches_done, **self._loader_options()
        )

    def _eval_loader(self, split: str, by_size: bool = True) -> DataLoader:
        dataset = self.dataset(split)
        sampler = self._size_balanced(dataset, shuffle=False) if by_size else None
        if sampler is not None:
            return SizeBalancedDataLoader(dataset, sampler, **self._loader_options())
        return StoreDataLoader(
            dataset, batch_size=self.eval_batch_size, sampler=ExactDistributedSampler(dataset), **self._loader_options()
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split in batches of ``eval_batch_size`` (also with ``max_atoms``/``max_edges``: Lightning
        rebuilds a prediction loader around its own batch sampler, which a loader of packed batches has not)."""
        return self._eval_loader("test", by_size=False)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Copy a PyG batch to a CUDA ``device`` with ``non_blocking=True``: from pinned memory
        (``--data.pin_memory true``, configs/trainer/gpu.yaml) the copy then overlaps the host's work
        instead of waiting (Lightning's own transfer is non-blocking only for plain tensors, not for a
        PyG ``Batch``). Anything else goes through Lightning's transfer."""
        if isinstance(batch, Batch) and device.type == "cuda":
            return batch.to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Cast the batch's floating-point tensors (positions, forces, ...) to the model's dtype, so
        ``--trainer.precision 64-true`` runs in float64 end to end (Lightning converts only plain
        tensor collections, not PyG batches). Labels ``y`` stay float64 (large absolute energies)."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        dtype = getattr(module, "dtype", None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point and hasattr(batch, "keys"):
            for key in batch.keys():
                value = batch[key]
                if key != "y" and torch.is_tensor(value) and value.is_floating_point() and value.dtype != dtype:
                    batch[key] = value.to(dtype)
        return batch

    # ----- what the model is handed (data_summary) and the pieces it is computed from ----------
    def targets_info(self) -> list[TargetInfo]:
        """:class:`TargetInfo` of each selected target, in ``batch.y`` column order."""
        return [self.target_info(t) for t in (self.targets or [])]

    @property
    def atomic_numbers(self) -> list[int]:
        """Sorted distinct atomic numbers in the dataset."""
        self.setup() if self.store is None else None
        return sorted(int(z) for z in self.store.meta["atomic_numbers"])

    def training_labels(self) -> np.ndarray:
        """``[n_train, T]`` float64 selected labels of the training split."""
        self.setup() if self.splits is None else None
        return np.asarray(self.store.arrays["labels"][np.sort(self.splits["train"])][:, self.label_columns])

    def training_element_counts(self, max_z: int = 100) -> np.ndarray:
        """``[n_train, max_z + 1]`` number of atoms of each element per training molecule."""
        self.setup() if self.splits is None else None
        return self._element_counts(np.sort(self.splits["train"]), max_z)

    def _element_counts(self, idx: np.ndarray, max_z: int) -> np.ndarray:
        """``[len(idx), max_z + 1]`` number of atoms of each element of the store's molecules ``idx`` (sorted)."""
        counts = self.store.counts[idx]
        starts = self.store.offsets[idx]
        atom_rows = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        z = np.asarray(self.store.arrays["z"][atom_rows], dtype=np.int64)
        mol = np.repeat(np.arange(idx.size), counts)
        return np.bincount(mol * (max_z + 1) + z, minlength=idx.size * (max_z + 1)).reshape(idx.size, max_z + 1)

    def data_summary(self, request: StatisticsRequest | None = None,
                     neighbour_cutoff: float | None = None) -> DataSummary:  # fmt: skip
        """What a model takes from this data, in one :class:`~atomzoo.nn.statistics.DataSummary`.

        The one hand-off between data and model: every objective calls it once at ``setup`` (after
        Lightning has set this DataModule up for the stage) with its
        :class:`~atomzoo.nn.statistics.StatisticsRequest`, and records / standardises with the answer
        (``docs/datasets.md``, "What a DataModule hands the model").

        Args:
            request: the training statistics to compute (a regression model's targets, pooling, atom
                references, forces); ``None``: metadata only (``statistics`` is then ``None``).
            neighbour_cutoff: also the training split's :meth:`neighbour_statistics` within this cutoff
                (Angstrom), as ``neighbours`` (with ``cutoff_A``); what a backbone's
                ``neighbour_statistics_cutoff()`` asks for (MACE's ``avg_num_neighbors="auto"``).
                ``None``: not computed.

        Returns:
            the dataset's name, the selected targets' :class:`~atomzoo.nn.statistics.TargetInfo`,
            the force unit it trains with, the store's unit record, the raw training labels' mean and
            std, the elements of the training split and of all splits, and the statistics asked for
            (:func:`~atomzoo.nn.statistics.compute_target_statistics`; with ``forces``, the training
            forces' RMS and unit), the neighbour statistics when ``neighbour_cutoff`` is given.

        Raises:
            ValueError: statistics asked of data that selects no targets, or for targets that
                differ from the data's; a bad pooling name; ``forces=True`` on a dataset without
                per-atom forces.
        """
        self.setup() if self.splits is None else None
        infos = self.targets_info()
        labels = np.asarray(self.training_labels(), dtype=np.float64) if infos else np.zeros((0, 0))
        label_stats = {}
        for k, info in enumerate(infos):
            column = labels[:, k] if labels.size else np.zeros(0)
            label_stats[info.name] = (float(column.mean()), float(column.std())) if column.size else (np.nan, np.nan)
        train = self.element_presence("train")
        present = train + self.element_presence("val") + self.element_presence("test")
        return DataSummary(
            dataset=type(self).__name__,
            targets=tuple(infos),
            force_unit=self.force_unit if self.forces else None,
            data_units=dict(self.store.meta.get("units") or {"positions": "A"}),
            label_stats=label_stats,
            elements=tuple(int(z) for z in np.flatnonzero(train)),
            data_elements=tuple(int(z) for z in np.flatnonzero(present)),
            statistics=None if request is None else self._target_statistics(request, labels),
            training_range=self.training_range(),
            neighbours=None if neighbour_cutoff is None else {
                "cutoff_A": float(neighbour_cutoff), **self.neighbour_statistics(float(neighbour_cutoff))},
        )

    def training_range(self) -> dict | None:
        """The training split's shortest distance per element pair within
        :data:`~atomzoo.nn.training_range.RADIUS` (periodic images included), as
        :meth:`~atomzoo.nn.training_range.TrainingRange.to_record`; ``None`` for an empty split.
        Computed once per split (read from the store in chunks of about
        :data:`~atomzoo.nn.training_range.CHUNK_ATOMS` atoms)."""
        from atomzoo.nn.training_range import CHUNK_ATOMS, TrainingRange

        self.setup() if self.splits is None else None
        indices = self.splits["train"]
        cache = self.__dict__.get("_training_range")
        if cache is not None and cache[0] is indices:
            return cache[1]
        idx = np.sort(indices)
        if idx.size == 0:
            return None
        store = self.store
        periodic = {"cell", "pbc"} <= set(store.molecule_arrays())
        ends = np.cumsum(store.counts[idx])
        pieces = np.split(idx, np.searchsorted(ends, np.arange(CHUNK_ATOMS, int(ends[-1]), CHUNK_ATOMS)))

        def chunks():
            for chunk in (c for c in pieces if c.size):
                counts = store.counts[chunk]
                rows = np.repeat(store.offsets[chunk] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
                batch = torch.repeat_interleave(torch.arange(chunk.size), torch.from_numpy(counts.astype(np.int64)))
                z = torch.from_numpy(np.asarray(store.arrays["z"][rows], dtype=np.int64))
                pos = torch.from_numpy(np.asarray(store.arrays["pos"][rows], dtype=np.float64))
                cell = torch.from_numpy(np.asarray(store.arrays["cell"][chunk], dtype=np.float64)) if periodic else None
                pbc = torch.from_numpy(np.asarray(store.arrays["pbc"][chunk], dtype=bool)) if periodic else None
                yield z, pos, batch, cell, pbc

        record = TrainingRange.of_structures(chunks()).to_record()
        self.__dict__["_training_range"] = (indices, record)
        return record

    def training_statistics(self, request: StatisticsRequest, chunk: int = 50_000) -> StreamingTargetStatistics:
        """The training split's label statistics and least-squares atom references, in one pass over the
        memory-mapped store, ``chunk`` molecules at a time (bounded memory: no ``[n_train, 101]`` element
        count matrix; :class:`~atomzoo.nn.statistics.StreamingTargetStatistics`), and a second pass
        when ``request.fit_atomref`` fits references for sum-pooled targets without a dataset table.
        ``.result()`` is what :func:`~atomzoo.nn.statistics.compute_target_statistics` gives on the
        whole split at once."""
        self.setup() if self.splits is None else None
        accumulator = StreamingTargetStatistics(self.targets_info(), request.pooling, request.atomref, MAX_Z)
        idx = np.sort(self.splits["train"])

        def stream(acc: StreamingTargetStatistics) -> StreamingTargetStatistics:
            for start in range(0, idx.size, chunk):
                rows = idx[start : start + chunk]
                labels = np.asarray(self.store.arrays["labels"][rows], dtype=np.float64)[:, self.label_columns]
                acc.update(labels, self._element_counts(rows, MAX_Z))
            return acc

        accumulator = stream(accumulator)
        if request.atomref and request.fit_atomref and accumulator.fittable():  # a second pass with fitted E0s
            accumulator = stream(accumulator.refitted())
        return accumulator

    def neighbour_statistics(self, cutoff: float) -> dict[str, float]:
        """Neighbours within ``cutoff`` Angstrom in the training split, from the per-structure edge counts
        (:func:`~atomzoo.datamodules.sampler.edge_counts`: computed once in chunks and cached beside
        the store): ``mean_neighbours`` per atom (MACE's ``avg_num_neighbors``), ``mean_edges`` and
        ``max_edges`` per structure."""
        self.setup() if self.splits is None else None
        idx = self.splits["train"]
        edges, atoms = edge_counts(self.store, cutoff)[idx], self.store.counts[idx]
        return {"mean_neighbours": float(edges.sum() / max(int(atoms.sum()), 1)),
                "mean_edges": float(edges.mean()) if edges.size else 0.0, "max_edges": float(edges.max(initial=0))}

    def _target_statistics(self, request: StatisticsRequest, labels: np.ndarray) -> TargetStatistics:
        """The :class:`~atomzoo.nn.statistics.TargetStatistics` of ``request`` (``labels``: the training labels)."""
        if not self.targets:
            raise ValueError(f"{type(self).__name__} selects no targets: set --data.targets for a regression model")
        if request.targets is not None and list(request.targets) != list(self.targets):
            raise ValueError(
                f"model targets {list(request.targets)} differ from the data's targets {self.targets}; "
                "set them with --data.targets"
            )
        stats = self.training_statistics(request).result()
        if request.stress:
            if "stress" not in self.store.molecule_arrays():
                raise ValueError(
                    f"stress=True but {type(self).__name__} has no per-structure 'stress' array; "
                    "read one with --data.init_args.stress_key or set --model.init_args.stress false"
                )
            stress = np.asarray(self.store.arrays["stress"][np.sort(self.splits["train"])], dtype=np.float64)
            stress = stress[np.isfinite(stress).reshape(len(stress), -1).all(axis=1)]
            rms = float(np.sqrt((stress**2).mean())) if stress.size else 1.0
            stats = dataclasses.replace(stats, stress_rms=rms if rms > 0 else 1.0,
                                        stress_unit=getattr(self, "stress_unit", None) or "eV/A^3")  # fmt: skip
        if not request.forces:
            return stats
        if "forces" not in self.store.atom_arrays():
            raise ValueError(
                f"forces=True but {type(self).__name__} has no per-atom 'forces' array; "
                "use a dataset with forces or set --model.init_args.forces false"
            )
        force_unit = getattr(self, "force_unit", self.store.meta.get("units", {}).get("forces", "eV/A"))
        return dataclasses.replace(stats, force_rms=self._training_force_rms(), force_unit=force_unit)

    def _training_force_rms(self) -> float:
        """Root mean square of the training split's force components (in the data's force unit)."""
        store = self.store
        idx = np.sort(self.splits["train"])
        total, count = 0.0, 0
        for chunk in np.array_split(idx, max(1, idx.size // 10_000)):
            rows = np.concatenate([np.arange(store.offsets[i], store.offsets[i + 1]) for i in chunk])
            f = np.asarray(store.arrays["forces"][rows], dtype=np.float64)
            total, count = total + float((f * f).sum()), count + f.size
        rms = (total / count) ** 0.5 if count else 1.0
        return rms if rms > 0 else 1.0
