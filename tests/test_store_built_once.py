"""Of several processes that find no store, exactly one builds it; the others wait and open it
(``open_or_build``'s lock; issue 31, item 1). ``test_store_concurrency.py`` checks that every process
succeeds with the same store; this counts the builds (issue 31: without the lock every process built
its own copy, and all still succeeded)."""

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from atomzoo.datamodules.storage import StoreWriter, open_or_build

FINGERPRINT = {"source": "test_store_built_once", "v": 1}


def _build(path: Path, log: str) -> None:
    with open(log, "a") as handle:  # one line per build, appended by whichever process builds
        handle.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # a build that takes a while: the other processes arrive while it runs
    with StoreWriter(path, FINGERPRINT) as writer:
        writer.append(atoms={"z": np.array([1, 1], np.uint8), "pos": np.zeros((2, 3), np.float32)},
                      counts=np.array([2]), molecules={"labels": np.array([[1.0]])})  # fmt: skip
        writer.describe(label_names=["x"], label_units=[""], atomic_numbers=[1])


def _open(path: str, log: str, barrier, queue) -> None:
    try:
        barrier.wait(timeout=60)
        store = open_or_build(path, FINGERPRINT, lambda p: _build(p, log))
        queue.put(("ok", len(store)))
    except BaseException as err:  # noqa: BLE001 -- reported to the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def test_one_process_builds_and_the_others_open_its_store(tmp_path):
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    for trial in range(3):
        log = tmp_path / f"builds{trial}.txt"
        barrier, queue = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(tmp_path / f"store{trial}"), str(log), barrier, queue))
                 for _ in range(4)]  # fmt: skip
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == [("ok", 1)] * 4, results
        assert len(log.read_text().split()) == 1, f"trial {trial}: built {len(log.read_text().split())} times"
