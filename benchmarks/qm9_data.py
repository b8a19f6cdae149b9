"""QM9 data pipeline benchmark: first processing, cached load, one full pass over the training set.

    python benchmarks/qm9_data.py [--batch-size 128] [--num-workers 0]

Builds the store in a fresh temporary cache (so "first processing" is real), then times opening the
cached store and iterating the 110,000-molecule training split through the DataLoader with PyG
collation. Targets (issue 2): processing <= 60 s, cached load <= 5 s, full pass <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from atomzoo.datamodules import QM9DataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
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
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "processing_s": round(processing, 2),
        "cached_load_s": round(load, 4),
        "train_pass_s": round(full_pass, 2),
        "train_molecules": molecules,
        "train_atoms": atoms,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
