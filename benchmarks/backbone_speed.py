"""Training-step throughput and peak memory of the zoo's backbones, next to their peers.

One training step = forward (backbone + a small energy readout ``Linear(F, F/2) - ssp - Linear(F/2, 1)``
summed per molecule), MSE loss, backward, Adam step. Two modes:

* ``energy``: loss on the energy only;
* ``forces``: also forces ``-dE/dpos`` by autograd with ``create_graph=True`` and a loss on them
  (double backward), as in force-field training or denoising with conservative heads.

Backbones (``--backbones``, comma separated):

* ``schnet``, ``painn``, ``mace``, ``et``: ours, at the default sizes of ``configs/backbones/*.yaml``;
  ``<name>+compile``: the same compiled (``atomzoo.nn.compile.compile_backbone``, as ``--model.compile
  true``; energy mode only: double backward cannot be compiled). Rows report the graphs compiled in
  the warm-up and in the timed steps (0 = no recompilation across batches of different sizes);
* ``schnetpack_painn``: schnetpack 2.1.1's ``PaiNN`` through the parity benchmark's adapter
  (``benchmarks/parity_adapters.py``), at ``configs/backbones/painn.yaml``'s sizes, on our graph;
* ``pyg_schnet``: PyTorch Geometric's ``SchNet`` at identical hyperparameters (its own readout, which
  has the same shape as ours). torch-cluster is not installed here, so PyG is given our radius graph
  through ``interaction_graph``; both therefore build the same graph with the same code;
* ``mace_torch``: mace-torch's own ``ScaleShiftMACE`` with the same hyperparameters, keeping 1o in
  the last layer like our wrapper (``keep_last_layer_irreps=True``), fed a precomputed neighbour
  list (as mace's data pipeline does). Our wrapper's overhead = our time / its time - 1; it includes
  building the radius graph inside ``forward``;
* ``mace_torch_default``: the same with mace-torch's default scalar-only last layer (what keeping
  vectors in the last layer costs);
* ``torchmd_et``: torchmd-net's equivariant transformer (the SCD paper's backbone), if
  ``import torchmdnet`` works (see docs/backbones.md for how it was installed for the recorded run);
* ``et``: our ET at ``configs/backbones/et.yaml``'s small default; ``et_128x6`` and
  ``torchmd_et_128x6``: ours and torchmd-net's ``TorchMD_ET`` representation at identical
  hyperparameters (``ET_128X6``: the ET paper's MD17 size, 128 features x 6 layers, 32 RBF, 8 heads),
  both with our readout (torchmd-net's own ``EquivariantScalar`` head is not used), so the
  comparison is backbone against backbone.

Molecules: real QM9 geometries from the ``qm9pack`` wheel, every ``--stride``-th row of its three CSV
files, by default spread over the whole data set (GDB-9 is ordered by size, so the first rows alone
are atypically small: 14.3 atoms per molecule for the first 5,000 rows against 18.0 for all of QM9).

Each (backbone, mode) runs in its own subprocess so that peak memory is clean. On a shared machine
whose load drifts, separate runs give noisy ratios; ``--pairs schnet/pyg_schnet,mace/mace_torch``
additionally alternates the steps of two models in one process and reports the median ratio of
their step times, wall-clock and process CPU time (both models see the same load; with
``--threads 1`` the CPU time is the compute time, free of waiting for a busy CPU and of OpenMP
spin-waiting). Memory: on CUDA
``torch.cuda.max_memory_allocated`` during the timed steps minus what was allocated before them; on
CPU the peak resident set size sampled every millisecond during the timed steps minus the RSS before
them (``resource``'s ``ru_maxrss`` would include model construction: mace's CG tables).

Usage::

    python benchmarks/backbone_speed.py --device cpu --steps 5 --output benchmarks/results/cpu.md
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):  # benchmarks/: the peers' adapters (parity_adapters.py)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

ALL = ["schnet", "pyg_schnet", "painn", "schnetpack_painn", "mace", "mace_torch", "mace_torch_default", "torchmd_et", "et", "et_128x6",
       "torchmd_et_128x6"]
MODES = ["energy", "forces"]
SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SCHNET = {"width": 128, "num_filters": 128, "num_interactions": 6, "num_rbf": 50, "cutoff": 10.0}
MACE = {
    "r_max": 5.0,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "max_ell": 3,
    "correlation": 3,
    "num_interactions": 2,
    "hidden_irreps": "128x0e+128x1o",
    "radial_MLP": [64, 64, 64],
    "avg_num_neighbors": 15.6,
    "atomic_numbers": [1, 6, 7, 8, 9],
}
# torchmd-net's equivariant transformer as the SCD paper and torchmd-net's QM9 example use it
TORCHMD_ET = {
    "model": "equivariant-transformer",
    "embedding_dimension": 256,
    "num_layers": 8,
    "num_rbf": 64,
    "rbf_type": "expnorm",
    "trainable_rbf": False,
    "activation": "silu",
    "attn_activation": "silu",
    "neighbor_embedding": True,
    "num_heads": 8,
    "distance_influence": "both",
    "cutoff_lower": 0.0,
    "cutoff_upper": 5.0,
    "max_z": 100,
    "max_num_neighbors": 32,
    "reduce_op": "add",
    "output_model": "Scalar",
    "prior_model": None,
    "derivative": False,
    "atom_filter": -1,
    "precision": 32,
    "equivariance_invariance_group": "O(3)",
    "static_shapes": False,
    "check_errors": True,
    "box_vecs": None,
    "vector_cutoff": False,
    "charge": False,
    "spin": False,
}

# the same network in both codes (ET argument names; TorchMD-NET's in torchmd_128x6_hparams)
ET_128X6 = {"width": 128, "num_interactions": 6, "num_rbf": 32, "num_heads": 8, "cutoff": 5.0, "trainable_rbf": False}


def torchmd_128x6_hparams() -> dict:
    return dict(TORCHMD_ET, embedding_dimension=ET_128X6["width"], num_layers=ET_128X6["num_interactions"],
                num_rbf=ET_128X6["num_rbf"], num_heads=ET_128X6["num_heads"], cutoff_upper=ET_128X6["cutoff"],
                trainable_rbf=ET_128X6["trainable_rbf"])


# ------------------------------------------------------------------------------------------- data
def read_qm9(num_molecules: int, stride: int) -> list[tuple[list[int], list[list[float]]]]:
    """``(z, positions in Angstrom)`` of every ``stride``-th molecule of qm9pack's CSVs."""
    csv.field_size_limit(1 << 24)
    dist = importlib.metadata.distribution("qm9pack")
    out, row_index = [], 0
    for part in (1, 2, 3):
        with open(dist.locate_file(f"qm9pack/data/qm9_part{part}.csv"), newline="") as handle:
            for row in csv.DictReader(handle):
                if row_index % stride == 0:
                    z = [SYMBOLS[s] for s in ast.literal_eval(row["Elements"])]
                    out.append((z, ast.literal_eval(row["XYZ_Ang"])))
                    if len(out) == num_molecules:
                        return out
                row_index += 1
    return out


