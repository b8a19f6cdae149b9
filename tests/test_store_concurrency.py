"""Several processes opening one new file with an empty cache build the store once and all succeed."""

import multiprocessing as mp
import os

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from atomzoo.datamodules import ASEFileDataModule  # imported before forking: the children only build


def _open_store(path: str, cache: str, barrier, queue) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        dm = ASEFileDataModule(path=path, cache_dir=cache, num_train=30, num_val=10)
        barrier.wait(timeout=60)  # start building together
        dm.prepare_data()
        dm.setup("fit")
        store = dm.store
        digest = {name: np.asarray(a).tobytes().hex()[:64] + str(np.asarray(a).sum()) for name, a in store.arrays.items()}
        queue.put(("ok", len(store), sorted(digest.items()), store.offsets.tolist()))
    except BaseException as err:  # noqa: BLE001 -- reported to the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def test_processes_building_one_store_at_once_all_succeed_with_identical_stores(tmp_path):
    rng = np.random.default_rng(0)
    structures = []
    for i in range(400):  # large enough that the builds overlap
        n = int(rng.integers(3, 12))
        a = Atoms(numbers=rng.integers(1, 9, n), positions=rng.normal(size=(n, 3)) * 2)
        a.calc = SinglePointCalculator(a, energy=float(i), forces=rng.normal(size=(n, 3)))
        structures.append(a)
    write(tmp_path / "m.extxyz", structures)
    ctx = mp.get_context("spawn" if os.name != "posix" else "fork")
    processes = 4
    for trial in range(8):
        cache = tmp_path / f"cache{trial}"  # empty cache per trial
        barrier, queue = ctx.Barrier(processes), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(str(tmp_path / "m.extxyz"), str(cache), barrier, queue))
                 for _ in range(processes)]  # fmt: skip
        for p in procs:
            p.start()
        results = [queue.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        errors = [r[1] for r in results if r[0] == "error"]
        assert not errors, f"trial {trial}: {errors}"
        assert all(r[1:] == results[0][1:] for r in results), f"trial {trial}: the processes saw different stores"
        assert results[0][1] == 400
        leftovers = [p.name for p in cache.rglob("*") if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock")]
        assert not leftovers, f"temporary directories or lock files left behind: {leftovers}"
