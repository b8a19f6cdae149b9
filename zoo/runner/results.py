"""A matrix's ``results.csv``: the one record of which cells finished and what they measured.

Long format, one row per cell, metric and step::

    cell, phase, backbone, objective, target, label_budget, mode, seed, corruption_rate, corruption,
    pretrain_seed, metric, step, value, commit, command

``metric`` is a final test metric (``test/homo_mae_meV``, empty ``step``), a logged series
(``curve:val/loss`` at each ``step``), or a property of the run (empty ``step``):

- ``wall_s`` and ``cpu_s``: wall time and CPU time (user + system, of the ``zoo fit`` process and
  its children, from ``os.wait4``) of the cell's last attempt, s; ``resumed`` 1 when that attempt
  continued from a checkpoint of an earlier one (whose time is then not included);
- ``train_cpu_s`` and ``train_wall_s``: CPU and wall time of training (the loop with its validations,
  not start-up or the test) summed over every attempt of the cell, each counted up to the checkpoint
  the next one resumed from (:class:`atomzoo.training_clock.TrainingClock`); ``train_attempts``;
  ``train_attempt_cpu_s`` (the last attempt's share); ``train_clock_complete`` 0 when an attempt
  resumed from a checkpoint written before the clock existed (its earlier time unknown). A cell's
  whole CPU time is ``cpu_s`` when it never resumed, else ``cpu_s + train_cpu_s - train_attempt_cpu_s``
  with a complete clock, else unknown (:func:`atomzoo.runner.report.run_cpu_s`);
- ``max_steps`` and ``batch_size`` (from its resolved ``config.yaml``); ``steps``: optimiser steps
  taken (the ``global_step`` of its last checkpoint); what equal-compute comparisons need;
- with early stopping: ``best_step`` (step of the best checkpoint, the one tested), ``stopped_early``
  (1: the patience ran out) and ``hit_cap`` (1: the step/epoch cap ended the run first);
- a pretraining cell run again (``--rerun``, or remade because its weights were lost):
  ``remake_val_checks`` and ``remake_val_loss_max_abs_diff``, its validation losses against the earlier
  run's at the same steps (0: the same training; :func:`atomzoo.runner.execute.compare_with_earlier_run`).

``corruption``: the artifact kind of the pretraining data (:mod:`atomzoo.datamodules.artifacts`; empty
for clean data and for a matrix with a single ``kind``, whose kind its file names).
``pretrain_seed``: the pretraining seed a fine-tuning cell started from (empty: none / scratch).
``commit``: the code the cell ran, ``git rev-parse HEAD`` at its start, with ``+dirty:<h>`` when tracked
files (outside ``benchmarks/results``) differed from it, the difference kept as ``<output>/patches/<h>.diff``
(``git checkout <commit> && git apply <output>/patches/<h>.diff``; rows written before 2026-12-07's
patches say ``+dirty`` alone) (empty outside a git checkout), on every row;
``command``: the cell's exact command line, on its ``wall_s`` row. Files written before these columns
existed read with them empty. A cell is finished exactly when it has rows here: the runner never
reruns it (unless asked to), whether or not its run folder still exists; rows are only ever written
for a cell that exited cleanly, and the file is rewritten atomically, so a kill cannot leave half a
cell's rows.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

COLUMNS = ["cell", "phase", "backbone", "objective", "target", "label_budget", "mode", "seed", "corruption_rate",
           "corruption", "pretrain_seed", "metric", "step", "value", "commit", "command"]
#: columns added after the first results files were written (read as empty from those)
LATER_COLUMNS = ("pretrain_seed", "commit", "command", "corruption")


def read_rows(path: Path) -> list[dict[str, str]]:
    """Every row of the CSV at ``path`` as strings (no rows if it does not exist)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finished_cells(path: Path) -> set[str]:
    """Ids of the cells with rows in the CSV at ``path``."""
    return {row["cell"] for row in read_rows(path)}


def write_rows(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    """Write ``rows`` as the whole CSV at ``path`` (header ``columns``) atomically (a temporary file in the
    same folder, then rename).

    Raises:
        ValueError: a row has a column outside ``columns``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def merge_rows(path: Path, cell_id: str, rows: list[dict]) -> None:
    """Replace the rows of ``cell_id`` in the CSV at ``path`` by ``rows`` (atomic rewrite).

    The read and the rewrite hold an exclusive lock on ``<path>.lock`` (``fcntl.flock``; where there is
    no ``fcntl``, as on Windows, none), so two runners writing into one results file -- two matrices
    sharing an ``output``, run at once -- never drop each other's rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # (Windows)
        fcntl = None
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        write_rows(path, [r for r in read_rows(path) if r["cell"] != cell_id] + rows)


def load(csv_path: Path) -> pd.DataFrame:
    """The CSV as a DataFrame: ``value`` and ``step`` numeric (``step`` NaN where empty), labels as written;
    :data:`LATER_COLUMNS` missing from an older file are added empty."""
    frame = pd.read_csv(csv_path, dtype={"target": str, "mode": str, "step": "float64", "pretrain_seed": str,
                                         "commit": str, "command": str, "corruption": str},
                        keep_default_na=False, na_values={"step": [""]}, float_precision="round_trip")
    for column in LATER_COLUMNS:
        if column not in frame:
            frame[column] = ""
    return frame


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the label columns added after the first results files (``corruption``) present,
    empty where missing (see :data:`atomzoo.runner.results.LATER_COLUMNS`)."""
    if "corruption" in frame and not frame["corruption"].isna().any():
        return frame
    return frame.assign(corruption=frame["corruption"].fillna("") if "corruption" in frame else "")