def make_batches(molecules, batch_size: int, num_batches: int, device):
    import torch
    from torch_geometric.data import Batch, Data

    batches = []
    for b in range(num_batches):
        chunk = molecules[b * batch_size : (b + 1) * batch_size]
        if len(chunk) < batch_size:
            break
        data = [Data(z=torch.tensor(z), pos=torch.tensor(p, dtype=torch.float32)) for z, p in chunk]
        batches.append(Batch.from_data_list(data).to(device))
    return batches


# ------------------------------------------------------------------------------------------- models
def readout(width: int):
    from torch import nn

    from atomzoo.nn.radial import ShiftedSoftplus

    return nn.Sequential(nn.Linear(width, width // 2), ShiftedSoftplus(), nn.Linear(width // 2, 1))


def make_step(name: str, device, batches):
    """``(step(batch, forces) -> None, module, prepared batches)`` for one backbone."""
    import torch
    from torch_geometric.utils import scatter

    from atomzoo.nn.batch import with_positions

    def zoo_step(model, head):
        def step(batch, forces):
            pos = batch.pos.detach().clone().requires_grad_(forces)
            out = model(with_positions(batch, pos))
            energy = scatter(head(out.scalars).squeeze(-1), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="sum")
            loss = energy.square().mean()
            if forces:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
                loss = loss + grad.square().mean()
            return loss

        return step

    if name in ("et_128x6", "torchmd_et_128x6"):
        if name == "et_128x6":
            from atomzoo.backbones import ET

            model = ET(**ET_128X6)
            head = readout(model.width)
            module = torch.nn.ModuleDict({"backbone": model, "head": head}).to(device)
            return zoo_step(model, head), module, batches
        from torchmdnet.models.model import create_model

        rep = create_model(torchmd_128x6_hparams()).representation_model
        head = readout(ET_128X6["width"])
        module = torch.nn.ModuleDict({"backbone": rep, "head": head}).to(device)

        def step(batch, forces):
            pos = batch.pos.detach().clone().requires_grad_(forces)
            x = rep(batch.z, pos, batch.batch)[0]
            energy = scatter(head(x).squeeze(-1), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="sum")
            loss = energy.square().mean()
            if forces:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
                loss = loss + grad.square().mean()
            return loss

        return step, module, batches

    compiled = name.endswith("+compile")
    base = name.removesuffix("+compile")
    if base in ("schnet", "painn", "mace", "et"):
        import yaml

        config = yaml.safe_load((REPO / "configs" / "backbones" / f"{base}.yaml").read_text())
        from atomzoo import backbones

        model = getattr(backbones, config["class_path"].split(".")[-1])(**config["init_args"])
        head = readout(model.width)
        module = torch.nn.ModuleDict({"backbone": model, "head": head}).to(device)
        step = zoo_step(model, head)
        if compiled:
            from atomzoo.nn.compile import compile_backbone

            if not compile_backbone(model, device):
                raise RuntimeError("torch.compile is not available on this platform")

            def compiled_step(batch, forces, eager_step=step):
                if forces:
                    raise RuntimeError("not run: forces training needs double backward, which torch.compile does not support")
                return eager_step(batch, forces)

            step = compiled_step
        return step, module, batches
    if compiled:
        raise ValueError(f"{name}: +compile applies to the zoo's own backbones only")

    if name == "schnetpack_painn":  # the parity benchmark's adapter, at configs/backbones/painn.yaml's sizes
        import yaml

        from parity_adapters import SchnetpackPaiNN

        init = yaml.safe_load((REPO / "configs" / "backbones" / "painn.yaml").read_text())["init_args"]
        model = SchnetpackPaiNN(**{k: init[k] for k in ("width", "num_interactions", "num_rbf", "cutoff")})
        head = readout(model.width)
        module = torch.nn.ModuleDict({"backbone": model, "head": head}).to(device)
        return zoo_step(model, head), module, batches

    if name == "pyg_schnet":
        from torch_geometric.nn.models import SchNet

        from atomzoo.nn.graph import build_graph

        def graph(pos, batch):
            g = build_graph(pos, batch, SCHNET["cutoff"])
            return g.edge_index, g.length

        model = SchNet(
            hidden_channels=SCHNET["width"],
            num_filters=SCHNET["num_filters"],
            num_interactions=SCHNET["num_interactions"],
            num_gaussians=SCHNET["num_rbf"],
            cutoff=SCHNET["cutoff"],
            interaction_graph=graph,
        ).to(device)

        def step(batch, forces):
            pos = batch.pos.detach().clone().requires_grad_(forces)
            energy = model(batch.z, pos, batch.batch).squeeze(-1)
            loss = energy.square().mean()
            if forces:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
                loss = loss + grad.square().mean()
            return loss

        return step, model, batches

    if name in ("mace_torch", "mace_torch_default"):
        import numpy as np

        from atomzoo.backbones.mace import _quiet_torchscript, import_mace
        from atomzoo.nn.graph import build_graph

        modules, o3 = import_mace()
        kw = dict(MACE)
        zs = kw.pop("atomic_numbers")
        with _quiet_torchscript():
            model = modules.ScaleShiftMACE(
                **{k: v for k, v in kw.items() if k != "hidden_irreps"},
                hidden_irreps=o3.Irreps(kw["hidden_irreps"]),
                interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
                interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
                num_elements=len(zs),
                atomic_numbers=zs,
                MLP_irreps=o3.Irreps("16x0e"),
                gate=torch.nn.functional.silu,
                atomic_energies=np.zeros(len(zs)),
                keep_last_layer_irreps=(name == "mace_torch"),
                use_reduced_cg=False,
                atomic_inter_scale=1.0,
                atomic_inter_shift=0.0,
            ).to(device)
        index = torch.full((10,), -1, dtype=torch.long, device=device)
        index[torch.tensor(zs, device=device)] = torch.arange(len(zs), device=device)
        prepared = []
        for batch in batches:  # mace-torch gets its neighbour list from the data pipeline
            g = build_graph(batch.pos, batch.batch, MACE["r_max"])
            e = g.edge_index.size(1)
            prepared.append(
                {
                    "positions": batch.pos,
                    "node_attrs": torch.nn.functional.one_hot(index[batch.z], len(zs)).float(),
                    "edge_index": g.edge_index,
                    "shifts": batch.pos.new_zeros(e, 3),
                    "unit_shifts": batch.pos.new_zeros(e, 3),
                    "cell": batch.pos.new_zeros(3 * batch.num_graphs, 3),
                    "batch": batch.batch,
                    "ptr": batch.ptr,
                }
            )

        def step(data, forces):
            data = dict(data, positions=data["positions"].detach().clone())
            out = model(data, training=True, compute_force=forces)
            loss = out["energy"].square().mean()
            if forces:
                loss = loss + out["forces"].square().mean()
            return loss

        return step, model, prepared

    if name == "torchmd_et":
        from torchmdnet.models.model import create_model

        model = create_model(dict(TORCHMD_ET)).to(device)

        def step(batch, forces):
            pos = batch.pos.detach().clone().requires_grad_(forces)
            energy, _ = model(batch.z, pos, batch.batch)
            loss = energy.square().mean()
            if forces:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
                loss = loss + grad.square().mean()
            return loss

        return step, model, batches

    raise ValueError(f"unknown backbone {name!r}; choose from {ALL}")


# ------------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a background thread (torch ops release the GIL)."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# ------------------------------------------------------------------------------------------- worker
def worker(name: str, mode: str, args) -> dict:
    """Build, warm up, time ``args.steps`` training steps of one backbone in one mode."""
    import gc

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    molecules = read_qm9(args.batch_size * args.num_batches, args.stride)
    batches = make_batches(molecules, args.batch_size, args.num_batches, device)
    t0 = time.perf_counter()
    step, module, batches = make_step(name, device, batches)
    build_s = time.perf_counter() - t0
    from atomzoo.nn.compile import compiled_graphs
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    forces = mode == "forces"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step(i: int) -> None:
        loss = step(batches[i % len(batches)], forces)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_warm = time.perf_counter()
    for i in range(args.warmup):
        train_step(i)
    sync()
    warmup_s = time.perf_counter() - t_warm
    graphs_warmup = compiled_graphs()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.steps):
            train_step(args.warmup + i)
        sync()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        base = rss_bytes()
        with PeakRSS() as meter:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                train_step(args.warmup + i)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak_mb = (meter.peak - base) / 2**20
    atoms = sum(int(b["batch"].numel() if isinstance(b, dict) else b.num_nodes) for b in batches) / len(batches)
    return {
        "backbone": name,
        "mode": mode,
        "steps": args.steps,
        "seconds_per_step": elapsed / args.steps,
        "cpu_seconds_per_step": cpu / args.steps,
        "molecules_per_s": args.batch_size * args.steps / elapsed,
        "peak_step_memory_mb": peak_mb,
        "build_s": build_s,
        "warmup_s": warmup_s,
        "graphs_compiled_in_warmup": graphs_warmup,
        "graphs_compiled_in_timed_steps": compiled_graphs() - graphs_warmup,
        "parameters": sum(p.numel() for p in module.parameters()),
        "atoms_per_batch": atoms,
        "threads": torch.get_num_threads(),
    }


def paired_worker(first: str, second: str, mode: str, args) -> dict:
    """Alternate training steps of two models in one process; median per-step time ratio.

    Robust to machine load that drifts over the run (shared CPUs): both models see the same load.
    """
    import statistics

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    molecules = read_qm9(args.batch_size * args.num_batches, args.stride)
    batches = make_batches(molecules, args.batch_size, args.num_batches, device)
    forces = mode == "forces"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runners = []
    for name in (first, second):
        step, module, prepared = make_step(name, device, batches)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

        def run(i, step=step, optimizer=optimizer, prepared=prepared):
            loss = step(prepared[i % len(prepared)], forces)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        runners.append(run)
    from atomzoo.nn.compile import compiled_graphs

    times, cpu_times = ([], []), ([], [])
    graphs_warmup = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            graphs_warmup = compiled_graphs()
        for k, run in enumerate(runners):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            run(i)
            sync()
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t0)
                cpu_times[k].append(time.process_time() - c0)
    ratios = [a / b for a, b in zip(*times)]
    cpu_ratios = [a / b for a, b in zip(*cpu_times)]
    return {
        "pair": f"{first}/{second}",
        "mode": mode,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "median_time_ratio": statistics.median(ratios),
        "median_cpu_time_ratio": statistics.median(cpu_ratios),
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "seconds_per_step": [statistics.median(t) for t in times],
        "cpu_seconds_per_step": [statistics.median(t) for t in cpu_times],
        "graphs_compiled_in_timed_steps": compiled_graphs() - graphs_warmup,
    }


