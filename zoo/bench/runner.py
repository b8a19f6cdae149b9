"""Runs the cells of a matrix as ordinary ``zoo fit`` processes, resumably.

A finished cell has ``DONE.json`` in its folder and is skipped; a folder without it (a crash, a
kill) is wiped and the cell rerun. After each cell its metrics are merged into ``results.csv``
(long format: one row per cell, metric and step), written atomically.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from .matrix import Cell, Matrix

COLUMNS = ["cell", "phase", "backbone", "objective", "target", "label_budget", "mode", "seed", "corruption_rate",
           "metric", "step", "value"]
LOG_SUBDIR = "run"


def cell_dir(matrix: Matrix, cell: Cell) -> Path:
    return matrix.cells_dir / cell.id


def log_dir(matrix: Matrix, cell: Cell) -> Path:
    """Where the cell's Lightning run writes config.yaml, checkpoints/, events and test_metrics.json."""
    return cell_dir(matrix, cell) / LOG_SUBDIR


def checkpoint_of(matrix: Matrix, cell: Cell) -> Path:
    return log_dir(matrix, cell) / "checkpoints" / "last.ckpt"


def command(matrix: Matrix, cell: Cell, cells_by_id: dict[str, Cell]) -> list[str]:
    """The full ``zoo fit`` command line of a cell."""
    folder = cell_dir(matrix, cell)
    args = [sys.executable, "-m", "atomzoo.cli", "fit", *cell.args,
            "--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.init_args.save_dir", str(folder.parent),
            "--trainer.logger.init_args.name", folder.name,
            "--trainer.logger.init_args.version", LOG_SUBDIR,
            "--trainer.default_root_dir", str(folder),
            "--trainer.enable_progress_bar", "false"]
    if cell.depends_on:
        args += ["--model.init_from", str(checkpoint_of(matrix, cells_by_id[cell.depends_on]))]
    return args


def read_curves(directory: Path) -> list[tuple[str, int, float]]:
    """All scalar series of the TensorBoard event files in ``directory`` as (tag, step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(tag, int(e.step), float(e.value)) for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag)]


def collect(matrix: Matrix, cell: Cell, wall_s: float) -> list[dict]:
    """Rows for results.csv: final test metrics, validation curves and wall time of a finished cell."""
    base = cell.labels
    rows = [{**base, "metric": "wall_s", "step": "", "value": wall_s}]
    metrics_file = log_dir(matrix, cell) / "test_metrics.json"
    if metrics_file.exists():
        for name, value in json.loads(metrics_file.read_text()).items():
            rows.append({**base, "metric": name, "step": "", "value": value})
    for tag, step, value in read_curves(log_dir(matrix, cell)):
        if tag.startswith(("val/", "train/loss", "train/emb")):
            rows.append({**base, "metric": f"curve:{tag}", "step": step, "value": value})
    return rows


def merge_rows(path: Path, cell_id: str, rows: list[dict]) -> None:
    """Replace the rows of ``cell_id`` in the CSV at ``path`` by ``rows`` (atomic rewrite)."""
    existing = []
    if path.exists():
        with open(path, newline="") as f:
            existing = [r for r in csv.DictReader(f) if r["cell"] != cell_id]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(existing)
        writer.writerows(rows)
    os.replace(tmp, path)


def _child_env(parallel: int) -> dict[str, str]:
    """Environment of a cell's process: with ``parallel`` cells at once, the cores are shared out."""
    env = dict(os.environ)
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
    return env


@dataclass
class _Running:
    cell: Cell
    proc: subprocess.Popen
    log: IO[str]
    start: float


def run_cells(matrix: Matrix, cells: list[Cell], all_cells: list[Cell], dry_run: bool = False,
              timeout: float | None = None, parallel: int = 1) -> dict[str, list[str]]:
    """Run ``cells`` (a selection of ``all_cells``), up to ``parallel`` at once; return ids by outcome.

    Cells start in matrix order; a fine-tuning cell waits until its pretraining cell is done and is
    ``blocked`` if that one failed or was neither selected nor finished earlier. With ``parallel`` > 1
    every process gets ``cpu_count // parallel`` threads (unless OMP_NUM_THREADS is set).
    """
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    by_id = {c.id: c for c in all_cells}
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": [], "blocked": []}
    todo = []
    for cell in cells:
        if (cell_dir(matrix, cell) / "DONE.json").exists():
            outcome["skipped"].append(cell.id)
        else:
            todo.append(cell)
    if dry_run:
        for cell in todo:
            print(" ".join(command(matrix, cell, by_id)))
        return outcome
    if outcome["skipped"]:
        print(f"{len(outcome['skipped'])} finished cells skipped (delete their folder to rerun)")
    env = _child_env(parallel)
    pending = list(todo)
    running: list[_Running] = []
    bar = tqdm(total=len(todo), unit="cell", dynamic_ncols=True)

    def launch(cell: Cell) -> None:
        folder = cell_dir(matrix, cell)
        if folder.exists():
            shutil.rmtree(folder)  # leftovers of a crashed or killed attempt
        folder.mkdir(parents=True)
        cmd = command(matrix, cell, by_id)
        log = open(folder / "log.txt", "w")  # noqa: SIM115 -- open while the cell runs; closed in finish()
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running.append(_Running(cell, proc, log, time.perf_counter()))

    def finish(job: _Running, ok: bool) -> None:
        job.log.close()
        wall = time.perf_counter() - job.start
        folder = cell_dir(matrix, job.cell)
        if ok:
            merge_rows(matrix.results_csv, job.cell.id, collect(matrix, job.cell, wall))
            (folder / "DONE.json").write_text(json.dumps({"wall_s": wall, **job.cell.labels}, indent=1))
            outcome["done"].append(job.cell.id)
        else:
            outcome["failed"].append(job.cell.id)
            tqdm.write(f"cell {job.cell.id} failed; see {folder / 'log.txt'}")
        bar.update(1)

    try:
        while pending or running:
            for cell in list(pending):
                if len(running) >= parallel:
                    break
                dep = cell.depends_on
                if dep and not (cell_dir(matrix, by_id[dep]) / "DONE.json").exists():
                    waiting = any(c.id == dep for c in pending) or any(j.cell.id == dep for j in running)
                    if not waiting:
                        outcome["blocked"].append(cell.id)
                        pending.remove(cell)
                        bar.update(1)
                    continue
                pending.remove(cell)
                launch(cell)
            shown = ", ".join(j.cell.id for j in running)
            if shown != bar.postfix:
                bar.set_postfix_str(shown)
            elif time.time() - bar.last_print_t > 5.0:
                bar.refresh()  # keep elapsed/remaining time moving while long cells run
            time.sleep(0.2)
            for job in list(running):
                code = job.proc.poll()
                if code is None and timeout is not None and time.perf_counter() - job.start > timeout:
                    os.killpg(job.proc.pid, signal.SIGKILL)
                    code = job.proc.wait()
                    tqdm.write(f"cell {job.cell.id} ran past --timeout {timeout:g} s and was killed")
                if code is not None:
                    running.remove(job)
                    finish(job, code == 0)
    finally:  # Ctrl-C or an error here: leave no orphan training processes behind
        for job in running:
            os.killpg(job.proc.pid, signal.SIGKILL)
            job.proc.wait()
            job.log.close()
        bar.close()
    return outcome
