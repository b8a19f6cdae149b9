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
import subprocess
import sys
import time
from pathlib import Path

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
    args = [sys.executable, "-m", "zoo.cli", "fit", *cell.args,
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


def run_cells(matrix: Matrix, cells: list[Cell], all_cells: list[Cell], dry_run: bool = False,
              timeout: float | None = None) -> dict[str, list[str]]:
    """Run ``cells`` (a selection of ``all_cells``) in order; return ids by outcome."""
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
    bar = tqdm(todo, unit="cell", dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.id)
        if cell.depends_on and not (cell_dir(matrix, by_id[cell.depends_on]) / "DONE.json").exists():
            outcome["blocked"].append(cell.id)
            continue
        folder = cell_dir(matrix, cell)
        if folder.exists():
            shutil.rmtree(folder)  # leftovers of a crashed or killed attempt
        folder.mkdir(parents=True)
        start = time.perf_counter()
        with open(folder / "log.txt", "w") as log:
            log.write(" ".join(command(matrix, cell, by_id)) + "\n\n")
            log.flush()
            try:
                proc = subprocess.run(command(matrix, cell, by_id), stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout, check=False)
                ok = proc.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
        wall = time.perf_counter() - start
        if not ok:
            outcome["failed"].append(cell.id)
            tqdm.write(f"cell {cell.id} failed; see {folder / 'log.txt'}")
            continue
        merge_rows(matrix.results_csv, cell.id, collect(matrix, cell, wall))
        (folder / "DONE.json").write_text(json.dumps({"wall_s": wall, **cell.labels}, indent=1))
        outcome["done"].append(cell.id)
    return outcome