# ------------------------------------------------------------------------------------------- driver
def machine(device: str) -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_one(name: str, mode: str, args, flag: str = "--worker") -> dict:
    cmd = [sys.executable, __file__, flag, f"{name}:{mode}"] + args.passthrough
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    key = "pair" if flag == "--paired-worker" else "backbone"
    return {key: name, "mode": mode, "error": tail[0][:300]}


def add_ratios(results: list[dict]) -> None:
    by = {(r["backbone"], r["mode"]): r for r in results if "error" not in r}
    for (name, mode), r in by.items():
        if name == "schnet" and ("pyg_schnet", mode) in by:
            r["vs_peer"] = f"{r['molecules_per_s'] / by[('pyg_schnet', mode)]['molecules_per_s']:.2f}x PyG throughput"
        if name.removesuffix("+compile") == "schnet" and ("pyg_schnet", mode) in by and name != "schnet":
            r["vs_peer"] = f"{r['molecules_per_s'] / by[('pyg_schnet', mode)]['molecules_per_s']:.2f}x PyG throughput"
        if name.removesuffix("+compile") == "painn" and ("schnetpack_painn", mode) in by:
            r["vs_peer"] = f"{r['molecules_per_s'] / by[('schnetpack_painn', mode)]['molecules_per_s']:.2f}x schnetpack throughput"
        if name == "mace" and ("mace_torch", mode) in by:
            overhead = r["seconds_per_step"] / by[("mace_torch", mode)]["seconds_per_step"] - 1
            r["vs_peer"] = f"{100 * overhead:+.0f}% time vs bare mace-torch"


