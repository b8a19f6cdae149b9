"""CPU time per pretraining step of a matrix's objectives, measured side by side, and the steps that equal compute needs.

"Equal pretraining compute" rows (a cheaper objective run for more steps, so that its pretraining CPU
time matches a dearer one's) need the objectives' cost per optimiser step on the same data, backbone
and machine. This script runs each chosen objective's pretraining cell of a benchmark matrix on one of its
backbones (``--backbone``, default the matrix's first; the exact ``zoo fit`` command the runner
builds, seed 0) twice, for ``--short`` and ``--long`` steps with
validation off, in a temporary folder, and reads the training CPU time each run's
:class:`atomzoo.training_clock.TrainingClock` wrote. The difference of the two, divided by the
difference of the steps, is the cost of a step without start-up, first-step and data-loader warm-up
costs. The runs alternate objectives (A short, B short, ..., A long, B long, ...) so that a change
of the machine's load during the measurement falls on every objective alike. Each run gets ``--threads``
OpenMP/MKL threads (default 1, as the benchmark queue runs its cells: ``zoo-bench run --threads 1``):
CPU time per step depends on the thread count, and with several threads on a loaded machine the
threads' waiting counts as CPU time too, so a cost measured with another count does not size a cell.

    python benchmarks/step_cost.py benchmarks/matrices/world_model_study.yaml \\
        --objectives world_model denoising jepa_sigreg --reference world_model --steps 1500

prints a table (ms per step, ratio to the reference, and the steps at which each objective's
pretraining costs as much CPU as ``--steps`` of the reference's, rounded to the nearest multiple of
``--round``) and, with
``--output``, writes it as markdown. Nothing is written under the matrix's cell folders.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from atomzoo.runner.execute import cell_env, command  # noqa: E402
from atomzoo.runner.matrix import expand, load_matrix  # noqa: E402
from atomzoo.training_clock import CLOCK_FILE  # noqa: E402


def _replace(args: list[str], name: str, value: str) -> list[str]:
    """``args`` with the value of the last ``name`` replaced (appended when absent)."""
    out = list(args)
    positions = [i for i, a in enumerate(out) if a == name]
    if positions:
        out[positions[-1] + 1] = value
    else:
        out += [name, value]
    return out


def timed_run(cmd: list[str], steps: int, folder: Path, env: dict[str, str] | None = None) -> float:
    """Training CPU seconds of ``cmd`` run for ``steps`` optimiser steps, validation off, logging under
    ``folder``, in environment ``env`` (default: this process's).

    Raises:
        RuntimeError: the run failed (its last output lines are in the message).
    """
    args = _replace(cmd, "--trainer.max_steps", str(steps))
    args = _replace(args, "--trainer.limit_val_batches", "0")
    args = _replace(args, "--trainer.num_sanity_val_steps", "0")
    args = _replace(args, "--trainer.default_root_dir", str(folder))
    args = _replace(args, "--trainer.logger.init_args.save_dir", str(folder))
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"timed run failed ({' '.join(args)}):\n{tail}")
    clocks = list(folder.rglob(CLOCK_FILE))
    if len(clocks) != 1:
        raise RuntimeError(f"expected one {CLOCK_FILE} under {folder}, found {len(clocks)}")
    return float(json.loads(clocks[0].read_text())["cpu_s"])


def measure(matrix_path: str, objectives: list[str], short: int, long: int,
            repeats: int = 1, threads: int = 1, backbone: str | None = None) -> dict[str, list[tuple[float, float]]]:
    """Training CPU seconds ``(short run, long run)`` of each objective's first-seed pretraining cell on
    ``backbone`` (a key of the matrix's ``backbones``; default its first), one pair per repeat
    (:func:`per_step` turns them into seconds per step), each run with ``threads`` OpenMP/MKL threads
    (the environment the runner gives a cell at ``--threads``).

    Raises:
        SystemExit: ``backbone`` is not in the matrix, or an objective has no pretraining cell on it.
    """
    matrix = load_matrix(matrix_path)
    backbone = backbone or next(iter(matrix.backbones))
    if backbone not in matrix.backbones:
        raise SystemExit(f"{matrix_path}: --backbone {backbone!r} is not one of the matrix's backbones "
                         f"{sorted(matrix.backbones)}")
    cells = expand(matrix)
    by_id = {c.id: c for c in cells}
    chosen = {}
    for name in objectives:
        found = [c for c in cells if c.phase == "pretrain" and c.objective == name and c.backbone == backbone]
        if not found:
            raise SystemExit(f"{matrix_path}: no pretraining cell of objective {name!r} on backbone {backbone!r} "
                             f"(objectives with one: {sorted({c.objective for c in cells if c.phase == 'pretrain'})})")
        chosen[name] = command(matrix, min(found, key=lambda c: c.seed), by_id)
    env = cell_env(matrix, 1, threads)
    raw: dict[str, list[tuple[float, float]]] = {name: [] for name in objectives}
    with tempfile.TemporaryDirectory(prefix="step_cost_") as tmp:
        for r in range(repeats):
            cpu: dict[tuple[str, int], float] = {}
            for steps in (short, long):
                for name, cmd in chosen.items():
                    folder = Path(tmp) / f"{name}_{steps}_{r}"
                    cpu[name, steps] = timed_run(cmd, steps, folder, env)
                    print(f"{name} {steps} steps: {cpu[name, steps]:.1f} CPU s", flush=True)
            for name in objectives:
                raw[name].append((cpu[name, short], cpu[name, long]))
    return raw


def per_step(raw: dict[str, list[tuple[float, float]]], short: int, long: int) -> dict[str, list[float]]:
    """Seconds per step of each repeat: (long run - short run) / (long - short)."""
    return {name: [(b - a) / (long - short) for a, b in pairs] for name, pairs in raw.items()}


def table(costs: dict[str, list[float]], reference: str, steps: int, rounding: int) -> str:
    """Markdown: ms per step (mean, and the range over repeats), ratio to ``reference``, equal-CPU steps."""
    ref = sum(costs[reference]) / len(costs[reference])
    lines = [f"| objective | CPU ms per step | ratio to {reference} | steps for the CPU of {steps:,} {reference} steps |",
             "|---|---:|---:|---:|"]
    for name, values in costs.items():
        mean = sum(values) / len(values)
        spread = f" ({min(values) * 1e3:.0f}-{max(values) * 1e3:.0f})" if len(values) > 1 else ""
        equal = max(1, round(steps * ref / mean / rounding)) * rounding
        lines.append(f"| {name} | {mean * 1e3:.0f}{spread} | {mean / ref:.2f} | {equal:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("matrix", help="benchmark matrix YAML (benchmarks/matrices/...)")
    parser.add_argument("--objectives", nargs="+", required=True, help="objectives of the matrix to time")
    parser.add_argument("--reference", help="objective whose CPU time the others are matched to (default: the first)")
    parser.add_argument("--steps", type=int, default=1500, help="the reference's pretraining steps")
    parser.add_argument("--short", type=int, default=20, help="steps of the short run (start-up and warm-up)")
    parser.add_argument("--long", type=int, default=120, help="steps of the long run")
    parser.add_argument("--repeats", type=int, default=1, help="measure this many times (the range is reported)")
    parser.add_argument("--round", type=int, default=100, dest="rounding",
                        help="round equal-CPU steps to the nearest multiple of this (a checkpointed step)")
    parser.add_argument("--backbone", help="the matrix's backbone to time the objectives on (default: its first)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP/MKL threads of each run (default 1: the benchmark queue's --threads 1)")
    parser.add_argument("--output", help="write the table (markdown, with the command and thread count) here")
    args = parser.parse_args(argv)
    reference = args.reference or args.objectives[0]
    if reference not in args.objectives:
        parser.error(f"--reference {reference!r} is not among --objectives {args.objectives}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1 (got {args.threads})")
    if not 0 < args.short < args.long:
        parser.error(f"need 0 < --short < --long (got {args.short}, {args.long})")
    raw = measure(args.matrix, args.objectives, args.short, args.long, args.repeats, args.threads, args.backbone)
    text = table(per_step(raw, args.short, args.long), reference, args.steps, args.rounding)
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        head = (f"Training CPU time per optimiser step ({args.long} minus {args.short} steps, validation off, "
                f"backbone {args.backbone or 'the first'}, {args.threads} thread(s) per run, {args.repeats} repeat(s)), "
                f"measured by\n\n"
                f"    python benchmarks/step_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}\n\n"
                f"Training CPU s per run ({args.short} / {args.long} steps, one pair per repeat): "
                + "; ".join(f"{name} " + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in pairs) for name, pairs in raw.items())
                + "\n\n")
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(head + text + "\n")
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
