"""Tables and plots from a matrix's ``results.csv`` (and the matrix file's report settings, if given).

The report is ``<output>/results.md`` with its plots beside it; a matrix with ``report_name: NAME``
writes ``<output>/NAME.md`` and prefixes its plots with ``NAME_``, so that matrices sharing one output
folder (the stages of a study, one ``results.csv``) each keep a report of their own. Such a report
shows every row of the shared ``results.csv`` unless the matrix says ``report_with``: then only its own
cells and those of the matrices listed there (:func:`atomzoo.runner.matrix.report_scope`; the probes
too: those of the pretraining cells in scope and the random networks of their backbones).

Sections of the report, in this order (the matrix's ``report`` key picks which):

- ``compare``: per comparison of the matrix (ours against a reference, e.g. our SchNet against PyG's),
  mean +- std over seeds of each side, the paired difference ours - ref over the seeds both sides
  finished, and the acceptance line ours mean <= ref mean + ref std (>= 3 seeds per side).
- ``summary``: per fine-tuning mode, test MAE mean +- std over seeds for every backbone x pretraining
  objective (rows) and task x label budget (columns); the best mean of each column in bold; the
  relative change against training from scratch (objective ``none``) in brackets, paired: the mean
  difference over the seeds both rows have, relative to scratch's mean over those seeds (negative =
  lower error = better).
- ``paired``: for each pretraining objective, its test-MAE difference to each of the matrix's
  ``references`` (default: scratch and coordinate denoising, :data:`REFERENCES`; two references are
  paired once, the later in the list minus the earlier), paired by
  fine-tuning seed (the same seed, hence the same
  initialisation of the head and order of the same labelled molecules; with ``pretrain_seeds: same``
  seed k is also the pretraining seed: one replicate), mean and 95 % interval (paired t; n = 1 says
  so), ``resolved`` when the interval excludes 0, and for unresolved differences the seeds a 95 %
  interval excluding 0 needs (:func:`~atomzoo.runner.paired.seeds_needed`), with the CPU hours the missing replicates would
  take at the rows' measured cost (:func:`replicate_cpu_h`). Then how steady each row is across
  seeds (:func:`spread_table`): the standard deviation of its test MAE with a 95 % interval, and its
  ratio to each reference's over the same seeds with a 95 % interval (Pitman-Morgan, paired),
  resolved when the interval excludes 1; clean pretraining only.
- ``compute``: per pretraining objective, its optimiser steps, measured CPU time (hours, per run and
  per step, over the runs whose whole CPU time is known: :func:`run_cpu_s`) and the fine-tuned test
  MAE (mean and 95 % interval): objectives at equal steps, and at equal CPU time where the matrix has a
  step budget matched to it (e.g. ``denoising_eqcpu``).
- ``finetuning``: per row of the summary, how the fine-tuning runs ended: stopped early or at the
  step/epoch cap, the mean stopping and best (tested) step, CPU minutes per run.
- ``noise``: per artifact kind, test MAE against the pretraining corruption rate (clean shared) and
  the paired change at the largest rate with its 95 % interval, when rates were swept, and the same per
  replicate (:func:`noise_seed_table`); each objective's
  change against the first non-scratch reference's (:func:`noise_sensitivity_table`); the embedding
  diagnostics clean -> corrupted (:func:`noise_embedding_table`).
- ``probes``: the probes of the frozen pretrained networks against random ones (``probes.csv``,
  written by ``zoo-bench probe MATRIX``; :mod:`atomzoo.runner.probe`).
- ``pretraining``: one row per pretraining run (steps, last validation loss, wall time).
- ``curves``: per pretraining run, every logged validation metric at each evaluated step and the
  collapse diagnostics (embedding std, effective rank, SIGReg statistic) at a few steps.
- ``cost``: summed wall time per phase.
- ``plots``: ``mae_<backbone>_<mode>.png`` (each objective's test MAE per seed and its mean with a 95 %
  interval, :func:`~atomzoo.runner.plots.mae_plots`),
  ``curves_<backbone>_<target>_n<budget>.png`` (validation MAE during fine-tuning, per objective),
  ``noise_<backbone>_<target>_n<budget>.png`` (test MAE against the pretraining corruption rate),
  ``budget_<backbone>_<target>_<mode>.png`` (each objective's paired change against scratch, %, against
  the label budget), ``noise_change_<backbone>_<target>_n<budget>.png`` (the paired changes per artifact
  and objective), drawn by :mod:`atomzoo.runner.plots`. A plot the previous version of the report showed
  and this one does not draw is deleted.

Intervals, resolution and the replicates a resolved interval needs: :mod:`atomzoo.runner.paired`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from .matrix import (DEFAULT_REFERENCES, DEFAULT_REPORT_NAME, DEFAULT_SECTIONS, SCRATCH, Comparison, Matrix,
                     report_scope)
from .paired import (by_seed, listed_the_other_way, paired_changes, paired_interval, seeds_needed, spread_interval,
                     spread_ratio)
from .plots import budget_plots, curve_plots, mae_plots, noise_change_plots, noise_plots
from .results import labelled, load

#: training diagnostics the ``curves`` section shows (objectives/base.py logs them; JEPA adds target_std)
DIAGNOSTICS = ("train/emb_std", "train/emb_erank", "train/emb_sigreg", "train/target_std")
#: the objectives every other is compared with in the ``paired`` section of a matrix that names none
REFERENCES = DEFAULT_REFERENCES


def _interval_text(mean: float, half: float | None, digits: int = 2, sign: str = "+") -> str:
    if half is None:
        return f"{mean:{sign}.{digits}f} (n = 1)"
    return f"{mean:{sign}.{digits}f} [{mean - half:{sign}.{digits}f}, {mean + half:{sign}.{digits}f}]"


def _own_metric(metric: str, target: str, metrics: dict[str, str | None]) -> bool:
    """Whether ``metric`` is the reported test metric of task ``target``."""
    chosen = metrics.get(target)
    return metric == chosen if chosen else metric.startswith(f"test/{target}_mae_")


def _unit(metric: str) -> str:
    return metric.split("_mae_", 1)[1].replace("_per_", "/") if "_mae_" in metric else ""


def final_test_mae(frame: pd.DataFrame, metrics: dict[str, str | None] | None = None) -> pd.DataFrame:
    """One row per fine-tuning cell: its reported test metric, with the metric's unit.

    ``metrics`` maps a task to its metric (a matrix's ``tasks.<name>.metric``); tasks not in it report
    ``test/<task>_mae_<unit>``."""
    metrics = metrics or {}
    frame = labelled(frame)
    ft = frame[(frame["phase"] == "finetune") & frame["metric"].str.startswith("test/")]
    own = pd.Series([_own_metric(m, t, metrics) for m, t in zip(ft["metric"], ft["target"])], index=ft.index, dtype=bool)
    ft = ft[own]
    if ft.empty:  # nothing fine-tuned yet (e.g. only pretraining cells have finished)
        return ft.assign(unit=pd.Series(dtype=str))
    return ft.assign(unit=ft["metric"].map(_unit))


def _condition(rate: float, kind: str = "") -> str:
    """How a row's pretraining data were corrupted, for its label: ``""`` (clean), ``"corruption 0.1"``
    (a matrix with one kind) or ``"wrong_element 0.3"``."""
    if not rate:
        return ""
    return f"{kind or 'corruption'} {rate:g}"


def _label(objective: str, rate: float, kind: str = "") -> str:
    condition = _condition(rate, kind)
    return objective + (f" ({condition})" if condition else "")


def _fmt(mean: float, std: float, count: int = 2) -> str:
    """``mean ± std`` over seeds; ``mean (n = 1)`` for a single seed (no spread was measured)."""
    digits = 2 if abs(mean) < 10 else 1
    if count < 2:
        return f"{mean:.{digits}f} (n = 1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(ft: pd.DataFrame, mode: str, rate: float = 0.0, kind: str = "") -> str:
    """Markdown table of test MAE for one fine-tuning mode at one corruption rate (and kind)."""
    sub = ft[(ft["mode"] == mode) & (((ft["corruption_rate"] == rate) & (ft["corruption"] == kind))
                                     | (ft["objective"] == SCRATCH))]
    if sub.empty:
        return ""
    stats = sub.groupby(["backbone", "objective", "target", "label_budget", "unit"])["value"].agg(["mean", "std", "count"])
    stats["std"] = stats["std"].fillna(0.0)
    columns = sorted({(t, int(n), u) for (_, _, t, n, u) in stats.index}, key=lambda c: (c[0], c[1]))
    rows = sorted({(b, o) for (b, o, _, _, _) in stats.index}, key=lambda r: (r[0], r[1] != SCRATCH, r[1]))
    header = "| backbone | pretraining | " + " | ".join(f"{t} n={n} ({u})" for t, n, u in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    column_means = {c: stats.xs((c[0], c[1], c[2]), level=("target", "label_budget", "unit"))["mean"] for c in columns}
    # the lowest mean of a column is bold where there is something to compare it with (two rows or more)
    best = {c: means.min() if len(means) > 1 else None for c, means in column_means.items()}
    for backbone, objective in rows:
        cells = []
        for target, budget, unit in columns:
            key = (backbone, objective, target, budget, unit)
            if key not in stats.index:
                cells.append("–")
                continue
            mean, std, count = stats.loc[key, ["mean", "std", "count"]]
            text = _fmt(mean, std, count)
            if best[(target, budget, unit)] is not None and np.isclose(mean, best[(target, budget, unit)]):
                text = f"**{text}**"
            if objective != SCRATCH:  # paired: over the seeds both rows have (other seeds' luck left out)
                here = sub[(sub["backbone"] == backbone) & (sub["target"] == target) & (sub["label_budget"] == budget)
                           & (sub["unit"] == unit)]
                mine = by_seed(here[here["objective"] == objective])
                base = by_seed(here[here["objective"] == SCRATCH])
                common = sorted(set(mine) & set(base))
                if common:
                    change = (statistics.fmean(mine[k] - base[k] for k in common)
                              / statistics.fmean(base[k] for k in common))
                    text += f" ({100.0 * change:+.0f}%)"
            if count < ft["seed"].nunique():
                text += f" [{int(count)} seed{'s' if count != 1 else ''}]"
            cells.append(text)
        lines.append(f"| {backbone} | {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replicate_cpu_h(frame: pd.DataFrame) -> dict[tuple, float]:
    """Measured CPU hours of one more replicate of a row: ``(backbone, objective, corruption_rate,
    corruption, target, label_budget, mode)`` -> the mean whole-run CPU time (:func:`run_cpu_s`) of its
    fine-tuning cells plus that of its pretraining cells (none for scratch), over the cells whose time is
    known; rows without a timed fine-tuning cell (or, pretrained, without a timed pretraining) are absent."""
    pre: dict[tuple, list[float]] = defaultdict(list)
    fine: dict[tuple, list[float]] = defaultdict(list)
    for labels, values in _per_cell(frame).values():
        cpu = run_cpu_s(values)
        if cpu is None:
            continue
        key = (labels["backbone"], labels["objective"], float(labels["corruption_rate"]), str(labels["corruption"]))
        if labels["phase"] == "pretrain":
            pre[key].append(cpu)
        elif labels["phase"] == "finetune":
            fine[key + (labels["target"], int(labels["label_budget"]), labels["mode"])].append(cpu)
    return {key: (statistics.fmean(values) + (statistics.fmean(pre[key[:4]]) if key[1] != SCRATCH else 0.0)) / 3600
            for key, values in fine.items() if key[1] == SCRATCH or key[:4] in pre}


def estimated_cell_cpu_s(frame: pd.DataFrame, cells: list) -> dict[str, tuple[float, int] | None]:
    """Per cell id of ``cells`` (:class:`atomzoo.runner.matrix.Cell`, not yet run), the CPU seconds it
    would take, estimated from the finished cells of ``frame`` (a ``results.csv``) most alike, with the
    level of likeness the estimate came from (0-4 below); ``None`` where no finished cell is alike.

    Each cell costs the median whole-run CPU time (:func:`run_cpu_s`) of the finished cells that share the
    most specific of: (0) phase, backbone, objective, corruption rate and kind, task, label budget and
    mode; (1) the same without the corruption; (2) phase, backbone and objective; (3) phase and backbone;
    (4) phase and objective on other backbones (a backbone with no finished cell yet: its cost relative
    to the others is unknown, so this level is rough). At the measured CPU time of one thread per cell
    (the runner's ``--threads 1``), under the load the finished cells ran with."""
    levels: list[dict[tuple, list[float]]] = [defaultdict(list) for _ in range(5)]

    def keys(phase, backbone, objective, rate, kind, target, budget, mode) -> list[tuple]:
        task = (str(target), int(float(budget or 0)), str(mode)) if phase == "finetune" else ()
        return [(phase, backbone, objective, float(rate or 0), str(kind)) + task, (phase, backbone, objective) + task,
                (phase, backbone, objective), (phase, backbone), (phase, objective)]

    for labels, values in _per_cell(frame).values() if frame is not None and not frame.empty else ():
        cpu = run_cpu_s(values)
        if cpu is None:
            continue
        for level, key in zip(levels, keys(labels["phase"], labels["backbone"], labels["objective"],
                                           labels["corruption_rate"], labels["corruption"], labels["target"],
                                           labels["label_budget"], labels["mode"])):
            level[key].append(cpu)
    estimates: dict[str, tuple[float, int] | None] = {}
    for cell in cells:
        estimates[cell.id] = next(((statistics.median(level[key]), depth) for depth, (level, key) in enumerate(zip(
            levels, keys(cell.phase, cell.backbone, cell.objective, cell.corruption_rate, cell.corruption,
                         cell.target, cell.label_budget, cell.mode))) if level.get(key)), None)
    return estimates


def estimated_cpu_h(frame: pd.DataFrame, cells: list) -> tuple[float, int, int]:
    """CPU hours the ``cells`` (not yet run) would take (:func:`estimated_cell_cpu_s`); how many cells had
    no finished cell alike (counted as unknown, not as zero); and how many were estimated only from cells
    of another objective, task or backbone (levels 2-4 of a fine-tuning cell, levels 3-4 of a pretraining
    cell: rough)."""
    total, unknown, rough = 0.0, 0, 0
    estimates = estimated_cell_cpu_s(frame, cells)
    for cell in cells:
        found = estimates[cell.id]
        if found is None:
            unknown += 1
        else:
            total += found[0]
            rough += found[1] >= 3 or (found[1] == 2 and cell.phase == "finetune")
    return total / 3600, unknown, rough


def _missing_cpu_h(costs: dict[tuple, float] | None, rows: list[tuple], needed: int | None, done: int) -> str:
    """``", ~H CPU h more"``: the ``needed - done`` replicates still missing, each one run of every row of
    ``rows`` (keys of :func:`replicate_cpu_h`) at its measured cost; ``""`` when a row's cost is unknown."""
    parts = [(costs or {}).get(row) for row in rows]
    if not needed or None in parts:
        return ""
    return f", ~{(needed - done) * sum(parts):.1f} CPU h more"


def paired_table(ft: pd.DataFrame, references: tuple[str, ...] = REFERENCES,
                 costs: dict[tuple, float] | None = None) -> str:
    """Markdown table of every objective's paired difference to each of ``references`` (module docstring);
    negative = lower error than the reference. Two references are paired once, the later one in
    ``references`` minus the earlier one. With ``costs`` (:func:`replicate_cpu_h` of the cells), an
    unresolved difference's replicates to a resolved interval come with the CPU hours the ones still
    missing would take (one pretraining and one fine-tuning of each pretrained side, one fine-tuning of
    scratch)."""
    lines = ["| backbone | task | n | mode | pretraining | vs | difference (unit) [95 % interval] | relative | "
             "seeds | resolved | seeds for a resolved 95 % interval |",
             "|---|---|---|---|---|---|---:|---:|---:|:---:|---:|"]
    keys = ["backbone", "target", "label_budget", "unit", "mode", "corruption_rate", "corruption"]
    for (b, t, n, u, mode, rate, kind), group in ft.groupby(keys):
        scratch = ft[(ft["backbone"] == b) & (ft["target"] == t) & (ft["label_budget"] == n) & (ft["mode"] == mode)
                     & (ft["objective"] == SCRATCH)]
        sides = {o: by_seed(g) for o, g in group.groupby("objective")}
        if SCRATCH not in sides and not scratch.empty:
            sides[SCRATCH] = by_seed(scratch)  # scratch has no corruption rate: it is every rate's reference
        for objective in sorted(sides, key=lambda o: (o != SCRATCH, o)):
            if objective == SCRATCH:
                continue
            for ref in references:
                if ref == objective or ref not in sides or listed_the_other_way(objective, ref, references):
                    continue
                common = sorted(set(sides[objective]) & set(sides[ref]))
                if not common:
                    continue
                diffs = [sides[objective][k] - sides[ref][k] for k in common]
                mean, half = paired_interval(diffs)
                base = statistics.fmean(sides[ref][k] for k in common)
                resolved, needed = "–", "–"
                if half is not None:
                    resolved = ("yes, better" if mean + half < 0 else "yes, worse") if abs(mean) > half else "no"
                    if resolved == "no":
                        found = seeds_needed(mean, statistics.stdev(diffs))
                        needed = f"{found}" if found else "> 10000"
                        more = _missing_cpu_h(costs, [(b, objective, float(rate), str(kind), t, int(n), mode),
                                                      (b, ref, 0.0 if ref == SCRATCH else float(rate),
                                                       "" if ref == SCRATCH else str(kind), t, int(n), mode)],
                                              found, len(common))
                        needed += f" ({more.removeprefix(', ')})" if more else ""
                label = _label(objective, rate, kind)
                lines.append(f"| {b} | {t} | {n} | {mode} | {label} | {ref} | {_interval_text(mean, half)} {u} | "
                             f"{100 * mean / base:+.1f}% | {len(common)} | {resolved} | {needed} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def spread_table(ft: pd.DataFrame, references: tuple[str, ...] = REFERENCES) -> str:
    """Markdown tables of how steady each clean row's test MAE is across seeds (module docstring,
    ``paired``): per row, the standard deviation over its seeds with a 95 % interval
    (:func:`~atomzoo.runner.paired.spread_interval`); per pair of the paired table (every objective
    against each of ``references``, two references once), the ratio of the two standard deviations over
    the seeds both have (three or more) with a 95 % interval (:func:`~atomzoo.runner.paired.spread_ratio`):
    below 1 the objective is steadier than the reference, resolved when the interval excludes 1. Empty
    when no row has two seeds."""
    clean = ft[ft["corruption_rate"] == 0]
    rows = ["| backbone | task | n | mode | pretraining | seeds | std over seeds (unit) [95 %] |",
            "|---|---|---|---|---|---:|---:|"]
    pairs = ["| backbone | task | n | mode | pretraining | vs | seeds | std ratio [95 %] | resolved |",
             "|---|---|---|---|---|---|---:|---:|:---:|"]
    for (b, t, n, u, mode), group in clean.groupby(["backbone", "target", "label_budget", "unit", "mode"]):
        sides = {o: by_seed(g) for o, g in group.groupby("objective")}
        for objective in sorted(sides, key=lambda o: (o != SCRATCH, o)):
            values = [sides[objective][k] for k in sorted(sides[objective])]
            if len(values) < 2:
                continue
            sd, low, high = spread_interval(values)
            rows.append(f"| {b} | {t} | {n} | {mode} | {objective} | {len(values)} | "
                        f"{sd:.2f} [{low:.2f}, {high:.2f}] {u} |")
            for ref in references:
                if (objective == SCRATCH or ref == objective or ref not in sides
                        or listed_the_other_way(objective, ref, references)):
                    continue
                common = sorted(set(sides[objective]) & set(sides[ref]))
                if len(common) < 3:  # the interval needs three pairs
                    continue
                ratio, low, high = spread_ratio([sides[objective][k] for k in common],
                                                [sides[ref][k] for k in common])
                if low is None:  # a side without spread
                    text, resolved = f"{ratio:.2f}", "–"
                else:
                    text = f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
                    resolved = "yes, steadier" if high < 1 else "yes, more variable" if low > 1 else "no"
                pairs.append(f"| {b} | {t} | {n} | {mode} | {objective} | {ref} | {len(common)} | {text} | "
                             f"{resolved} |")
    if len(rows) == 2:
        return ""
    return "\n".join(rows) + ("\n\n" + "\n".join(pairs) if len(pairs) > 2 else "")


def run_cpu_s(values: dict[str, float]) -> float | None:
    """A finished cell's whole CPU time, s, from its step-less metrics (:mod:`atomzoo.runner.results`), or
    None where it is not known.

    ``cpu_s`` (the last process's, ``os.wait4``) when the cell never resumed; for a resumed cell, that
    plus the earlier attempts' training time from the run's checkpointed clock, ``cpu_s + train_cpu_s -
    train_attempt_cpu_s`` (:class:`atomzoo.training_clock.TrainingClock`; earlier attempts' start-up and
    the work lost after their last checkpoint are not counted); None for a resumed cell without a
    complete clock (finished before the clock existed), whose earlier attempts' time is lost.
    """
    if "cpu_s" not in values:
        return None
    if not values.get("resumed", 0):
        return values["cpu_s"]
    if values.get("train_clock_complete") == 1 and "train_cpu_s" in values and "train_attempt_cpu_s" in values:
        return values["cpu_s"] + values["train_cpu_s"] - values["train_attempt_cpu_s"]
    return None


def _timed_note(runs: int, timed: int) -> str:
    """`` (k of n timed)`` when only ``timed`` of ``runs`` runs have a known CPU time, else ``""``."""
    return f" ({timed} of {runs} timed)" if timed < runs else ""


def compute_table(frame: pd.DataFrame, ft: pd.DataFrame) -> str:
    """Markdown table: per backbone x pretraining objective (x corruption rate), the pretraining
    steps and measured CPU time (mean over its pretraining runs whose whole CPU time is known,
    :func:`run_cpu_s`; "(k of n timed)" when some are not; the CPU ms per step with the runs' range) and the fine-tuned test MAE of every
    task x budget (fine-tuning mode; mean and 95 % interval over seeds). Scratch has no pretraining."""
    cells = _per_cell(frame)
    pre: dict[tuple, list[dict[str, float]]] = defaultdict(list)
    for labels, values in cells.values():
        if labels["phase"] == "pretrain":
            pre[(labels["backbone"], labels["objective"], float(labels["corruption_rate"]),
                 str(labels["corruption"]))].append(values)
    sub = ft[ft["mode"] == "finetune"]
    columns = sorted({(t, int(n), u) for t, n, u in zip(sub["target"], sub["label_budget"], sub["unit"])})
    rows = sorted({(b, o, float(r), str(k)) for b, o, r, k in zip(sub["backbone"], sub["objective"],
                                                                  sub["corruption_rate"], sub["corruption"])}
                  | set(pre), key=lambda r: (r[0], r[3], r[2], r[1] != SCRATCH, r[1]))
    if not rows:
        return ""
    lines = ["| backbone | pretraining | steps | CPU h per run | CPU ms per step | "
             + " | ".join(f"{t} n={n} ({u}) [95 %]" for t, n, u in columns) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(columns)]
    for b, o, r, k in rows:
        runs = pre.get((b, o, r, k), [])
        steps = [v.get("steps", v.get("max_steps")) for v in runs if v.get("steps", v.get("max_steps")) is not None]
        timed = [(cpu, v.get("steps", v.get("max_steps"))) for v in runs if (cpu := run_cpu_s(v)) is not None]
        cpu = [c for c, _ in timed]
        per_step = [c / n for c, n in timed if n]
        texts = []
        for t, n, u in columns:
            values = sub[(sub["backbone"] == b) & (sub["objective"] == o) & (sub["target"] == t)
                         & (sub["label_budget"] == n) & (sub["corruption_rate"] == r)
                         & (sub["corruption"] == k)]["value"].tolist()
            texts.append(_interval_text(*paired_interval(values), sign="") if values else "–")
        label = _label(o, r, k)
        lines.append(f"| {b} | {label} | {statistics.fmean(steps):.0f} | " if steps else f"| {b} | {label} | – | ")
        lines[-1] += (f"{statistics.fmean(cpu) / 3600:.2f}{_timed_note(len(runs), len(cpu))} | " if cpu
                      else f"–{_timed_note(len(runs), 0) if runs else ''} | ")
        spread = f" ({1000 * min(per_step):.0f}-{1000 * max(per_step):.0f})" if len(per_step) > 1 else ""
        lines[-1] += f"{1000 * statistics.fmean(per_step):.0f}{spread} | " if per_step else "– | "
        lines[-1] += " | ".join(texts) + " |"
    return "\n".join(lines)


def finetuning_table(frame: pd.DataFrame) -> str:
    """Markdown table: how the fine-tuning runs of each backbone x objective x task x budget x mode ended."""
    cells = [(labels, values) for labels, values in _per_cell(frame).values() if labels["phase"] == "finetune"]
    groups: dict[tuple, list[dict[str, float]]] = defaultdict(list)
    for labels, values in cells:
        groups[(labels["backbone"], labels["objective"], (float(labels["corruption_rate"]), str(labels["corruption"])),
                labels["target"], int(labels["label_budget"]), labels["mode"])].append(values)
    if not groups:
        return ""
    lines = ["| backbone | pretraining | task | n | mode | runs | stopped early | hit the cap | mean last step | "
             "mean best (tested) step | CPU min per run |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def mean_of(values: list[dict[str, float]], key: str, scale: float = 1.0, digits: int = 0) -> str:
        found = [v[key] for v in values if key in v]
        return f"{statistics.fmean(found) / scale:.{digits}f}" if found else "–"

    def cpu_minutes(values: list[dict[str, float]]) -> str:
        found = [c for c in map(run_cpu_s, values) if c is not None]
        return (f"{statistics.fmean(found) / 60:.1f}" if found else "–") + _timed_note(len(values), len(found))

    for (b, o, r, t, n, mode), values in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != SCRATCH,
                                                                                  kv[0][1:])):
        early = sum(int(v.get("stopped_early", 0)) for v in values)
        cap = sum(int(v.get("hit_cap", 0)) for v in values)
        label = _label(o, *r)
        lines.append(f"| {b} | {label} | {t} | {n} | {mode} | {len(values)} | {early} | {cap} | "
                     f"{mean_of(values, 'steps')} | {mean_of(values, 'best_step')} | "
                     f"{cpu_minutes(values)} |")
    return "\n".join(lines)


def noise_table(ft: pd.DataFrame, costs: dict[tuple, float] | None = None) -> str:
    """Test MAE (mean ± std over seeds, fine-tuning mode) against the pretraining corruption, per artifact kind.

    One row per backbone x objective x target x budget x artifact kind pretrained clean and corrupted:
    the MAE at every rate (rate 0: the clean pretraining, shared by every kind), the relative change at
    the largest rate (the mean paired change over the clean runs' mean, both over the seeds that have
    both runs), the scratch MAE (the reference a useful pretraining must stay below) and the
    paired change at the largest rate (corrupted minus clean, paired by seed) with its 95 % interval
    and whether the interval excludes zero; where it does not, ``no (k)`` gives the seeds ``k`` that
    would resolve it if the measured mean and paired spread held (:func:`seeds_needed`), and with
    ``costs`` (:func:`replicate_cpu_h`) the CPU hours the missing ones would take: a corrupted and a
    clean pretraining with their fine-tunings per replicate. The last column is the interval's upper end,
    also as % of the clean MAE over the same seeds: the largest degradation the data allow (where the
    interval holds zero, what is reported instead of "no effect").
    """
    ft = labelled(ft)
    sub = ft[ft["mode"] == "finetune"]
    rates = sorted(sub["corruption_rate"].unique())
    if len(rates) < 2:
        return ""
    lines = ["| backbone | pretraining | artifact | target | n | " + " | ".join(f"rate {r:g}" for r in rates)
             + " | change at max rate | scratch | paired change at max rate [95 %] | resolved | upper end (% of clean) |",
             "|" + "---|" * (len(rates) + 10)]
    for (b, o, t, n, u), group in sub.groupby(["backbone", "objective", "target", "label_budget", "unit"]):
        if o == SCRATCH:
            continue
        clean = group[group["corruption_rate"] == 0]
        scratch = sub[(sub["backbone"] == b) & (sub["objective"] == SCRATCH) & (sub["target"] == t)
                      & (sub["label_budget"] == n) & (sub["unit"] == u)]["value"]
        reference = _fmt(scratch.mean(), scratch.std() if len(scratch) > 1 else 0.0, len(scratch)) if len(scratch) else "–"
        for kind, corrupted in group[group["corruption_rate"] > 0].groupby("corruption"):
            by_rate = {0.0: clean, **{float(r): g for r, g in corrupted.groupby("corruption_rate")}}
            cells = [_fmt(g["value"].mean(), g["value"].std() if len(g) > 1 else 0.0, len(g))
                     if (g := by_rate.get(float(r))) is not None and len(g) else "–" for r in rates]
            top = max(by_rate)
            change, paired, resolved, upper = "–", "–", "–", "–"
            if len(clean) and top > 0:
                diffs = paired_changes(clean, by_rate[top])
                if diffs:  # relative to the clean runs of the same seeds (a mean over other seeds would mix them in)
                    base = by_seed(clean)
                    paired_clean = statistics.fmean(base[k] for k in set(by_seed(by_rate[top])) & set(base))
                    change = f"{100 * statistics.fmean(diffs) / paired_clean:+.1f}%"
                    mean, half = paired_interval(diffs)
                    paired = f"{_interval_text(mean, half)} {u}"
                    if half is not None:
                        upper = f"{mean + half:+.1f} {u} ({100 * (mean + half) / paired_clean:+.1f}%)"
                        resolved = ("yes, worse" if mean > 0 else "yes, better") if abs(mean) > half else "no"
                        if resolved == "no" and (found := seeds_needed(mean, statistics.stdev(diffs))):
                            more = _missing_cpu_h(costs, [(b, o, float(rate), str(k), t, int(n), "finetune")
                                                          for rate, k in ((top, kind), (0.0, ""))], found, len(diffs))
                            resolved = f"no ({found}{more})"
            lines.append(f"| {b} | {o} | {kind or 'corruption'} | {t} ({u}) | {n} | " + " | ".join(cells)
                         + f" | {change} | {reference} | {paired} | {resolved} | {upper} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def noise_seed_table(ft: pd.DataFrame) -> str:
    """Markdown table behind the noise table's means, per replicate: for every backbone x target x budget
    x objective pretrained clean and corrupted, a row with the clean pretraining's test MAE per fine-tuning
    seed, then one row per artifact kind with its change at the largest rate (corrupted minus clean, the
    same seed) per seed. Whether a change follows the artifact or the luck of the clean run it is paired
    with (a clean run far below its objective's mean makes every kind's change of that seed positive)
    reads off the columns. Empty without corrupted runs."""
    ft = labelled(ft)
    sub = ft[ft["mode"] == "finetune"]
    corrupted = sub[(sub["corruption_rate"] > 0) & (sub["objective"] != SCRATCH)]
    if corrupted.empty:
        return ""
    seeds = sorted({int(s) for s in sub[sub["objective"] != SCRATCH]["seed"]})
    lines = ["| backbone | target | n | pretraining | row | " + " | ".join(f"seed {k}" for k in seeds) + " |",
             "|---|---|---|---|---|" + "---:|" * len(seeds)]
    for (b, t, n, u, o), group in sub[sub["objective"] != SCRATCH].groupby(
            ["backbone", "target", "label_budget", "unit", "objective"]):
        clean = by_seed(group[group["corruption_rate"] == 0])
        kinds = group[group["corruption_rate"] > 0]
        if not clean or kinds.empty:
            continue
        lines.append(f"| {b} | {t} ({u}) | {n} | {o} | clean MAE | "
                     + " | ".join(f"{clean[k]:.1f}" if k in clean else "" for k in seeds) + " |")
        for kind, runs in kinds.groupby("corruption"):
            top = runs[runs["corruption_rate"] == runs["corruption_rate"].max()]
            ours = by_seed(top)
            lines.append(f"| {b} | {t} ({u}) | {n} | {o} | {_condition(float(top['corruption_rate'].iloc[0]), kind)} "
                         "change | " + " | ".join(f"{ours[k] - clean[k]:+.1f}" if k in ours and k in clean else ""
                                                  for k in seeds) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def noise_sensitivity_table(ft: pd.DataFrame, reference: str = "denoising",
                            costs: dict[tuple, float] | None = None) -> str:
    """Markdown table: is an objective more sensitive to an artifact than ``reference``?

    For each backbone x target x label budget x artifact kind (at its largest rate) and each objective
    other than ``reference`` pretrained with that artifact: the objective's paired change (corrupted
    minus clean, same seed) and the reference's, and their difference per seed (a difference of
    differences: positive = the artifact costs this objective more than it costs the reference), mean
    and 95 % interval (paired t over the seeds all four runs finished), ``resolved`` when the interval
    excludes zero, else ``no (k)`` with the seeds that would resolve it at the measured spread
    (:func:`seeds_needed`), and with ``costs`` (:func:`replicate_cpu_h`) the CPU hours the missing ones
    would take (per replicate a corrupted and a clean pretraining with their fine-tunings of both
    objectives). Empty when ``reference`` or no other objective was pretrained corrupted.
    """
    sub = labelled(ft[ft["mode"] == "finetune"])
    sub = sub[sub["objective"] != SCRATCH]
    lines = ["| backbone | artifact | target | n | pretraining | its change | "
             f"{reference}'s change | difference [95 %] | seeds | resolved |",
             "|---|---|---|---|---|---:|---:|---:|---:|:---:|"]
    for (b, t, n, u), group in sub.groupby(["backbone", "target", "label_budget", "unit"]):
        corrupted = group[group["corruption_rate"] > 0]
        for kind, runs in corrupted.groupby("corruption"):
            top = runs["corruption_rate"].max()
            changes: dict[str, dict[int, float]] = {}
            for objective, mine in runs[runs["corruption_rate"] == top].groupby("objective"):
                clean = by_seed(group[(group["objective"] == objective) & (group["corruption_rate"] == 0)])
                ours = by_seed(mine)
                changes[objective] = {k: ours[k] - clean[k] for k in set(ours) & set(clean)}
            if reference not in changes:
                continue
            base = changes[reference]
            for objective in sorted(set(changes) - {reference}):
                common = sorted(set(changes[objective]) & set(base))
                if not common:
                    continue
                diffs = [changes[objective][k] - base[k] for k in common]
                mean, half = paired_interval(diffs)
                resolved = "–"
                if half is not None:
                    resolved = ("yes, more" if mean > 0 else "yes, less") if abs(mean) > half else "no"
                    if resolved == "no" and (found := seeds_needed(mean, statistics.stdev(diffs))):
                        more = _missing_cpu_h(costs, [(b, o, float(rate), str(k), t, int(n), "finetune")
                                                      for o in (objective, reference)
                                                      for rate, k in ((top, kind), (0.0, ""))], found, len(common))
                        resolved = f"no ({found}{more})"
                own = statistics.fmean(changes[objective][k] for k in common)
                ref = statistics.fmean(base[k] for k in common)
                lines.append(f"| {b} | {kind or 'corruption'} {top:g} | {t} ({u}) | {n} | {objective} | {own:+.2f} | "
                             f"{ref:+.2f} | {_interval_text(mean, half)} {u} | {len(common)} | {resolved} |")
    return "\n".join(lines) if len(lines) > 2 else ""


#: the collapse diagnostics the noise section compares (:mod:`atomzoo.objectives.diagnostics`), with their names
EMBEDDING_CURVES = (("emb_std", "std"), ("emb_erank", "eff. rank"), ("emb_sigreg", "SIGReg"))
#: logged training points averaged into a run's final diagnostic (one training batch each is noisy)
EMBEDDING_TAIL = 5


def noise_embedding_table(frame: pd.DataFrame, split: str = "train") -> str:
    """Markdown table: the embedding diagnostics at the end of pretraining, clean against corrupted.

    One row per backbone x objective x artifact kind x rate > 0. ``split="train"``: a run's value of each
    diagnostic (``train/emb_std``, ``train/emb_erank``, ``train/emb_sigreg``: :mod:`atomzoo.objectives.diagnostics`,
    on the objective's own embedding of its training batches, which in a corrupted run hold the corrupted
    structures) is the mean of its last :data:`EMBEDDING_TAIL` logged points; ``split="val"``: its last
    validation's ``val/emb_*`` (the clean validation molecules, the same for every run: the models compared
    on the same inputs; runs that did not log them are left out). The table gives mean ± std over the
    pretraining seeds, clean (rate 0, shared by every kind) -> corrupted. Empty when the runs logged none
    of these diagnostics or no corrupted pretraining finished."""
    curves = {f"curve:{split}/{name}": name for name, _ in EMBEDDING_CURVES}
    tail = EMBEDDING_TAIL if split == "train" else 1
    pre = labelled(frame)
    pre = pre[(pre["phase"] == "pretrain") & pre["metric"].isin(list(curves))]
    if pre.empty or not (pre["corruption_rate"] > 0).any():
        return ""
    finals: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (cell, metric), curve in pre.groupby(["cell", "metric"]):
        labels = curve.iloc[0]
        key = (labels["backbone"], labels["objective"], float(labels["corruption_rate"]), str(labels["corruption"]))
        finals[key][curves[metric]].append(float(curve.sort_values("step")["value"].tail(tail).mean()))

    def text(values: list[float]) -> str:
        return _fmt(*_mean_std(values), len(values)) if values else "–"

    lines = ["| backbone | pretraining | artifact | rate | "
             + " | ".join(f"{name}: clean -> corrupted" for _, name in EMBEDDING_CURVES) + " |",
             "|---|---|---|---:|" + "---|" * len(EMBEDDING_CURVES)]
    for (b, o, r, k) in sorted(key for key in finals if key[2] > 0):
        clean = finals.get((b, o, 0.0, ""), {})
        cells = [f"{text(clean.get(m, []))} -> {text(finals[(b, o, r, k)].get(m, []))}" for m, _ in EMBEDDING_CURVES]
        lines.append(f"| {b} | {o} | {k or 'corruption'} | {r:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pretraining_table(frame: pd.DataFrame) -> str:
    """One row per pretraining cell: steps reached, last validation loss (objective-specific scale), wall time."""
    pre = labelled(frame)[frame["phase"] == "pretrain"]
    if pre.empty:
        return ""
    lines = ["| backbone | pretraining | corruption rate | steps | last val/loss | wall time (min) |", "|---|---|---|---|---|---|"]
    for (b, o, r, k), group in pre.groupby(["backbone", "objective", "corruption_rate", "corruption"]):
        val = group[group["metric"] == "curve:val/loss"].sort_values("step")
        train = group[group["metric"] == "curve:train/loss"]
        wall = group.loc[group["metric"] == "wall_s", "value"]
        steps = f"{int(train['step'].max()) + 1}" if not train.empty else "–"
        last = f"{val['value'].iloc[-1]:.4g}" if not val.empty else "–"
        minutes = f"{wall.iloc[0] / 60:.1f}" if not wall.empty else "–"
        lines.append(f"| {b} | {o} | {k + ' ' if k else ''}{r:g} | {steps} | {last} | {minutes} |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _per_cell(frame: pd.DataFrame) -> dict[str, tuple[pd.Series, dict[str, float]]]:
    """Cell id -> (its labels, its step-less metrics: test metrics, wall_s, max_steps, batch_size)."""
    frame = labelled(frame)
    cells: dict[str, tuple[pd.Series, dict[str, float]]] = {}
    final = frame[frame["step"].isna()]
    for _, row in final.iterrows():
        cells.setdefault(row["cell"], (row, {}))[1][row["metric"]] = float(row["value"])
    return cells


def compare_table(frame: pd.DataFrame, comparisons: list[Comparison],
                  metrics: dict[str, str | None] | None = None) -> str:
    """Markdown table of the paired comparisons (see the module docstring); one row per comparison x
    task x compute setting (steps, batch size, label budget) x mode x corruption rate x held axis value."""
    metrics = metrics or {}
    cells = _per_cell(frame[frame["phase"] == "finetune"])
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    walls: dict[tuple, list[float]] = defaultdict(list)
    for comparison in comparisons:
        held = "objective" if comparison.axis == "backbone" else "backbone"
        for labels, values in cells.values():
            side = {comparison.ours: "ours", comparison.ref: "ref"}.get(str(labels[comparison.axis]))
            metric = next((m for m in values if m.startswith("test/") and _own_metric(m, labels["target"], metrics)),
                          None)
            if side is None or metric is None:
                continue
            key = (comparison.name, labels["target"], metric, values.get("max_steps"), values.get("batch_size"),
                   int(labels["label_budget"]), labels["mode"], (float(labels["corruption_rate"]),
                   str(labels["corruption"])), str(labels[held]), comparison.axis)
            groups.setdefault(key, {"ours": {}, "ref": {}})[side][int(labels["seed"])] = values[metric]
            if "wall_s" in values:
                walls[key + (side,)].append(values["wall_s"])
    lines = ["| pair | task | metric | steps x batch (train size) | ours: mean +- std (n) | ref: mean +- std (n) | "
             "paired ours - ref (n) | ours <= ref + std | wall s/run ours / ref |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | :---: | ---: |"]
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        name, task, metric, steps, batch, budget, mode, rate, held, axis = key
        ours, ref = groups[key]["ours"], groups[key]["ref"]
        sides = []
        for side in (ours, ref):
            if side:
                m, s = _mean_std(list(side.values()))
                sides.append(f"{m:.1f} +- {s:.1f} ({len(side)})")
            else:
                sides.append("-")
        diffs = [ours[s] - ref[s] for s in sorted(set(ours) & set(ref))]
        paired = f"{_mean_std(diffs)[0]:+.1f} +- {_mean_std(diffs)[1]:.1f} ({len(diffs)})" if diffs else "-"
        verdict = "-"
        if len(ours) >= 3 and len(ref) >= 3:
            mo, (mr, sr) = statistics.fmean(ours.values()), _mean_std(list(ref.values()))
            verdict = "yes" if mo <= mr + sr else "**no**"
        elif ours and ref:
            verdict = "(< 3 seeds)"
        wall = " / ".join(f"{statistics.fmean(walls[key + (i,)]):.0f}" if walls.get(key + (i,)) else "-"
                          for i in ("ours", "ref"))
        context = [held] if axis == "objective" or held != SCRATCH else []
        context += [mode] if mode != "finetune" else []
        context += [_condition(*rate)] if rate[0] else []
        label = name + (f" [{', '.join(context)}]" if context else "")
        compute = " x ".join("–" if v is None else f"{int(v)}" for v in (steps, batch))
        lines.append(f"| {label} | {task} | {metric} | {compute} ({budget}) | {sides[0]} | {sides[1]} | {paired} | "
                     f"{verdict} | {wall} |")
    return "\n".join(lines) if groups else ""


def curves_tables(frame: pd.DataFrame) -> str:
    """Per pretraining cell: its validation metrics at every evaluated step (with ``masked - <metric> (%)``
    where a ``val/<metric>_masked`` twin was logged, SCD's mask-token ablation) and the
    :data:`DIAGNOSTICS` at the first, last and every quarter's logged step."""
    pre = frame[(frame["phase"] == "pretrain") & frame["metric"].str.startswith("curve:")]
    lines: list[str] = []
    for cell in dict.fromkeys(pre["cell"]):
        series: dict[str, dict[int, float]] = {}
        for _, r in pre[pre["cell"] == cell].iterrows():
            series.setdefault(r["metric"].removeprefix("curve:"), {})[int(r["step"])] = float(r["value"])
        lines += [f"### {cell}", ""]
        val_keys = sorted(k for k in series if k.startswith("val/"))
        if val_keys:
            twins = [k for k in val_keys if f"{k}_masked" in series]
            # SCD's third term splits masked - loss into extra context (masked - noisy) and clean information
            split = [k for k in twins if f"{k}_noisy_condition" in series]
            heads = [f"masked - {k[4:]} (%)" for k in twins]
            heads += [h for k in split for h in (f"masked - {k[4:]}_noisy_condition (%)",
                                                 f"{k[4:]}_noisy_condition - {k[4:]} (%)")]
            lines.append("| step | " + " | ".join(val_keys + heads) + " |")
            lines.append("| ---: |" + " ---: |" * (len(val_keys) + len(heads)))
            for step in sorted(series[val_keys[0]]):
                row = [f"{series[k].get(step, math.nan):.4f}" for k in val_keys]
                for k in twins:
                    a, b = series[k].get(step, math.nan), series[f"{k}_masked"].get(step, math.nan)
                    row.append(f"{100 * (b - a) / b:+.1f}")
                for k in split:
                    a, b = series[k].get(step, math.nan), series[f"{k}_masked"].get(step, math.nan)
                    c = series[f"{k}_noisy_condition"].get(step, math.nan)
                    row += [f"{100 * (b - c) / b:+.2f}", f"{100 * (c - a) / b:+.2f}"]
                lines.append(f"| {step} | " + " | ".join(row) + " |")
            lines.append("")
        train_keys = [k for k in DIAGNOSTICS if k in series]
        if train_keys:
            steps = sorted(series[train_keys[0]])
            picks = sorted({steps[0], *steps[len(steps) // 4::max(1, len(steps) // 4)], steps[-1]})
            lines.append("| step | " + " | ".join(train_keys) + " |")
            lines.append("| ---: |" + " ---: |" * len(train_keys))
            for step in picks:
                cells = [f"{series[k].get(step, math.nan):.4g}" for k in train_keys]
                lines.append(f"| {step} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip("\n")


def write_report(output: Path | Matrix, title: str | None = None) -> Path:
    """Write ``results.md`` (or the matrix's ``<report_name>.md``) and the PNG plots next to ``results.csv``;
    return the Markdown path.

    ``output``: a parsed matrix (its ``report`` sections, ``compare`` pairs and task metrics apply)
    or, for the default sections, the folder holding ``results.csv``.
    """
    matrix = output if isinstance(output, Matrix) else None
    output = matrix.output if matrix else Path(output)
    sections = matrix.report if matrix else DEFAULT_SECTIONS
    report_name = matrix.report_name if matrix else DEFAULT_REPORT_NAME
    metrics = {name: matrix.metric_of(name) for name in matrix.tasks} if matrix else {}
    frame = load(output / "results.csv")
    scope = report_scope(matrix) if matrix else None
    if scope is not None:
        frame = frame[frame["cell"].isin(scope)]
    ft = final_test_mae(frame, metrics)
    costs = replicate_cpu_h(frame)  # the measured CPU hours of one more replicate of each row
    if title is None:
        title = matrix.name if matrix else output.name
        title += f" ({report_name})" if report_name != DEFAULT_REPORT_NAME else ""
    parts = [f"# {title}", ""]
    if "compare" in sections and matrix and matrix.compare:
        table = compare_table(frame, matrix.compare, metrics)
        if table:
            parts += ["## Ours against the reference (paired by seed)", "", table, ""]
    if "summary" in sections:
        for mode in ("finetune", "linear_probe"):
            table = summary_table(ft, mode)
            if table:
                parts += [f"## Test MAE, {mode.replace('_', ' ')}", "", table, ""]
    if "paired" in sections:
        references = matrix.references if matrix else REFERENCES
        table = paired_table(ft, references, costs)
        if table:
            names = {SCRATCH: "scratch", "denoising": "coordinate denoising"}
            named = [names.get(r, r) for r in references]
            against = " and to ".join([", to ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
            parts += [f"## Paired differences to {against} (same fine-tuning seeds)", "", table, ""]
        spread = spread_table(ft, references)
        if spread:
            parts += ["### Spread across seeds", "", spread, "",
                      "How steady each row is from replicate to replicate (clean pretraining): the standard deviation "
                      "of the test MAE over its seeds with a 95 % interval (chi-square), and the ratio of an "
                      "objective's standard deviation to a reference's over the seeds both have, with a 95 % "
                      "interval from the Pitman-Morgan test for paired samples (below 1: steadier); resolved when "
                      "the interval excludes 1. Both assume normal MAEs across seeds; at 3 seeds the intervals "
                      "span more than a factor of 10. Of many such intervals, about one in 20 excludes 1 by chance "
                      "alone.", ""]
    if "compute" in sections:
        table = compute_table(frame, ft)
        if table:
            parts += ["## Equal compute: pretraining steps, measured CPU time and the fine-tuned MAE", "", table, "",
                      "CPU time: user + system of the whole run, every attempt of a resumed run included (the last "
                      "process's plus the earlier attempts' training time kept in the checkpoints); a run resumed "
                      "before that clock existed has no known total and is left out (\"k of n timed\"). In brackets "
                      "after the CPU ms per step: the range over the row's runs. The CPU seconds of one computation "
                      "depend on what else the machine runs (the other cores' jobs share its caches and memory): "
                      "compare rows by runs made under the same load.", ""]
    if "finetuning" in sections:
        table = finetuning_table(frame)
        if table:
            parts += ["## Fine-tuning runs: early stopping and the cap", "", table, ""]
    noise = noise_table(ft, costs) if "noise" in sections else ""
    if noise:
        parts += ["## Noise robustness: test MAE against the pretraining corruption rate", "", noise, ""]
        parts += ["### Per replicate: the clean MAE and each artifact's change", "", noise_seed_table(ft), "",
                  "Each change pairs a corrupted pretraining's fine-tuned MAE with the clean pretraining's of the "
                  "same seed; every kind of one objective and seed shares that clean run, so its luck moves all "
                  "of them together.", ""]
    sensitivity = ""
    if noise:
        reference = next((r for r in (matrix.references if matrix else REFERENCES) if r != SCRATCH), None)
        sensitivity = noise_sensitivity_table(ft, reference, costs) if reference else ""
    if sensitivity:
        parts += [f"### Which objective is more sensitive to which artifact than {reference}", "", sensitivity, "",
                  f"Per seed: (corrupted - clean) of the objective minus (corrupted - clean) of {reference}, all four "
                  "runs fine-tuned with that seed; positive = the artifact costs this objective more. Resolved "
                  "when the 95 % interval (paired t) excludes zero; no (k): the seeds that would resolve it if "
                  "the measured mean and spread held.", ""]
    embedding = noise_embedding_table(frame) if "noise" in sections else ""
    if embedding:
        parts += ["### Embedding diagnostics at the end of pretraining, clean -> corrupted: training batches", "",
                  embedding, "",
                  f"Each run's value: the mean of its last {EMBEDDING_TAIL} logged points of `train/emb_*` (the "
                  "objective's own embedding of its training batches, which hold the corrupted structures in a "
                  "corrupted run: these numbers measure the corrupted inputs as well as the model); mean ± std "
                  "over pretraining seeds.", ""]
    clean_inputs = noise_embedding_table(frame, "val") if "noise" in sections else ""
    if clean_inputs:
        parts += ["### Embedding diagnostics at the end of pretraining, clean -> corrupted: clean validation "
                  "molecules", "", clean_inputs, "",
                  "Each run's value: `val/emb_*` of its last validation (the same clean validation molecules for "
                  "every run, so the models are compared on the same inputs); runs that did not log them "
                  "(before 2026-12-07's change) are left out, hence the n; mean ± std over pretraining seeds.", ""]
    if "noise" in sections and "probes" in sections:
        from .probe import noise_probes_table

        noise_probes = noise_probes_table(output, scope)
        if noise_probes:
            parts += ["### Probes of the frozen backbones, clean -> corrupted pretraining", "", noise_probes, "",
                      "`zoo-bench probe` on every finished pretraining network (the probes section below): per "
                      "pretraining seed, the corrupted network's probe MAE (meV for eV targets) minus the clean "
                      "network's of the same seed, mean and 95 % interval (paired t; no fine-tuning, so no "
                      "fine-tuning seed's noise); the diagnostics of the pooled backbone features of the same 1,024 "
                      "clean validation molecules for both, means over the seeds both have.", ""]
    if "probes" in sections:
        from .probe import probes_paired_table, probes_spread_table, probes_table

        probes = probes_table(output, None if scope is None else scope | {
            f"random/{backbone}/" for backbone in frame["backbone"].unique()})
        if probes:
            parts += ["## Probes of the frozen pretrained networks", "", probes, ""]
            references = tuple(r for r in (matrix.references if matrix else REFERENCES) if r != SCRATCH)
            paired = probes_paired_table(output, scope, references)
            if paired:
                parts += ["### Probes compared across objectives (paired by pretraining seed)", "", paired, "",
                          "Per pair: the objective's probe MAE minus the reference's, per pretraining seed (the two "
                          "networks of a seed share its initialisation), mean and 95 % interval (paired t); negative: "
                          "the objective's frozen features predict the target better; **bold**: the interval "
                          "excludes 0. Of many such intervals, about one in 20 excludes 0 by chance alone.", ""]
            spread = probes_spread_table(output, scope, references)
            if spread:
                parts += ["### Spread of the probes across pretraining seeds", "", spread, "",
                          "Per pair: the objective's standard deviation over the pretraining seeds divided by the "
                          "reference's, over the seeds both have (the backbone features' probe MAEs and embedding "
                          "diagnostics), with a 95 % interval (Pitman-Morgan test for paired samples; the two "
                          "networks of a seed share its initialisation); below 1: steadier than the reference; "
                          "**bold**: the interval excludes 1. Of many such intervals, about one in 20 excludes 1 by "
                          "chance alone.", ""]
    pretraining = pretraining_table(frame) if "pretraining" in sections else ""
    if pretraining:
        parts += ["## Pretraining runs", "", pretraining, ""]
    curves = curves_tables(frame) if "curves" in sections else ""
    if curves:
        parts += ["## Pretraining curves", "", curves, ""]
    walls = frame[frame["metric"] == "wall_s"].groupby("phase")["value"].agg(["count", "sum"])
    if "cost" in sections and not walls.empty:
        parts += ["## Cost", "", "| phase | cells | summed wall time of the cells (min; parallel cells overlap) |",
                  "|---|---|---|"]
        parts += [f"| {phase} | {int(r['count'])} | {r['sum'] / 60:.1f} |" for phase, r in walls.iterrows()]
    prefix = "" if report_name == DEFAULT_REPORT_NAME else f"{report_name}_"
    plots = (mae_plots(ft, output, prefix) + curve_plots(frame, output, prefix) + budget_plots(ft, output, prefix)
             + noise_plots(ft, output, prefix) + noise_change_plots(ft, output, prefix) if "plots" in sections else [])
    path = output / f"{report_name}.md"
    # plots the previous version of this report showed and this one does not (rows or plot kinds since dropped)
    shown = re.findall(r"\]\(([^()/]+\.png)\)", path.read_text()) if path.exists() else []
    for stale in {output / name for name in shown} - set(plots):
        stale.unlink(missing_ok=True)
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(parts).rstrip("\n") + "\n")
    return path