def markdown(report: dict) -> str:
    s = report["settings"]
    m = report["machine"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_count']} cores{gpu}), torch {m['torch']}, load average at start {load}.",
        (
            f"Settings: device {s['device']}, batch {s['batch_size']} QM9 molecules, {s['warmup']} warm-up + "
            f"{s['steps']} timed steps, every {s['stride']}th QM9 molecule, Adam, float32."
        ),
        "",
        "| backbone | mode | molecules/s | s/step | CPU s/step | peak step memory (MB) | kB/atom | params | atoms/batch "
        "| compiled graphs (warm-up / timed) | vs peer |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['mode']} | n/a | | | | | | | | {r['error']} |")
            continue
        graphs = (f"{r['graphs_compiled_in_warmup']} / {r['graphs_compiled_in_timed_steps']}"
                  if r.get("graphs_compiled_in_warmup") else "")
        lines.append(
            f"| {r['backbone']} | {r['mode']} | {r['molecules_per_s']:.1f} | {r['seconds_per_step']:.3f} | "
            f"{r.get('cpu_seconds_per_step', float('nan')):.3f} | "
            f"{r['peak_step_memory_mb']:.0f} | {1024 * r['peak_step_memory_mb'] / r['atoms_per_batch']:.0f} | "
            f"{r['parameters']:,} | {r['atoms_per_batch']:.0f} | {graphs} | {r.get('vs_peer', '')} |"
        )
    if report.get("paired"):
        lines += [
            "",
            "Paired (steps of the two models alternate in one process; median of per-step time ratios):",
            "",
            "| pair | mode | threads | median wall-time ratio | median CPU-time ratio | CPU s/step (each) "
            "| speed-up (peer / ours, CPU time) | graphs compiled in timed steps |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for r in report["paired"]:
            if "error" in r:
                lines.append(f"| {r['pair']} | {r['mode']} | n/a | | | | | {r['error']} |")
                continue
            each = " / ".join(f"{t:.3f}" for t in r["cpu_seconds_per_step"])
            lines.append(
                f"| {r['pair']} | {r['mode']} | {r['threads']} | {r['median_time_ratio']:.2f} | "
                f"{r['median_cpu_time_ratio']:.2f} | {each} | {1 / r['median_cpu_time_ratio']:.2f}x | "
                f"{r.get('graphs_compiled_in_timed_steps', '')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per backbone and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-batches", type=int, default=4, help="distinct batches, cycled")
    parser.add_argument("--stride", type=int, default=0, help="take every stride-th QM9 molecule (0: spread over all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--backbones", default="schnet,pyg_schnet,painn,mace,mace_torch,mace_torch_default,torchmd_et")
    parser.add_argument("--modes", default="energy,forces")
    parser.add_argument("--output", default=None, help="write results: .json or .md")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per (backbone, mode) subprocess")
    parser.add_argument(
        "--pairs",
        default="",
        help="comma-separated A/B pairs timed alternately in one process, e.g. schnet/pyg_schnet,mace/mace_torch",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paired-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stride <= 0:  # spread the molecules over all of QM9 (130,831 rows)
        args.stride = max(1, 130_831 // (args.batch_size * args.num_batches))

    if args.worker:
        name, mode = args.worker.split(":")
        print("RESULT " + json.dumps(worker(name, mode, args)), flush=True)
        return
    if args.paired_worker:
        pair, mode = args.paired_worker.split(":")
        first, second = pair.split("/")
        print("RESULT " + json.dumps(paired_worker(first, second, mode, args)), flush=True)
        return

    keep = [
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--num-batches",
        str(args.num_batches),
        "--stride",
        str(args.stride),
        "--threads",
        str(args.threads),
    ]
    args.passthrough = keep
    report = {
        "machine": machine(args.device),
        "settings": {
            k: getattr(args, k) for k in ("device", "batch_size", "steps", "warmup", "num_batches", "stride", "threads")
        },
        "results": [],
    }
    t0 = time.perf_counter()
    for name in filter(None, args.backbones.split(",")):
        for mode in args.modes.split(","):
            result = run_one(name, mode, args)
            report["results"].append(result)
            print(json.dumps(result), flush=True)
    report["paired"] = []
    for pair in filter(None, args.pairs.split(",")):
        for mode in args.modes.split(","):
            result = run_one(pair, mode, args, flag="--paired-worker")
            report["paired"].append(result)
            print(json.dumps(result), flush=True)
    report["total_s"] = time.perf_counter() - t0
    add_ratios(report["results"])
    text = markdown(report)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n" if out.suffix == ".json" else text)


if __name__ == "__main__":
    main()
