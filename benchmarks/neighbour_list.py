"""Neighbour-list cost against structure size: all pairs vs the vesin cell list.

    python benchmarks/neighbour_list.py [--sizes 10 30 100 ...] [--cutoff 5.0] [--out docs/performance/neighbour_list.csv]

For each size N, random atoms at the number density of liquid water's atoms (0.1 per A^3) fill a
cube; each path of :func:`atomzoo.nn.graph.build_graph` (``all_pairs``: a free cluster;
``cell_list``: the same cluster, and the same box made periodic) is timed (best of several calls)
and its peak extra resident memory measured in a fresh process (Linux ``VmHWM`` after resetting
it through ``/proc/self/clear_refs``). All pairs is skipped where its ``N^2`` candidate table would
not fit in a few GB. A second table times a QM9-like batch (128 molecules of 18 atoms), the case
the all-pairs path exists for. Results go to a CSV (one row per size and path) and a plot.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

DENSITY = 0.1  # atoms per A^3 (liquid water: 3 atoms per 29.9 A^3)
ALL_PAIRS_LIMIT = 10_000  # measured: 10k atoms need 5.8 GB of candidate pairs; 20k would need ~23 GB


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def _measure(n: int, method: str, periodic: bool, cutoff: float, repeats: int, queue) -> None:
    torch.set_num_threads(1)
    from atomzoo.nn.graph import build_graph

    side = (n / DENSITY) ** (1 / 3)
    rng = np.random.default_rng(n)
    pos = torch.as_tensor(rng.random((n, 3)) * side, dtype=torch.float32)
    batch = torch.zeros(n, dtype=torch.long)
    cell = torch.eye(3).unsqueeze(0) * side if periodic else None
    pbc = torch.ones(1, 3, dtype=torch.bool) if periodic else None
    build_graph(pos[:10], batch[:10], cutoff, method=method)  # warm up imports
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    before = _vm("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        graph = build_graph(pos, batch, cutoff, cell=cell, pbc=pbc, method=method)
        times.append(time.perf_counter() - start)
    queue.put({"seconds": min(times), "peak_extra_MB": (_vm("VmHWM") - before) / 2**20,
               "edges": int(graph.edge_index.size(1))})


def measure(n: int, method: str, periodic: bool, cutoff: float, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(n, method, periodic, cutoff, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def qm9_like_batch(cutoff: float, repeats: int = 20) -> dict[str, float]:
    from atomzoo.nn.graph import build_graph

    rng = np.random.default_rng(0)
    n, b = 18, 128
    pos = torch.as_tensor(rng.random((n * b, 3)) * 4.0, dtype=torch.float32)
    batch = torch.arange(b).repeat_interleave(n)
    out = {}
    for method in ("all_pairs", "cell_list"):
        build_graph(pos, batch, cutoff, method=method)
        start = time.perf_counter()
        for _ in range(repeats):
            build_graph(pos, batch, cutoff, method=method)
        out[method] = (time.perf_counter() - start) / repeats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[10, 30, 100, 200, 300, 1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/performance/neighbour_list.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"1 thread, cutoff {args.cutoff} A, density {DENSITY} atoms/A^3")
    print(f"{'atoms':>7} {'path':>20} {'seconds':>10} {'peak MB':>9} {'edges':>10}")
    for n in args.sizes:
        for method, periodic in (("all_pairs", False), ("cell_list", False), ("cell_list", True)):
            if method == "all_pairs" and n > ALL_PAIRS_LIMIT:
                continue
            repeats = args.repeats if n <= 30000 else 2
            result = measure(n, method, periodic, args.cutoff, repeats)
            label = method + (" (periodic)" if periodic else "")
            rows.append({"atoms": n, "path": label, **result})
            print(f"{n:>7} {label:>20} {result['seconds']:>10.5f} {result['peak_extra_MB']:>9.1f} {result['edges']:>10}")
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out)
    batch = qm9_like_batch(args.cutoff)
    print(f"QM9-like batch (128 x 18 atoms): all_pairs {batch['all_pairs'] * 1e3:.2f} ms, "
          f"cell_list {batch['cell_list'] * 1e3:.2f} ms")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["path"] for r in rows):
        sub = [r for r in rows if r["path"] == label]
        ax.loglog([r["atoms"] for r in sub], [r["seconds"] for r in sub], "o-", label=label)
    ax.set_xlabel("atoms per structure")
    ax.set_ylabel("seconds per neighbour list")
    ax.set_title(f"cutoff {args.cutoff} A, {DENSITY} atoms/A^3, 1 CPU thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
