"""Batches read from the store at once equal the per-molecule path they replaced, field by field.

The DataModules' loaders hand each batch of sampler indices to ``StoreDataset.__getitems__`` and
build the PyG ``Batch`` with one vectorised read (``StoreDataset.collate``). The reference is what
the loaders did before: ``Batch.from_data_list([dataset[i] for i in batch_indices])`` over the same
sampler. Equal means: the same batch class, attribute names in the same order, tensors bitwise
equal with the same dtypes and shapes, ``num_graphs``/``num_nodes``, and PyG's slice and increment
dictionaries (``get_example``, ``to_data_list``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, Subset
from torch_geometric.data import Batch, Data

from atomzoo.datamodules import ASEFileDataModule, QM9DataModule, RMD17DataModule
from atomzoo.datamodules.loaders import BatchCollater, BatchItems, ResumableDataLoader, StoreDataLoader

DATA = Path(__file__).parent / "data"
MD17 = DATA / "md17_fixture"
CU_BULK = DATA / "bad_inputs" / "periodic-cell" / "cu_bulk.extxyz"


def assert_same_batch(new: Batch, old: Batch) -> None:
    assert type(new) is type(old)
    assert list(new._store.keys()) == list(old._store.keys())
    for key in old._store:
        a, b = new[key], old[key]
        assert a.dtype == b.dtype and a.shape == b.shape, (key, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), key
        assert a.is_contiguous(), key
    assert new.num_graphs == old.num_graphs and new.num_nodes == old.num_nodes
    for name in ("_slice_dict", "_inc_dict"):
        a, b = getattr(new, name), getattr(old, name)
        assert list(a) == list(b), name
        for key in b:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (name, key)


def reference_batches(dataset, index_batches) -> list[Batch]:
    return [Batch.from_data_list([dataset[int(i)] for i in indices]) for indices in index_batches]


def index_batches(loader) -> list[list[int]]:
    """The batches of dataset positions the loader's sampler gives (without consuming a resume skip)."""
    sampler = loader.sampler
    skip = getattr(sampler, "skip", 0)
    batches = list(BatchSampler(sampler, loader.batch_size, loader.drop_last))
    if skip:
        sampler.skip = skip
    return batches


def assert_loader_matches(loader, check: slice | None = None, epochs=(0,)) -> int:
    """Every batch of ``loader`` (or those selected by ``check``) equals the per-molecule reference."""
    compared = 0
    for epoch in epochs:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        expected_indices = index_batches(loader)
        got = list(loader)
        assert len(got) == len(expected_indices)
        assert [int(b.num_graphs) for b in got] == [len(i) for i in expected_indices]
        selected = range(len(got))[check] if check is not None else range(len(got))
        for k, old in zip(selected, reference_batches(loader.dataset, [expected_indices[k] for k in selected])):
            assert torch.equal(got[k].idx, torch.as_tensor(loader.dataset.indices[expected_indices[k]]))
            assert_same_batch(got[k], old)
            compared += 1
    return compared


@pytest.fixture(scope="module")
def qm9_128(qm9, cache_dir):
    """QM9 (HOMO, U0) on the session's store, batches of 128 like the benchmark."""
    dm = QM9DataModule(targets=["homo", "u0"], cache_dir=str(cache_dir), batch_size=128, eval_batch_size=100)
    dm.setup("fit")
    return dm


def test_qm9_train_batches_equal_the_per_molecule_path(qm9_128, monkeypatch):
    """Seeded shuffling (``seed_everything`` -> the sampler's seed), two epochs, the uneven last batch."""
    import lightning as L

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored afterwards; seed_everything overwrites it
    L.seed_everything(123)
    loader = qm9_128.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.collate_fn, BatchCollater)
    assert loader.sampler.seed == 123 and loader.sampler.shuffle
    assert len(loader) == 860  # 110,000 training molecules
    # the first 12, some in the middle and the last (96 molecules) batch of epochs 0 and 1
    picks = [*range(12), 400, 401, 859]
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        expected = index_batches(loader)
        got = list(loader)
        assert len(got) == 860 and got[-1].num_graphs == 110_000 - 859 * 128
        every = torch.cat([b.idx for b in got]).sort().values
        assert torch.equal(every, torch.as_tensor(np.sort(qm9_128.splits["train"])))
        for k, old in zip(picks, reference_batches(loader.dataset, [expected[k] for k in picks])):
            assert_same_batch(got[k], old)
    epoch1_first = got[0].idx
    loader.sampler.set_epoch(0)
    assert not torch.equal(next(iter(loader)).idx, epoch1_first)  # reshuffled per epoch
    L.seed_everything(123)
    assert torch.equal(next(iter(qm9_128.train_dataloader())).idx, next(iter(loader)).idx)  # same seed, same order
    L.seed_everything(7)
    assert not torch.equal(next(iter(qm9_128.train_dataloader())).idx, next(iter(loader)).idx)


