"""One-off conversion of the two studies that had runners of their own into the experiment runner's results.

``benchmarks/parity.py`` and ``benchmarks/objective_study.py`` (removed in issue 25; their last
versions and CSVs are in commit f4b1238) each kept a results.csv of their own. Both studies are now
matrices of the one runner (``benchmarks/matrices/parity.yaml``, ``objective_study.yaml``), which
reads its finished cells from ``results.csv`` in :mod:`atomzoo.runner.results`' format. This script
rewrote the two CSVs into that format once, value strings copied verbatim (no number is re-parsed or
re-rounded), so that no finished run is ever repeated:

    git show f4b1238:benchmarks/results/parity/results.csv > /tmp/parity_legacy.csv
    git show f4b1238:benchmarks/results/objective_study/results.csv > /tmp/objective_study_legacy.csv
    python benchmarks/results/convert_legacy_results.py parity /tmp/parity_legacy.csv
    python benchmarks/results/convert_legacy_results.py objective_study /tmp/objective_study_legacy.csv

Each call writes the matrix's ``results.csv`` and checks that every converted cell is a cell of
the matrix and every cell of the matrix has results; ``--check`` compares with the committed file
instead of writing it.

Parity (one old run -> one fine-tuning cell): pair ``schnet`` / ``schnet_same_init`` / ``painn`` /
``et`` / ``mace`` and side ``ours`` / ``ref`` name the matrix's backbones (``schnet`` / ``pyg_schnet``,
...); task, seed and training size (the label budget) keep their values; every test metric keeps
its row; the run's wall time, steps and batch size become its ``wall_s``, ``max_steps`` and
``batch_size`` rows. Objective study (one old run -> one pretraining cell of backbone ``painn64``):
every kept metric at every step becomes a ``curve:<metric>`` row; the run's steps its ``max_steps`` row.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from atomzoo.runner.matrix import expand, load_matrix
from atomzoo.runner.results import COLUMNS, read_rows, write_rows

ROOT = Path(__file__).resolve().parents[2]
MATRICES = {"parity": ROOT / "benchmarks/matrices/parity.yaml",
            "objective_study": ROOT / "benchmarks/matrices/objective_study.yaml"}
#: parity.py's (pair, side) -> the matrix's backbone
PARITY_BACKBONES = {
    ("schnet", "ours"): "schnet", ("schnet", "ref"): "pyg_schnet",
    ("schnet_same_init", "ours"): "schnet_same_init", ("schnet_same_init", "ref"): "pyg_schnet_same_init",
    ("painn", "ours"): "painn", ("painn", "ref"): "schnetpack_painn",
    ("et", "ours"): "et", ("et", "ref"): "torchmd_et",
    ("mace", "ours"): "mace", ("mace", "ref"): "mace_torch",
}
#: objective_study.py's run names: <objective>-painn<width>-n<steps>-s<seed>
STUDY_BACKBONE = "painn64"


def convert_parity(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """parity.py's rows (run, pair, task, impl, seed, steps, batch_size, train_size, metric, value, wall_s)."""
    out: list[dict[str, str]] = []
    runs = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    for run in runs.values():
        first = run[0]
        backbone = PARITY_BACKBONES[(first["pair"], first["impl"])]
        cell = f"finetune/{backbone}/none/c0/{first['task']}/n{first['train_size']}/finetune/s{first['seed']}"
        labels = {"cell": cell, "phase": "finetune", "backbone": backbone, "objective": "none", "target": first["task"],
                  "label_budget": first["train_size"], "mode": "finetune", "seed": first["seed"],
                  "corruption_rate": "0.0", "step": ""}
        same = ("pair", "impl", "seed", "steps", "batch_size", "train_size", "wall_s")
        if any(tuple(r[k] for k in same) != tuple(first[k] for k in same) for r in run):
            raise ValueError(f"run {first['run']}: its rows disagree on their labels")
        out += [{**labels, "metric": "wall_s", "value": first["wall_s"]},
                {**labels, "metric": "max_steps", "value": first["steps"]},
                {**labels, "metric": "batch_size", "value": first["batch_size"]}]
        out += [{**labels, "metric": r["metric"], "value": r["value"]} for r in run]
    return out


def convert_objective_study(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """objective_study.py's rows (run, objective, steps, step, metric, value)."""
    out: list[dict[str, str]] = []
    for name in dict.fromkeys(r["run"] for r in rows):
        run = [r for r in rows if r["run"] == name]
        objective, steps = run[0]["objective"], run[0]["steps"]
        if name != f"{objective}-painn64-n{steps}-s0":
            raise ValueError(f"run {name}: not a run of the study's PaiNN 64 at seed 0")
        labels = {"cell": f"pretrain/{STUDY_BACKBONE}/{objective}/c0", "phase": "pretrain", "backbone": STUDY_BACKBONE,
                  "objective": objective, "target": "", "label_budget": "0", "mode": "", "seed": "0",
                  "corruption_rate": "0.0"}
        out.append({**labels, "metric": "max_steps", "step": "", "value": steps})
        out += [{**labels, "metric": f"curve:{r['metric']}", "step": r["step"], "value": r["value"]} for r in run]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=sorted(MATRICES))
    parser.add_argument("legacy_csv", type=Path, help="the study's results.csv as its own script wrote it")
    parser.add_argument("--check", action="store_true", help="compare with the committed results.csv, write nothing")
    args = parser.parse_args(argv)
    matrix = load_matrix(MATRICES[args.study])
    legacy = read_rows(args.legacy_csv)
    rows = (convert_parity if args.study == "parity" else convert_objective_study)(legacy)
    converted = {r["cell"] for r in rows}
    defined = {c.id for c in expand(matrix)}
    if converted - defined or defined - converted:
        print(f"converted cells not in the matrix: {sorted(converted - defined)}\n"
              f"matrix cells without results: {sorted(defined - converted)}", file=sys.stderr)
        return 1
    target = ROOT / matrix.results_csv
    if args.check:
        with open(target, newline="") as f:
            same = list(csv.DictReader(f)) == [{k: str(r[k]) for k in COLUMNS} for r in rows]
        print(f"{target}: {'identical to' if same else 'DIFFERS from'} the conversion of {args.legacy_csv}")
        return 0 if same else 1
    write_rows(target, rows)
    print(f"{len(legacy)} rows of {len(converted)} runs -> {len(rows)} rows of {len(converted)} cells in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
