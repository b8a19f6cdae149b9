"""Where the time of one training step goes: graph, radial basis, dense layers, gathers, scatters, optimizer.

Profiles training steps of one backbone (``benchmarks/backbone_speed.py``'s step: backbone + energy
readout, MSE, backward, Adam; optionally forces by autograd) with ``torch.profiler`` and sums the self
CPU time of every operator into

* phase: ``graph`` (the neighbour list, :func:`atomzoo.nn.graph.build_graph`), ``forward`` (the rest of
  the forward pass and the loss), ``backward``, ``optimizer`` (``zero_grad`` + Adam step);
* kind: ``dense`` (matrix products), ``gather`` (``index_select``, ``index``, ``gather``), ``scatter``
  (``index_add_``, ``scatter_add_``, index puts), ``elementwise`` (products, sums, activations, radial
  functions), ``memory`` (copies, fills, concatenation), ``compiled`` (inductor's fused kernels, whose
  content is not split further), ``other``.

    python benchmarks/step_profile.py --backbone schnet --steps 3 --output benchmarks/results/speed/profile_schnet.md

Run with one thread (``--threads 1``, the default) so that CPU time is compute time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

KINDS = {
    "dense": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "gather": ("aten::index_select", "aten::index", "aten::gather", "aten::embedding"),
    "scatter": ("aten::index_add_", "aten::scatter_add_", "aten::scatter_add", "aten::index_put_",
                "aten::_index_put_impl_", "aten::scatter_reduce", "aten::index_add", "aten::embedding_dense_backward"),
    "memory": ("aten::copy_", "aten::fill_", "aten::zero_", "aten::cat", "aten::clone", "aten::empty",
               "aten::contiguous", "aten::new_zeros", "aten::zeros", "aten::stack"),
}


def kind_of(name: str) -> str:
    for kind, names in KINDS.items():
        if name in names:
            return kind
    if "Compiled" in name or "inductor" in name.lower() or name.startswith("cpp_fused") or name.startswith("triton"):
        return "compiled"
    if name.startswith("aten::"):
        return "elementwise"
    return "other"


def profile(backbone: str, mode: str, steps: int, batch_size: int, threads: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    import backbone_speed as bs
    from atomzoo.nn import graph as graph_module

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    molecules = bs.read_qm9(batch_size * 4, max(1, 130_831 // (batch_size * 4)))
    batches = bs.make_batches(molecules, batch_size, 4, "cpu")
    step, module, prepared = bs.make_step(backbone, "cpu", batches)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    original = graph_module.build_graph

    def labelled(*args, **kwargs):
        with record_function("phase::graph"):
            return original(*args, **kwargs)

    for mod in list(sys.modules.values()):  # every module that imported build_graph by name
        if getattr(mod, "build_graph", None) is original:
            mod.build_graph = labelled

    def run(i: int) -> None:
        with record_function("phase::forward"):
            loss = step(prepared[i % len(prepared)], mode == "forces")
        with record_function("phase::backward"):
            loss.backward()
        with record_function("phase::optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for i in range(2):  # warm-up (compiles, if compiled)
        run(i)
    t0 = time.process_time()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            run(i)
    cpu_per_step = (time.process_time() - t0) / steps

    # attribute every operator event to the innermost phase range that contains it (same thread)
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    phases = sorted((e for e in events if e.name.startswith("phase::")), key=lambda e: e.time_range.start)
    table: dict[tuple[str, str], float] = collections.defaultdict(float)
    backward_names = ("autograd::engine", "Backward")
    for e in events:
        if e.name.startswith("phase::") or e.name.startswith("autograd::engine::evaluate_function"):
            continue
        self_us = e.self_cpu_time_total
        if self_us <= 0:
            continue
        inside = [p for p in phases if p.time_range.start <= e.time_range.start and e.time_range.end <= p.time_range.end]
        phase = min(inside, key=lambda p: p.time_range.end - p.time_range.start).name[7:] if inside else "other"
        if phase == "forward" and any(b in e.name for b in backward_names):
            phase = "backward"  # autograd.grad for forces runs inside the forward range
        table[(phase, kind_of(e.name))] += self_us / 1e6 / steps
    total = sum(table.values())
    return {
        "backbone": backbone,
        "mode": mode,
        "batch_size": batch_size,
        "threads": threads,
        "steps": steps,
        "cpu_s_per_step": cpu_per_step,
        "profiled_s_per_step": total,
        "load_average": os.getloadavg(),
        "by_phase_and_kind": {f"{p}/{k}": v for (p, k), v in sorted(table.items())},
        "top_ops": [
            (a.key, a.self_cpu_time_total / 1e6 / steps)
            for a in sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:12]
        ],
    }


def markdown(result: dict) -> str:
    split = collections.defaultdict(dict)
    for key, value in result["by_phase_and_kind"].items():
        phase, kind = key.split("/")
        split[phase][kind] = value
    kinds = ["dense", "gather", "scatter", "elementwise", "memory", "compiled", "other"]
    total = result["profiled_s_per_step"]
    # the profiler's durations are wall-clock: on a loaded machine every operator is stretched alike,
    # so the table shows each share of the step's CPU time (process time, free of waiting)
    scale = result["cpu_s_per_step"] / total
    lines = [
        f"{result['backbone']}, {result['mode']}, batch {result['batch_size']}, {result['threads']} thread(s): "
        f"{result['cpu_s_per_step']:.3f} CPU s/step (operators' wall-clock sum {total:.3f} s), load average "
        + ", ".join(f"{x:.1f}" for x in result["load_average"]) + "; seconds below are shares of the CPU time",
        "",
        "| phase | " + " | ".join(kinds) + " | total | share |",
        "| --- | " + " | ".join("---:" for _ in kinds) + " | ---: | ---: |",
    ]
    for phase in ("graph", "forward", "backward", "optimizer", "other"):
        if phase not in split:
            continue
        row = {k: v * scale for k, v in split[phase].items()}
        s = sum(row.values())
        lines.append(f"| {phase} | " + " | ".join(f"{row.get(k, 0.0):.3f}" for k in kinds) + f" | {s:.3f} | "
                     f"{100 * s / result['cpu_s_per_step']:.0f}% |")
    lines += ["", "Top operators (share of the CPU time per step, s): "
              + ", ".join(f"`{n}` {t * scale:.3f}" for n, t in result["top_ops"][:8])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="schnet", help="a name of benchmarks/backbone_speed.py (e.g. painn+compile)")
    parser.add_argument("--mode", default="energy", choices=["energy", "forces"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help=".md or .json")
    args = parser.parse_args(argv)
    result = profile(args.backbone, args.mode, args.steps, args.batch_size, args.threads)
    text = markdown(result)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n" if out.suffix == ".json" else text)
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