def test_qm9_evaluation_batches_and_get_example(qm9_128):
    for loader in (qm9_128.val_dataloader(), qm9_128.test_dataloader(), qm9_128.predict_dataloader()):
        assert isinstance(loader, StoreDataLoader)
        assert assert_loader_matches(loader, check=slice(None, None, 9)) > 10
    batch = next(iter(qm9_128.val_dataloader()))
    first = batch.get_example(0)
    expected = qm9_128.dataset("val")[0]
    assert all(torch.equal(first[k], expected[k]) for k in expected.keys())  # noqa: SIM118 (a Data iterates items)
    assert len(batch.to_data_list()) == 100


def test_label_free_float64_and_drop_last(qm9, cache_dir):
    dm = QM9DataModule(targets=None, cache_dir=str(cache_dir), batch_size=37, train_size=500)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert "y" not in next(iter(loader))
    assert assert_loader_matches(loader) == 14  # 500 = 13 * 37 + 19
    # --trainer.precision 64-true: the DataModule casts floating tensors after the transfer, labels stay float64
    labelled = QM9DataModule(targets=["u0"], cache_dir=str(cache_dir), batch_size=37, train_size=500)
    labelled.setup("fit")
    labelled.trainer = SimpleNamespace(lightning_module=SimpleNamespace(dtype=torch.float64))
    new = labelled.on_after_batch_transfer(next(iter(labelled.train_dataloader())), 0)
    first_indices = index_batches(labelled.train_dataloader())[0]
    old = labelled.on_after_batch_transfer(reference_batches(labelled.dataset("train"), [first_indices])[0], 0)
    assert new.pos.dtype == torch.float64 and new.y.dtype == torch.float64 and new.z.dtype == torch.long
    assert_same_batch(new, old)
    # drop_last: the loader's own option, the batching stays in the dataset fetch
    dataset = dm.dataset("train")
    dropping = StoreDataLoader(
        dataset, batch_size=37, sampler=DistributedSampler(dataset, 1, 0, seed=5), drop_last=True
    )
    assert assert_loader_matches(dropping) == 13 and len(dropping) == 13


@pytest.mark.parametrize("kind", ["displacement", "duplicate_atoms", "label_noise"])
def test_corrupted_training_molecules_are_spliced_in(qm9, cache_dir, kind):
    dm = QM9DataModule(targets=["homo", "u0"], cache_dir=str(cache_dir), batch_size=64, train_size=640,
                       corruption=kind, corruption_rate=0.3, corruption_seed=4)  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert assert_loader_matches(loader) == 10
    if kind == "duplicate_atoms":  # the batch really holds the extra atoms
        batch = next(iter(loader))
        store_atoms = int(np.diff(dm.store.offsets)[batch.idx.numpy()].sum())
        assert batch.num_nodes > store_atoms


def test_rmd17_forces_every_split_and_corruption(tmp_path):
    dm = RMD17DataModule(root=str(MD17), molecule="ethanol", cache_dir=str(tmp_path), num_train=300, num_val=50,
                         batch_size=32, eval_batch_size=45)  # fmt: skip
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch.forces.shape == batch.pos.shape and batch.forces.dtype == torch.float32
        assert_loader_matches(loader)
    corrupted = RMD17DataModule(root=str(MD17), molecule="ethanol", cache_dir=str(tmp_path), num_train=300, num_val=50,
                                batch_size=32, corruption="duplicate_atoms", corruption_rate=0.5)  # fmt: skip
    corrupted.setup("fit")
    assert assert_loader_matches(corrupted.train_dataloader()) == 10


def test_periodic_ase_file_cell_pbc_forces_and_predict(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    crystal = read(CU_BULK, index=0)
    rng = np.random.default_rng(0)
    frames = []
    for k in range(24):
        atoms = crystal.copy()
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.pbc = [[True] * 3, [True, True, False], [False] * 3][k % 3]
        if k % 2:
            atoms = atoms.repeat((2, 1, 1))  # 8 atoms: molecules of different sizes
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3)))
        frames.append(atoms)
    write(tmp_path / "cu.extxyz", frames)
    dm = ASEFileDataModule(path=str(tmp_path / "cu.extxyz"), cache_dir=str(tmp_path / "cache"), targets=["energy"],
                           num_train=14, num_val=5, batch_size=4, eval_batch_size=3)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.cell.shape == (4, 3, 3) and batch.pbc.shape == (4, 3) and batch.pbc.dtype == torch.bool
    assert batch.forces.shape == batch.pos.shape
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert_loader_matches(loader)
    # the whole-file predict loader reads batches from the store too, equal to PyG's collation
    predict = dm.predict_dataloader()
    assert isinstance(predict.collate_fn, BatchCollater)
    assert assert_loader_matches(predict) == 8


