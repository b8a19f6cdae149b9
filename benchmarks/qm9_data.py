"""QM9 data pipeline benchmark: first processing, cached load, one full pass over the training set.

    python benchmarks/qm9_data.py [--batch-size 128] [--num-workers 0] [--loader-batches 300]

Builds the store in a fresh temporary cache (so "first processing" is real), then times opening the
cached store and iterating the 110,000-molecule training split through the DataModule's
``train_dataloader()`` (each batch read from the store at once, ``StoreDataset.collate``). Then, on
the same store and sampler, ``--loader-batches`` batches after the first: the DataModule's loader
(``loader_batches_per_s``) and the per-molecule path it replaced, one PyG ``Data`` per molecule and
``Batch.from_data_list`` (``per_molecule_batches_per_s``), so both are measured under the same load.
``load_average`` is ``os.getloadavg()`` (1, 5, 15 min, as ``uptime`` shows) before and after.
Targets (issue 2): processing <= 60 s, cached load <= 5 s, full pass <= 15 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time

import torch
from torch.utils.data import BatchSampler
from torch_geometric.data import Batch

from atomzoo.datamodules import QM9DataModule


def batches_per_second(batches, count: int) -> float:
    """Batches per second over ``count`` batches of the iterable ``batches``, after the first one."""
    batches = iter(batches)
    next(batches)
    start = time.perf_counter()
    done = sum(1 for _ in itertools.islice(batches, count))
    return done / (time.perf_counter() - start)


def per_molecule_batches(loader):
    """What the loaders did before: one ``Data`` per molecule (``dataset[i]``), then PyG's collation."""
    dataset = loader.dataset
    for indices in BatchSampler(loader.sampler, loader.batch_size, loader.drop_last):
        yield Batch.from_data_list([dataset[i] for i in indices])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--loader-batches", type=int, default=300, help="batches timed for the batches/s numbers")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        QM9DataModule(targets=["homo"], cache_dir=cache).prepare_data()
        processing = time.perf_counter() - start

        start = time.perf_counter()
        dm = QM9DataModule(targets=["homo"], cache_dir=cache, batch_size=args.batch_size, num_workers=args.num_workers)
        dm.setup("fit")
        load = time.perf_counter() - start

        start = time.perf_counter()
        molecules = atoms = 0
        for batch in dm.train_dataloader():
            molecules += batch.num_graphs
            atoms += batch.num_nodes
        full_pass = time.perf_counter() - start

        loader = dm.train_dataloader()
        loader_rate = batches_per_second(loader, args.loader_batches)
        per_molecule_rate = batches_per_second(per_molecule_batches(loader), args.loader_batches)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "processing_s": round(processing, 2),
        "cached_load_s": round(load, 4),
        "train_pass_s": round(full_pass, 2),
        "train_molecules": molecules,
        "train_atoms": atoms,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "loader_batches_per_s": round(loader_rate, 1),
        "loader_ms_per_batch": round(1e3 / loader_rate, 3),
        "per_molecule_batches_per_s": round(per_molecule_rate, 1),
        "per_molecule_ms_per_batch": round(1e3 / per_molecule_rate, 3),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
