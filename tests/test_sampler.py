"""Batches packed by size (``--data.max_atoms`` / ``--data.max_edges``): budgets, DDP counts, exact
evaluation, determinism, mid-epoch resume (atomzoo.datamodules.sampler)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atomzoo.datamodules import QM9DataModule
from atomzoo.datamodules.sampler import SizeBalancedDataLoader, SizeBalancedSampler, edge_counts, pack
from atomzoo.nn.graph import build_graph

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
SIZES = np.concatenate([RNG.integers(3, 30, 500), RNG.integers(100, 300, 20)])  # QM9-like plus large outliers
RNG.shuffle(SIZES)


def sampler(replicas: int, rank: int, shuffle: bool, max_atoms=400, seed=0, sizes=SIZES,
            **kwargs) -> SizeBalancedSampler:
    s = SizeBalancedSampler(range(len(sizes)), sizes, max_atoms, shuffle=shuffle, seed=seed, **kwargs)
    s.num_replicas, s.rank = replicas, rank  # what DDP's process group would give
    return s


def test_pack_respects_both_budgets_and_keeps_every_structure_once():
    edges = SIZES * 12
    order = RNG.permutation(SIZES.size)
    batches = pack(SIZES, order, 400, edges, 3000)
    assert np.array_equal(np.concatenate(batches), order)  # consecutive slices of the order
    for batch in batches:
        atoms, bonds = SIZES[batch].sum(), edges[batch].sum()
        assert (atoms <= 400 and bonds <= 3000) or len(batch) == 1
        # greedy: the next structure would not have fitted
    for batch, following in zip(batches[:-1], batches[1:]):
        nxt = following[0]
        assert SIZES[batch].sum() + SIZES[nxt] > 400 or edges[batch].sum() + edges[nxt] > 3000
    assert [len(b) for b in pack(np.array([5, 50, 5]), np.arange(3), 10)] == [1, 1, 1]  # too large: alone


def test_training_ranks_get_equal_counts_and_cover_the_epoch():
    for replicas in (1, 2, 3, 4):
        ranks = [sampler(replicas, r, shuffle=True) for r in range(replicas)]
        lists = [list(s) for s in ranks]
        assert len({len(b) for b in lists}) == 1, [len(b) for b in lists]
        assert all(len(s) == len(b) for s, b in zip(ranks, lists))
        seen = np.concatenate([np.concatenate(b) for b in lists])
        assert set(seen.tolist()) == set(range(SIZES.size))  # every structure, some repeated to even out
        for batch in (b for rank in lists for b in rank):
            assert SIZES[batch].sum() <= 400 or len(batch) == 1


def test_training_order_is_seeded_and_changes_with_the_epoch():
    a, b, c = sampler(2, 0, True), sampler(2, 0, True), sampler(2, 0, True, seed=1)
    assert [x for x in a] == [x for x in b]
    assert list(a) != list(c)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_evaluation_is_exact_with_equal_counts():
    for replicas in (1, 2, 3, 7):
        ranks = [list(sampler(replicas, r, shuffle=False)) for r in range(replicas)]
        assert len({len(b) for b in ranks}) == 1  # split, never repeated
        seen = sorted(i for rank in ranks for batch in rank for i in batch)
        assert seen == list(range(SIZES.size))  # every structure exactly once


def write_spread(path: Path, count: int = 240, seed: int = 0) -> Path:
    """An extxyz file of ``count`` structures: small molecules of 3-29 atoms and one in twenty of
    100-300 atoms (benchmarks/balanced_batches.py's generator: atoms 1.2 A apart at least)."""
    from ase import Atoms
    from ase.io import write

    spec = importlib.util.spec_from_file_location("balanced_batches", ROOT / "benchmarks" / "balanced_batches.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    small = bench.spread_structures(count - count // 20, seed, 3, 30)
    large = bench.spread_structures(count // 20, seed + 1, 100, 300)
    frames = []
    for k in range(count):
        z, pos = large.pop() if k % 20 == 7 else small.pop()
        atoms = Atoms(numbers=z, positions=pos)
        atoms.info["energy"] = float(-10.0 * len(z) + k % 7)
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """A set-up ASEFileDataModule over :func:`write_spread`'s file, packed to 300 atoms / 3000 edges."""
    from atomzoo.datamodules import ASEFileDataModule

    tmp = tmp_path_factory.mktemp("spread")
    dm = ASEFileDataModule(path=str(write_spread(tmp / "spread.extxyz")), cache_dir=str(tmp / "cache"),
                           targets=["energy"], forces_key=None, max_atoms=300, max_edges=3000)  # fmt: skip
    dm.setup("fit")
    return dm


def test_loader_resumes_mid_epoch_with_the_next_batch(spread):
    dataset = spread.dataset("train")
    atoms = spread.store.counts[dataset.indices]
    done = {"n": 0}
    make = lambda: SizeBalancedDataLoader(dataset, SizeBalancedSampler(dataset, atoms, 300, seed=3),  # noqa: E731
                                          batches_done=lambda: done["n"])  # fmt: skip
    loader = make()
    loader.balanced_sampler.set_epoch(2)
    full = [batch.idx.tolist() for batch in loader]
    assert len(full) >= 6
    done["n"] = 4
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches_done": 4}
    resumed = make()
    resumed.load_state_dict(state)
    assert [batch.idx.tolist() for batch in resumed] == full[4:]
    assert [batch.idx.tolist() for batch in resumed][:4] == full[:4]  # the skip applies to one iteration only
    for batch in full:
        assert spread.store.counts[batch].sum() <= 300 or len(batch) == 1


def test_a_checkpoint_at_an_epochs_last_batch_resumes_with_the_whole_next_epoch(spread):
    """Saved after the last batch of epoch 2 (``batches_done`` = the epoch's batches), restored, the iterator
    made, then Lightning starts epoch 3 (``set_epoch(3)``, Lightning 2.6's order on such a resume): every
    batch of epoch 3, none skipped -- for packed and fixed batches. (It once trained no batch at all in the
    epoch after the checkpoint: the whole epoch was skipped.)"""
    from atomzoo.datamodules.loaders import ResumableDataLoader

    dataset = spread.dataset("train")
    atoms = spread.store.counts[dataset.indices]
    makers = {
        "packed": lambda n: SizeBalancedDataLoader(dataset, SizeBalancedSampler(dataset, atoms, 300, seed=3),
                                                   batches_done=lambda: n),
        "fixed": lambda n: ResumableDataLoader(dataset, 4, seed=3, batches_done=lambda: n),
    }
    for name, make in makers.items():
        loader = make(0)
        loader.sampler.set_epoch(3)
        epoch3 = [batch.idx.tolist() for batch in loader]
        loader.sampler.set_epoch(2)
        batches2 = len(list(loader))
        finished = make(batches2)
        finished.sampler.set_epoch(2)
        saved = finished.state_dict()
        assert saved == {"epoch": 2, "batches_done": batches2} and len(epoch3) >= 6
        resumed = make(0)
        resumed.load_state_dict(saved)
        batches = iter(resumed)  # Lightning makes the iterator from the restored state first (setup_data) ...
        resumed.sampler.set_epoch(3)  # ... then moves to the next epoch, the saved one being finished
        assert [batch.idx.tolist() for batch in batches] == epoch3, name
        # the same state continued in its own epoch skips the batches done: nothing is left of epoch 2
        again = make(0)
        again.load_state_dict(saved)
        again.sampler.set_epoch(2)
        assert [batch.idx.tolist() for batch in again] == [], name


def test_edge_counts_are_the_model_graphs_and_cached(spread):
    store = spread.store
    counts = edge_counts(store, 3.0)
    assert counts.shape == (len(store),)
    assert counts.max() > 1000  # the large structures
    for m in range(len(store)):
        a, b = store.offsets[m], store.offsets[m + 1]
        pos = torch.tensor(np.asarray(store.arrays["pos"][a:b]), dtype=torch.float32)
        graph = build_graph(pos, torch.zeros(b - a, dtype=torch.long), 3.0)
        assert counts[m] == graph.edge_index.size(1)
    cached = list(store.path.parent.glob(f".{store.path.name}.edges-3A-*.npy"))
    assert len(cached) == 1
    np.save(cached[0], counts + 1)  # the cache is what is read the next time
    assert np.array_equal(edge_counts(store, 3.0), counts + 1)
    np.save(cached[0], counts)


def test_datamodule_batches_by_atoms_and_edges(spread):
    dm = spread
    backbone = type("Backbone", (), {"cutoff": 5.0})
    dm.trainer = type("Trainer", (), {"lightning_module": type("Model", (), {"backbone": backbone})})()
    try:
        edges = edge_counts(dm.store, 5.0)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, SizeBalancedSampler)
        seen = []
        for batch in loader:
            big = batch.num_graphs == 1
            assert big or (int(batch.ptr[-1]) <= 300 and int(edges[batch.idx.numpy()].sum()) <= 3000)
            seen += batch.idx.tolist()
        assert sorted(seen) == sorted(dm.splits["train"].tolist())
        val = [i for batch in dm.val_dataloader() for i in batch.idx.tolist()]
        assert val == dm.splits["val"].tolist()  # split order, every structure once
        assert not isinstance(dm.predict_dataloader().sampler, SizeBalancedSampler)  # Lightning rebuilds it
        dm.max_atoms = 0
        with pytest.raises(ValueError, match="--data.max_atoms is 0"):
            dm.train_dataloader()
    finally:
        dm.trainer, dm.max_atoms = None, 300


TINY = ["--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.num_rbf", "8"]
DATA = ["-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"), *TINY,
        "--data.train_size", "64", "--data.num_test", "101", "--data.num_val", "32",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def zoo(cwd: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env["PYTHONPATH"] = str(ROOT / "tests/support")
    result = subprocess.run([sys.executable, "-m", "atomzoo.cli", *args, *DATA], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow  # ~60 s on the loaded 2-core VM: three zoo runs, one of them two DDP processes
def test_ddp_training_and_exact_evaluation_by_size(cache_dir, tmp_path):
    """Two gloo processes train on atom-packed batches (the count is odd for one rank, so one batch is
    repeated; a hang would time out) and test on atom-packed batches: the test MAE and loss equal one
    process's on fixed-size batches (every molecule once, sample-weighted means)."""
    record = tmp_path / "record.yaml"
    record.write_text("trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                      "    init_args: {save_last: true}\n  - class_path: record_batches.RecordBatches\n"
                      f"    init_args: {{path: {tmp_path / 'batches.jsonl'}}}\n")  # fmt: skip
    zoo(tmp_path, "fit", "-c", str(record), "-c", str(ROOT / "configs/trainer/ddp_cpu.yaml"), "--data.max_atoms", "150",
        "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", "fit")
    rows = [json.loads(line) for line in (tmp_path / "batches.jsonl").read_text().splitlines()]  # both ranks'
    dm = QM9DataModule(targets=["homo"], cache_dir=str(cache_dir), num_train=110000, num_val=32, num_test=101,
                       train_size=64)  # the run's split (configs/data/qm9.yaml and DATA)
    dataset = dm.dataset("train")
    two_ranks = SizeBalancedSampler(dataset, dm.store.counts[dataset.indices], 150, seed=0)
    two_ranks.num_replicas = 2
    packed = two_ranks.batches()
    assert len(packed) == 10  # 9 packed + the first repeated: 5 steps on each rank
    assert sorted(map(sorted, (r["idx"] for r in rows))) == sorted(sorted(dataset.indices[b].tolist()) for b in packed)
    assert all(dm.store.counts[r["idx"]].sum() <= 150 for r in rows)
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"][0]["epoch"] == 0  # the loader's position is in the checkpoint
    zoo(tmp_path, "test", "-c", str(ROOT / "configs/trainer/ddp_cpu.yaml"), "--data.max_atoms", "200", "--ckpt_path",
        str(ckpt), "--trainer.logger.init_args.save_dir", "two")
    zoo(tmp_path, "test", "--data.eval_batch_size", "16", "--ckpt_path", str(ckpt),
        "--trainer.logger.init_args.save_dir", "one")
    two, one = (json.loads(next((tmp_path / d).rglob("test_metrics.json")).read_text()) for d in ("two", "one"))
    assert one["test/homo_mae_meV"] > 0
    assert two["test/homo_mae_meV"] == pytest.approx(one["test/homo_mae_meV"], rel=1e-5)
    assert two["test/loss"] == pytest.approx(one["test/loss"], rel=1e-5)