def test_workers_and_persistent_workers(qm9, cache_dir):
    dm = QM9DataModule(targets=["homo"], cache_dir=str(cache_dir), batch_size=50, train_size=600, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    serial = QM9DataModule(targets=["homo"], cache_dir=str(cache_dir), batch_size=50, train_size=600)
    serial.setup("fit")
    reference = serial.train_dataloader()
    for epoch in (0, 1, 0):  # the same workers serve every epoch
        loader.sampler.set_epoch(epoch)
        reference.sampler.set_epoch(epoch)
        got, expected = list(loader), list(reference)
        assert len(got) == len(expected) == 12
        for a, b in zip(got, expected):
            assert_same_batch(a, b)
    assert assert_loader_matches(loader, epochs=(1,)) == 12
    batch = got[0]  # from a worker: one shared-memory block per dtype, the tensors are views of it
    assert batch.z.untyped_storage().data_ptr() == batch.batch.untyped_storage().data_ptr()
    assert batch.z.data_ptr() != batch.batch.data_ptr() and batch.z.is_shared()


def test_lightning_injected_distributed_sampler_and_predict_wrapper(qm9, cache_dir):
    """What Lightning does to a loader whose sampler it replaces (``use_distributed_sampler`` under DDP)
    or whose batch sampler it wraps (``predict``): the loader is re-created with the new sampler and
    still reads each batch at once, equal to the per-molecule path."""
    from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    dm = QM9DataModule(targets=["homo"], cache_dir=str(cache_dir), eval_batch_size=33, train_size=400)
    dm.setup("fit")
    loader = dm.val_dataloader()
    dataset = loader.dataset
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=11)
        injected = _update_dataloader(loader, sampler)
        assert type(injected) is StoreDataLoader and injected.sampler is sampler
        assert isinstance(injected.collate_fn, BatchCollater)
        assert assert_loader_matches(injected, check=slice(None, None, 5)) == 31  # 10,000 / 2 ranks: 152 batches of 33
        shards.append(torch.cat([b.idx for b in injected]))
    assert torch.equal(torch.cat(shards).unique(), torch.as_tensor(np.unique(dm.splits["val"])))
    wrapped = _update_dataloader(loader, loader.sampler, mode=RunningStage.PREDICTING)
    assert isinstance(wrapped.batch_sampler, _IndexBatchSamplerWrapper)
    assert isinstance(wrapped.collate_fn, BatchCollater)
    batches = [b for _, b in zip(range(3), wrapped)]
    expected = reference_batches(dataset, wrapped.batch_sampler.seen_batch_indices)
    for a, b in zip(batches, expected):
        assert_same_batch(a, b)


def test_resume_mid_epoch_continues_with_the_next_batch(qm9, cache_dir):
    dm = QM9DataModule(targets=["homo"], cache_dir=str(cache_dir), batch_size=40, train_size=400)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    whole = list(loader)
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 2, "batches_done": 3})
    rest = list(resumed)
    assert len(rest) == 7
    for a, b in zip(rest, whole[3:]):
        assert_same_batch(a, b)
    assert len(list(resumed)) == 10  # the skip applies once


def test_getitems_is_a_sequence_of_data_objects(qm9_128):
    """torch's contract for ``__getitems__`` (a list of samples) holds for other users of the dataset."""
    from torch_geometric.loader import DataLoader

    dataset = qm9_128.dataset("val")
    items = dataset.__getitems__([5, 2, 9])
    assert isinstance(items, BatchItems) and len(items) == 3
    assert isinstance(items[0], Data) and torch.equal(items[1].pos, dataset[2].pos)
    assert [int(d.idx) for d in items[1:]] == [int(dataset.indices[2]), int(dataset.indices[9])]
    assert_same_batch(items.collate(), Batch.from_data_list(list(items)))
    assert_same_batch(dataset.collate(np.array([-1])), Batch.from_data_list([dataset[-1]]))
    with pytest.raises(IndexError):
        dataset.collate([len(dataset)])
    plain = DataLoader(dataset, batch_size=16)  # PyG's own collate function
    assert_same_batch(next(iter(plain)), reference_batches(dataset, [range(16)])[0])
    subset = DataLoader(Subset(dataset, [7, 3, 1]), batch_size=3)
    assert_same_batch(next(iter(subset)), reference_batches(dataset, [[7, 3, 1]])[0])

    def shuffled(collate_fn):  # a torch DataLoader, seeded (as tests/equivalence/et_lockstep_training.py builds one)
        generator = torch.Generator().manual_seed(3)
        return torch.utils.data.DataLoader(
            dataset, batch_size=16, shuffle=True, generator=generator, collate_fn=collate_fn
        )

    order = next(iter(shuffled(lambda items: list(items.positions))))
    collated = next(iter(shuffled(qm9_128.val_dataloader().collate_fn)))
    assert_same_batch(collated, reference_batches(dataset, [order])[0])
    follow = StoreDataLoader(dataset, batch_size=8, follow_batch=["z"])  # PyG options collate per molecule
    assert torch.equal(next(iter(follow)).z_batch, next(iter(follow)).batch)
