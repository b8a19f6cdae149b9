"""Batches packed by size against batches of a fixed number of structures, on a wide size spread.

The data: real QM9 molecules (``qm9pack``, every ``--stride``-th row, 3-29 atoms) mixed with
``--large`` generated structures of 100-300 atoms (:func:`spread_structures`: H/C/N/O at least 1.2 A
apart, at the number density of organic matter), written to an extxyz file and read by
``ASEFileDataModule`` into a store, as a user's data would be. Both runs train the same backbone
(``--backbone``, ``configs/backbones/<name>.yaml``; energy loss, Adam, the training step of
``benchmarks/backbone_speed.py``) for one epoch with the DataModule's own training loader:

* ``fixed``: ``--data.batch_size`` = ``--batch-size`` structures per batch;
* ``atoms``: ``--data.max_atoms`` = ``--batch-size`` x the mean atoms per structure (the same
  mean atoms per batch, so the same work per epoch; :mod:`atomzoo.datamodules.sampler`);
* ``edges``: ``--data.max_edges`` = ``--batch-size`` x the mean edges per structure at the
  backbone's cutoff (the loader the DataModule builds for it, with the edge counts given directly,
  as there is no trainer to take the cutoff from).

Reported per run: steps; step time (loading + training step) as process CPU time -- with one
thread the compute itself, free of waiting for a CPU other processes share -- mean, standard
deviation, coefficient of variation, 95th percentile and maximum; the largest batch in atoms and
edges; throughput (structures and atoms per CPU second and per wall second over the epoch); peak
memory of the epoch (on CPU the resident set size sampled every millisecond minus the RSS before
the epoch; each run in its own subprocess).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/balanced_batches.py --threads 1 \
        --output benchmarks/results/balanced_batches.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))


def spread_structures(count: int, seed: int, low: int = 100, high: int = 300) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` generated structures ``(z [n], positions [n, 3] in Angstrom)`` of ``low``-``high`` atoms:
    H/C/N/O on a jittered 1.3 A grid (no two atoms closer than 1.2 A) in a cube of 11 A^3 per atom."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(low, high))
        side = int((n * 11.0) ** (1 / 3) / 1.3) + 2
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.3
        pos = grid[rng.choice(len(grid), n, replace=False)] + rng.uniform(-0.05, 0.05, (n, 3))
        out.append((rng.choice([1, 6, 7, 8], n), pos))
    return out


def write_data(path: Path, qm9: int, large: int, stride: int, seed: int = 0) -> Path:
    """The mixed set as an extxyz file (random energies: the step's cost does not depend on them)."""
    from ase import Atoms
    from ase.io import write
    from backbone_speed import read_qm9

    rng = np.random.default_rng(seed)
    structures = [(np.array(z), np.array(p)) for z, p in read_qm9(qm9, stride)] + spread_structures(large, seed)
    frames = []
    for k in rng.permutation(len(structures)):
        z, pos = structures[k]
        atoms = Atoms(numbers=z, positions=pos)
        atoms.info["energy"] = float(rng.normal(-10.0 * len(z), 1.0))
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def worker(mode: str, args) -> dict:
    """One epoch of ``mode`` (``fixed`` or ``balanced``) over the data file ``args.data``."""
    import gc

    import torch
    from backbone_speed import PeakRSS, make_step, rss_bytes

    from atomzoo.datamodules import ASEFileDataModule
    from atomzoo.datamodules.sampler import SizeBalancedDataLoader, SizeBalancedSampler, edge_counts

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = dict(path=str(args.data), cache_dir=str(Path(args.data).parent / "cache"), targets=["energy"],
                   forces_key=None, num_val=0.0, num_test=0.0, num_train=1.0)  # fmt: skip
    probe = ASEFileDataModule(**options)
    probe.setup()
    mean_atoms = float(probe.store.counts.mean())
    step, module, _ = make_step(args.backbone, torch.device("cpu"), [])
    edges = edge_counts(probe.store, float(module["backbone"].cutoff))
    if mode == "atoms":
        dm = ASEFileDataModule(**options, max_atoms=int(round(args.batch_size * mean_atoms)))
        budget = f"max_atoms {dm.max_atoms}"
    else:
        dm = ASEFileDataModule(**options, batch_size=args.batch_size)
        budget = f"{args.batch_size} structures"
    dm.setup("fit")

    def make_loader():
        if mode != "edges":
            return dm.train_dataloader()
        dataset = dm.dataset("train")
        max_edges = int(round(args.batch_size * edges.mean()))
        nonlocal budget
        budget = f"max_edges {max_edges}"
        return SizeBalancedDataLoader(dataset, SizeBalancedSampler(dataset, dm.store.counts[dataset.indices],
                                                                   edges=edges[dataset.indices], max_edges=max_edges))

    loader = make_loader()
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def train_step(batch) -> None:
        loss = step(batch, False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _, batch in zip(range(3), loader):  # warm-up (allocator, first calls)
        train_step(batch)
    loader = make_loader()
    gc.collect()
    times, atoms, bonds, structures = [], [], [], []
    base = rss_bytes()
    with PeakRSS() as meter:
        start, cpu_start = time.perf_counter(), time.process_time()
        t = cpu_start
        for batch in loader:
            train_step(batch)
            now = time.process_time()
            times.append(now - t)
            atoms.append(int(batch.num_nodes))
            bonds.append(int(edges[batch.idx.numpy()].sum()))
            structures.append(int(batch.num_graphs))
            t = now
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    times = np.array(times)
    return {
        "mode": mode,
        "backbone": args.backbone,
        "batch": budget,
        "steps": len(times),
        "structures": int(sum(structures)),
        "mean_atoms_per_structure": mean_atoms,
        "step_s_mean": float(times.mean()),
        "step_s_std": float(times.std()),
        "step_cv": float(times.std() / times.mean()),
        "step_s_p95": float(np.percentile(times, 95)),
        "step_s_max": float(times.max()),
        "atoms_per_batch_mean": float(np.mean(atoms)),
        "atoms_per_batch_max": int(max(atoms)),
        "edges_per_batch_mean": float(np.mean(bonds)),
        "edges_per_batch_max": int(max(bonds)),
        "structures_per_cpu_s": float(sum(structures) / cpu),
        "atoms_per_cpu_s": float(sum(atoms) / cpu),
        "structures_per_s": float(sum(structures) / elapsed),
        "peak_memory_mb": (meter.peak - base) / 2**20,
        "threads": torch.get_num_threads(),
    }


def markdown(report: dict) -> str:
    rows = ["| batches | steps | CPU s/step (mean +- std) | CV | p95 | max | largest batch: atoms, edges "
            "| structures per CPU s | atoms per CPU s | structures per wall s | peak memory MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["results"]:
        rows.append(f"| {r['batch']} | {r['steps']} | {r['step_s_mean']:.3f} +- {r['step_s_std']:.3f} "
                    f"| {r['step_cv']:.2f} | {r['step_s_p95']:.3f} | {r['step_s_max']:.3f} "
                    f"| {r['atoms_per_batch_max']}, {r['edges_per_batch_max']} "
                    f"| {r['structures_per_cpu_s']:.1f} | {r['atoms_per_cpu_s']:.0f} | {r['structures_per_s']:.1f} "
                    f"| {r['peak_memory_mb']:.0f} |")  # fmt: skip
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="painn", help="configs/backbones/<name>.yaml (default painn)")
    parser.add_argument("--qm9", type=int, default=1900, help="QM9 molecules (default 1900)")
    parser.add_argument("--large", type=int, default=100, help="generated 100-300-atom structures (default 100)")
    parser.add_argument("--stride", type=int, default=61, help="every stride-th QM9 row (default 61: the whole set)")
    parser.add_argument("--batch-size", type=int, default=32, help="structures per fixed batch (default 32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="JSON report path (a .md table is written beside it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return
    from backbone_speed import machine

    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "spread.extxyz", args.qm9, args.large, args.stride)
        results = []
        for mode in ("fixed", "atoms", "edges"):
            command = [sys.executable, __file__, "--worker", mode, "--data", str(data), "--backbone", args.backbone,
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=False)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not lines:
                raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(results[-1]), flush=True)
    report = {"machine": machine("cpu"), "command": " ".join(["python", "benchmarks/balanced_batches.py",
                                                              *(argv if argv is not None else sys.argv[1:])]),
              "data": {"qm9": args.qm9, "large": args.large, "stride": args.stride}, "results": results}  # fmt: skip
    print(markdown(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
        Path(args.output).with_suffix(".md").write_text(markdown(report) + "\n")


if __name__ == "__main__":
    main()
