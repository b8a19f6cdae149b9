"""Objective study: does each self-supervised objective do what its recipe promises, at a CPU budget?

Short QM9 pretraining runs, each an ordinary ``zoo fit`` process from the shipped configs
(``configs/objectives/{scd,jepa,jepa_sigreg}.yaml`` with ``configs/backbones/painn.yaml``), with only the
budget overridden (width, steps, warm-up, validation cadence). Every ``--val-every`` optimizer steps
the objective's own seeded validation runs, so the numbers at different steps see the same noise:

* ``scd``: ``val/loss`` (clean-pass condition) against ``val/loss_masked`` (same noise, mask token
  only). The self-conditioning works when the first is clearly below the second.
* ``jepa_ema``: ``train/target_std`` (per-dimension std of the raw EMA-target embedding) must not
  shrink while the prediction loss falls.
* ``jepa_sigreg``: ``train/emb_std`` of the raw embeddings must move (not be pinned at 1).

Every run also logs the collapse diagnostics (``emb_std``, ``emb_erank``, ``emb_sigreg``).

Resumable: a run's rows go to ``<out>/results.csv`` (run, step, metric, value; rewritten atomically)
when the run finishes; a finished run is never repeated; an unfinished run continues from its newest
checkpoint (the CLI writes ``last-step.ckpt`` every 500 optimizer steps; a resumed run logs to a new
``log<k>`` folder and the metrics of all of them are merged).

    python benchmarks/objective_study.py                # all runs, 3,000 steps each
    python benchmarks/objective_study.py --runs scd --steps 3000
    python benchmarks/objective_study.py --report       # <out>/results.md from results.csv
    python benchmarks/objective_study.py --export \
        benchmarks/results/objective_study/runs/scd-painn64-n3000-s0/log0/checkpoints/last.ckpt \
        tests/data/scd_painn64_qm9_3000steps.safetensors  # the trained SCD model the tests evaluate
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "objective_study"
COLUMNS = ["run", "objective", "steps", "step", "metric", "value"]

#: run name -> objective config and extra overrides (the backbone is configs/backbones/painn.yaml)
RUNS: dict[str, dict] = {
    "scd": {"config": "configs/objectives/scd.yaml", "args": ["--model.backbone.init_args.condition_dim", "64"]},
    "jepa_ema": {"config": "configs/objectives/jepa.yaml", "args": []},
    "jepa_sigreg": {"config": "configs/objectives/jepa_sigreg.yaml", "args": []},
}
#: metrics kept from the CSV log (others are ignored)
KEEP = ("val/loss", "val/loss_masked", "val/pred_loss", "val/sigreg", "train/loss", "train/emb_std",
        "train/emb_erank", "train/emb_sigreg", "train/target_std", "train/ema_momentum", "train/pred_loss")


def run_name(run: str, steps: int, width: int, seed: int) -> str:
    return f"{run}-painn{width}-n{steps}-s{seed}"


def command(run: str, steps: int, width: int, seed: int, val_every: int, folder: Path, resume: str | None,
            version: str) -> list[str]:
    spec = RUNS[run]
    args = [sys.executable, "-m", "atomzoo.cli", "fit", "-c", "configs/data/qm9.yaml", "-c", spec["config"],
            "--model.backbone", "configs/backbones/painn.yaml", "--model.backbone.init_args.width", str(width),
            *spec["args"], "--data.targets", "null", "--data.train_size", "20000",
            "--data.eval_batch_size", "128", "--trainer.limit_val_batches", "8",
            "--trainer.val_check_interval", str(val_every), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
            "--model.warmup_steps", str(max(1, steps // 10)), "--model.diagnostics_every_n_steps", "50",
            "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", "50",
            "--trainer.logger.class_path", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(folder.parent),
            "--trainer.logger.init_args.name", folder.name, "--trainer.logger.init_args.version", version,
            "--trainer.default_root_dir", str(folder)]
    if resume:
        args += ["--ckpt_path", resume]
    return args


def read_metrics(metrics_csv: Path) -> list[tuple[int, str, float]]:
    """(step, metric, value) of every kept metric in a Lightning CSVLogger file."""
    out = []
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for key in KEEP:
                value = row.get(key, "")
                if value not in ("", None):
                    out.append((int(row["step"]), key, float(value)))
    return out


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rewrite ``path`` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def report(out: Path) -> str:
    """Markdown: per run, the validation metrics at every evaluated step and the last diagnostics."""
    rows = load_rows(out / "results.csv")
    lines = []
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        series: dict[str, dict[int, float]] = {}
        for r in mine:
            series.setdefault(r["metric"], {})[int(r["step"])] = float(r["value"])
        lines += [f"### {name}", ""]
        val_keys = [k for k in ("val/loss", "val/loss_masked", "val/pred_loss", "val/sigreg") if k in series]
        if val_keys:
            extra = ["masked - loss (%)"] if {"val/loss", "val/loss_masked"} <= set(series) else []
            lines.append("| step | " + " | ".join(val_keys + extra) + " |")
            lines.append("| ---: |" + " ---: |" * (len(val_keys) + len(extra)))
            for step in sorted(series[val_keys[0]]):
                cells = [f"{series[k].get(step, math.nan):.4f}" for k in val_keys]
                if extra:
                    a, b = series["val/loss"].get(step, math.nan), series["val/loss_masked"].get(step, math.nan)
                    cells.append(f"{100 * (b - a) / b:+.1f}")
                lines.append(f"| {step} | " + " | ".join(cells) + " |")
            lines.append("")
        train_keys = [k for k in ("train/emb_std", "train/emb_erank", "train/emb_sigreg", "train/target_std")
                      if k in series]
        if train_keys:
            steps = sorted(series[train_keys[0]])
            picks = sorted({steps[0], *steps[len(steps) // 4::max(1, len(steps) // 4)], steps[-1]})
            lines.append("| step | " + " | ".join(train_keys) + " |")
            lines.append("| ---: |" + " ---: |" * len(train_keys))
            for step in picks:
                lines.append(f"| {step} | " + " | ".join(f"{series[k].get(step, math.nan):.4g}" for k in train_keys) + " |")
            lines.append("")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    return text


def export_state(checkpoint: Path, out: Path) -> int:
    """Write the whole objective's state dict (backbone, heads, running noise moments) of a study
    checkpoint to ``out`` (safetensors); returns the number of values. ``tests/data`` keeps one (SCD)."""
    import torch
    from safetensors.torch import save_file

    from atomzoo.objectives.base import Objective

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    module, _, name = ckpt["hyper_parameters"]["_class_path"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    assert issubclass(cls, Objective)
    model = cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"source": f"benchmarks/objective_study.py, {checkpoint}"})
    return sum(v.numel() for v in state.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--width", type=int, default=64, help="PaiNN width (the shipped config has 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--report", action="store_true")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT"),
                   help="write a run's objective state dict to OUT (.safetensors) and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.export:
        print(f"{export_state(Path(args.export[0]), Path(args.export[1]))} values -> {args.export[1]}")
        return 0
    if args.report:
        print(report(out))
        return 0
    for run in args.runs.split(","):
        if run not in RUNS:
            p.error(f"unknown run {run!r}; choose from {', '.join(RUNS)}")
        name = run_name(run, args.steps, args.width, args.seed)
        rows = load_rows(out / "results.csv")
        if any(r["run"] == name for r in rows):
            print(f"[study] done already: {name}", flush=True)
            continue
        folder = out / "runs" / name
        saved = sorted(folder.glob("log*/checkpoints/last*.ckpt"), key=lambda f: f.stat().st_mtime)
        resume = str(saved[-1]) if saved else None  # the newest last / last-step checkpoint
        folder.mkdir(parents=True, exist_ok=True)
        version = f"log{len(list(folder.glob('log*/')))}"  # a resumed run logs to a new folder
        cmd = command(run, args.steps, args.width, args.seed, args.val_every, folder, resume, version)
        (folder / "command.txt").write_text(" ".join(cmd) + "\n")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        print(f"[study] {'resume' if resume else 'start'} {name}", flush=True)
        with (folder / "output.txt").open("a") as log:
            code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            print(f"[study] {name} failed with exit code {code}; see {folder / 'output.txt'}", flush=True)
            return code
        metrics = sorted({m for path in sorted(folder.glob("log*/metrics.csv")) for m in read_metrics(path)})
        new = [{"run": name, "objective": run, "steps": args.steps, "step": s, "metric": k, "value": v}
               for s, k, v in metrics]
        write_rows(out / "results.csv", load_rows(out / "results.csv") + new)
        print(f"[study] finished {name}: {len(new)} rows", flush=True)
    report(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
