"""Parity benchmark: the zoo's backbones against their reference implementations, same everything else.

Each row of the comparison is (pair, task): ``ours`` is the zoo's backbone, ``ref`` the reference
implementation plugged in through the public custom-backbone contract (``benchmarks/parity_adapters.py``,
selected by class path, as a user would). Both sides get the same data split, objective
(``configs/objectives/regression.yaml``), optimiser (AdamW), schedule (linear warm-up + cosine),
number of optimizer steps, batch size, width/depth, radial basis size, cutoff and neighbour list (the
adapters use our radius graph), and the same seeds. Every run is an ordinary ``zoo fit`` process
that tests its best-validation checkpoint at the end.

Pairs: ``schnet`` (ours vs PyG's SchNet blocks), ``painn`` (ours vs schnetpack 2.x PaiNN), ``et``
(ours vs torchmd-net 3.1's ``TorchMD_ET``; torchmd-net on ``PYTHONPATH``, see the adapter), ``mace``
(ours vs mace-torch's ``MACE`` model). Tasks: ``qm9_homo``, ``qm9_u0`` (QM9 standard split, training on
the first ``--train-size`` molecules of the training permutation, tested on the first 2,048 test
molecules), ``md_forces`` (energy + forces on the committed rMD17-format ethanol fixture, 300 / 50 /
150 frames; painn and mace only).

Resumable like ``zoo bench``: a run's rows are appended to ``<out>/results.csv`` only when it has
finished; a run whose id (pair, task, impl, seed, steps, batch size, train size) is in the CSV is never
repeated; the folder of an unfinished run is wiped and the run restarted. ``--report`` writes
``<out>/results.md``: per row mean +- std over seeds of each side, the paired difference ours - ref
(mean +- std over the seeds both sides finished) and the acceptance test ours mean <= ref mean + ref std.

    python benchmarks/parity.py --pairs schnet --tasks qm9_homo --seeds 0,1,2 --steps 1500
    python benchmarks/parity.py --report
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "parity"
COLUMNS = ["run", "pair", "task", "impl", "seed", "steps", "batch_size", "train_size", "metric", "value", "wall_s"]

#: (class path, init args) of each side; sizes are identical on both sides.
PAIRS: dict[str, dict[str, tuple[str, dict]]] = {
    "schnet": {  # the quickstart's SchNet 64 x 3
        "ours": ("atomzoo.backbones.SchNet", {"width": 64, "num_filters": 64, "num_interactions": 3, "num_rbf": 25,
                                              "cutoff": 5.0}),
        "ref": ("parity_adapters.PygSchNet", {"width": 64, "num_filters": 64, "num_interactions": 3, "num_rbf": 25,
                                              "cutoff": 5.0}),
    },
    "schnet_same_init": {  # as "schnet", but PyG's blocks start from the very weights ours draws (same seed)
        "ours": ("atomzoo.backbones.SchNet", {"width": 64, "num_filters": 64, "num_interactions": 3, "num_rbf": 25,
                                              "cutoff": 5.0}),
        "ref": ("parity_adapters.PygSchNet", {"width": 64, "num_filters": 64, "num_interactions": 3, "num_rbf": 25,
                                              "cutoff": 5.0, "same_init_as_ours": True}),
    },
    "painn": {
        "ours": ("atomzoo.backbones.PaiNN", {"width": 64, "num_interactions": 3, "num_rbf": 20, "cutoff": 5.0}),
        "ref": ("parity_adapters.SchnetpackPaiNN", {"width": 64, "num_interactions": 3, "num_rbf": 20, "cutoff": 5.0}),
    },
    "et": {  # configs/backbones/et.yaml's CPU preset: 64 x 3 layers, 32 expnorm functions, 8 heads
        "ours": ("atomzoo.backbones.ET", {"width": 64, "num_layers": 3, "num_rbf": 32, "num_heads": 8, "cutoff": 5.0,
                                          "trainable_rbf": False}),  # the papers' (and the adapter's) setting
        "ref": ("parity_adapters.TorchmdET", {"width": 64, "num_layers": 3, "num_rbf": 32, "num_heads": 8,
                                              "cutoff": 5.0}),
    },
    "mace": {  # a CPU-sized MACE: 32 channels, l <= 2, correlation 2
        "ours": ("atomzoo.backbones.MACE", {"r_max": 5.0, "num_bessel": 8, "max_ell": 2, "correlation": 2,
                                            "num_interactions": 2, "hidden_irreps": "32x0e+32x1o",
                                            "radial_MLP": [32, 32]}),
        "ref": ("parity_adapters.MaceTorch", {"r_max": 5.0, "num_bessel": 8, "max_ell": 2, "correlation": 2,
                                              "num_interactions": 2, "hidden_irreps": "32x0e+32x1o",
                                              "radial_MLP": [32, 32]}),
    },
}

QM9_COMMON = ["--data.eval_batch_size", "256", "--trainer.limit_val_batches", "4",
              "--trainer.limit_test_batches", "8", "--model.lr", "1.0e-3"]
#: task -> data config, overrides (after the objective config), metric reported, pairs it applies to,
#: extra backbone args for mace, fixed batch size (None: --batch-size)
TASKS: dict[str, dict] = {
    "qm9_homo": {"data": "configs/data/qm9.yaml", "args": [*QM9_COMMON, "--data.targets", "[homo]"], "metric": "test/homo_mae_meV",
                 "pairs": ("schnet", "schnet_same_init", "painn", "et", "mace"), "mace": {"avg_num_neighbors": 15.6}},
    "qm9_u0": {"data": "configs/data/qm9.yaml", "args": [*QM9_COMMON, "--data.targets", "[u0]"], "metric": "test/u0_mae_meV",
               "pairs": ("schnet", "painn", "et", "mace"), "mace": {"avg_num_neighbors": 15.6}},
    "md_forces": {"data": "configs/data/rmd17.yaml", "batch_size": 10, "args": ["--data.root", "tests/data/md17_fixture",
                           "--data.molecule", "ethanol", "--data.official_split", "null", "--data.num_train", "300",
                           "--data.num_val", "50", "--data.eval_batch_size", "50", "--model.energy_weight", "1.0",
                           "--model.force_weight", "100.0", "--model.lr", "2.0e-3"],
                  "metric": "test/forces_mae_meV_per_A", "pairs": ("painn", "et", "mace"),
                  "mace": {"avg_num_neighbors": 8.0}},  # ethanol: every other atom is within 5 A
}


def task_batch_size(task: str, batch_size: int) -> int:
    return TASKS[task].get("batch_size") or batch_size


def run_id(pair: str, task: str, impl: str, seed: int, steps: int, batch_size: int, train_size: int) -> str:
    batch_size = task_batch_size(task, batch_size)
    if not task.startswith("qm9"):
        train_size = 300
    return f"{pair}-{task}-{impl}-s{seed}-n{steps}-b{batch_size}-t{train_size}"


def command(pair: str, task: str, impl: str, seed: int, steps: int, batch_size: int, train_size: int,
            folder: Path) -> list[str]:
    """The ``zoo fit`` command line of one run (relative config paths: run from the repository root)."""
    class_path, init_args = PAIRS[pair][impl]
    batch_size = task_batch_size(task, batch_size)
    init_args = {**init_args, **(TASKS[task]["mace"] if pair == "mace" else {})}
    args = [sys.executable, "-m", "atomzoo.cli", "fit", "-c", TASKS[task]["data"],
            "-c", "configs/objectives/regression.yaml", *TASKS[task]["args"], "--model.backbone.class_path", class_path]
    for key, value in init_args.items():
        args += [f"--model.backbone.init_args.{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    if task.startswith("qm9"):
        args += ["--data.train_size", str(train_size), "--trainer.val_check_interval",
                 str(max(1, min(train_size // batch_size, steps // 4)))]
    args += ["--data.batch_size", str(batch_size), "--seed_everything", str(seed), "--test_after_fit", "true",
             "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.gradient_clip_val", "10.0",
             "--model.warmup_steps", str(max(1, steps // 10)), "--trainer.enable_progress_bar", "false",
             "--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger",
             "--trainer.logger.init_args.save_dir", str(folder.parent),
             "--trainer.logger.init_args.name", folder.name, "--trainer.logger.init_args.version", "run",
             "--trainer.default_root_dir", str(folder)]
    return args


def finished_runs(csv_path: Path) -> set[str]:
    if not csv_path.exists():
        return set()
    with csv_path.open() as f:
        return {row["run"] for row in csv.DictReader(f)}


def append_rows(csv_path: Path, rows: list[dict]) -> None:
    """Append (header first if new); one flush per run, so a kill never leaves half a run's rows."""
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def execute(args: argparse.Namespace) -> None:
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    done = finished_runs(csv_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    # order: per (pair, task), all seeds of both sides, so that complete rows appear first
    plan = [(pair, task, impl, seed) for pair in args.pairs for task in args.tasks if pair in TASKS[task]["pairs"]
            for seed in args.seeds for impl in ("ours", "ref")]
    for pair, task, impl, seed in plan:
        rid = run_id(pair, task, impl, seed, args.steps, args.batch_size, args.train_size)
        if rid in done:
            print(f"[parity] done already: {rid}", flush=True)
            continue
        folder = out / "runs" / rid
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cmd = command(pair, task, impl, seed, args.steps, args.batch_size, args.train_size, folder)
        (folder / "command.txt").write_text(" ".join(cmd) + "\n")
        print(f"[parity] start {rid}", flush=True)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        start = time.time()
        with (folder / "log.txt").open("w") as log:
            code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - start
        metrics_file = folder / "run" / "test_metrics.json"
        if code != 0 or not metrics_file.exists():
            print(f"[parity] FAILED {rid} (exit {code}); see {folder / 'log.txt'}", flush=True)
            continue
        metrics = json.loads(metrics_file.read_text())
        base = {"run": rid, "pair": pair, "task": task, "impl": impl, "seed": seed, "steps": args.steps,
                "batch_size": task_batch_size(task, args.batch_size),
                "train_size": args.train_size if task.startswith("qm9") else 300, "wall_s": round(wall, 1)}
        rows = [{**base, "metric": k, "value": v} for k, v in sorted(metrics.items()) if k.startswith("test/")]
        append_rows(csv_path, rows)
        print(f"[parity] finished {rid} in {wall:.0f} s: {TASKS[task]['metric']} = "
              f"{metrics.get(TASKS[task]['metric'])}", flush=True)
        if not args.keep_checkpoints:
            shutil.rmtree(folder / "run" / "checkpoints", ignore_errors=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def report(out: Path) -> str:
    """Markdown table of ``<out>/results.csv`` (also written to ``<out>/results.md``)."""
    csv_path = out / "results.csv"
    if not csv_path.exists():
        return "no results yet\n"
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    walls: dict[tuple, list[float]] = {}
    for r in rows:
        if r["metric"] != TASKS[r["task"]]["metric"]:
            continue
        key = (r["pair"], r["task"], r["steps"], r["batch_size"], r["train_size"])
        groups.setdefault(key, {"ours": {}, "ref": {}})[r["impl"]][int(r["seed"])] = float(r["value"])
        walls.setdefault(key + (r["impl"],), []).append(float(r["wall_s"]))
    lines = ["| pair | task | metric | steps x batch (train size) | ours: mean +- std (n) | ref: mean +- std (n) | "
             "paired ours - ref (n) | ours <= ref + std | wall s/run ours / ref |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | :---: | ---: |"]
    for key in sorted(groups):
        pair, task, steps, batch, train = key
        ours, ref = groups[key]["ours"], groups[key]["ref"]
        cells = []
        for side in (ours, ref):
            if side:
                m, s = _mean_std(list(side.values()))
                cells.append(f"{m:.1f} +- {s:.1f} ({len(side)})")
            else:
                cells.append("-")
        common = sorted(set(ours) & set(ref))
        diffs = [ours[s] - ref[s] for s in common]
        paired = f"{_mean_std(diffs)[0]:+.1f} +- {_mean_std(diffs)[1]:.1f} ({len(diffs)})" if diffs else "-"
        verdict = "-"
        if len(ours) >= 3 and len(ref) >= 3:
            mo, (mr, sr) = statistics.fmean(ours.values()), _mean_std(list(ref.values()))
            verdict = "yes" if mo <= mr + sr else "**no**"
        elif ours and ref:
            verdict = "(< 3 seeds)"
        wall = " / ".join(f"{statistics.fmean(walls[key + (i,)]):.0f}" if key + (i,) in walls else "-" for i in ("ours", "ref"))
        lines.append(f"| {pair} | {task} | {TASKS[task]['metric']} | {steps} x {batch} ({train}) | "
                     f"{cells[0]} | {cells[1]} | {paired} | {verdict} | {wall} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="schnet,painn,mace", help="comma-separated subset of " + ",".join(PAIRS))
    p.add_argument("--tasks", default="qm9_homo,qm9_u0,md_forces", help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (>= 3 for the acceptance test)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-size", type=int, default=20000, help="QM9 training molecules (first of the permutation)")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per run")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--report", action="store_true", help="only write <out>/results.md from results.csv")
    args = p.parse_args(argv)
    args.pairs = [x for x in args.pairs.split(",") if x]
    args.tasks = [x for x in args.tasks.split(",") if x]
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    unknown = (set(args.pairs) - set(PAIRS)) | (set(args.tasks) - set(TASKS))
    if unknown:
        p.error(f"unknown pairs/tasks: {sorted(unknown)}")
    if not args.report:
        execute(args)
    print(report(Path(args.out)), end="")


if __name__ == "__main__":
    main()
