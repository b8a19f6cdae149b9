"""A matrix's ``results.csv``: the one record of which cells finished and what they measured.

Long format, one row per cell, metric and step::

    cell, phase, backbone, objective, target, label_budget, mode, seed, corruption_rate, metric, step, value

``metric`` is a final test metric (``test/homo_mae_meV``, empty ``step``), a logged series
(``curve:val/loss`` at each ``step``), or a property of the run: ``wall_s`` (wall time of the cell's
last attempt, s), ``max_steps`` and ``batch_size`` (from its resolved ``config.yaml``; what
equal-compute comparisons need). A cell is finished exactly when it has rows here: the runner never
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
           "metric", "step", "value"]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Every row of the CSV at ``path`` as strings (no rows if it does not exist)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finished_cells(path: Path) -> set[str]:
    """Ids of the cells with rows in the CSV at ``path``."""
    return {row["cell"] for row in read_rows(path)}


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as the whole CSV at ``path`` atomically (a temporary file in the same folder, then rename).

    Raises:
        ValueError: a row has a column outside :data:`COLUMNS`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def merge_rows(path: Path, cell_id: str, rows: list[dict]) -> None:
    """Replace the rows of ``cell_id`` in the CSV at ``path`` by ``rows`` (atomic rewrite)."""
    write_rows(path, [r for r in read_rows(path) if r["cell"] != cell_id] + rows)


def load(csv_path: Path) -> pd.DataFrame:
    """The CSV as a DataFrame: ``value`` and ``step`` numeric (``step`` NaN where empty), labels as written."""
    return pd.read_csv(csv_path, dtype={"target": str, "mode": str, "step": "float64"}, keep_default_na=False,
                       na_values={"step": [""]}, float_precision="round_trip")
