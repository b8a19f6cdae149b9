"""The report's plots (PNG, matplotlib's file-only Agg backend, imported lazily): each function draws
one kind for every backbone x task (x mode) it applies to and returns the paths it wrote, named
``<prefix><kind>_<...>.png`` (the prefix: a matrix's ``report_name`` and ``_``, or nothing).

- :func:`mae_plots` ``mae_<backbone>_<mode>.png``: each objective's test MAE per seed and its mean with
  a 95 % interval;
- :func:`curve_plots` ``curves_<backbone>_<target>_n<budget>.png``: validation MAE during fine-tuning;
- :func:`budget_plots` ``budget_<backbone>_<target>_<mode>.png``: the paired change against scratch
  against the label budget;
- :func:`noise_plots` ``noise_<backbone>_<target>_n<budget>.png``: test MAE against the pretraining
  corruption rate;
- :func:`noise_change_plots` ``noise_change_<backbone>_<target>_n<budget>.png``: the paired change per
  artifact kind and objective.

Intervals come from :mod:`atomzoo.runner.paired`; colours are one per objective, the same in every plot
(:func:`objective_colors`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from .matrix import SCRATCH
from .paired import by_seed, paired_changes, paired_interval, t_quantile
from .results import labelled


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported lazily: only plots need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, rect=None) -> Path:
    """Lay out, write (PNG, 120 dpi) and close ``fig``; return ``path``."""
    fig.tight_layout(**({"rect": rect} if rect else {}))
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def objective_colors(frame: pd.DataFrame) -> dict[str, str]:
    """One matplotlib colour per objective (scratch first, then alphabetical), the same in every plot."""
    objectives = sorted(set(frame["objective"]), key=lambda o: (o != SCRATCH, o))
    return {o: f"C{k % 10}" for k, o in enumerate(objectives)}


def mae_plots(ft: pd.DataFrame, out: Path, prefix: str = "") -> list[Path]:
    """``mae_<backbone>_<mode>.png``: per task x label budget (one panel each, clean pretraining), every
    objective's test MAE per seed (dots) and its mean with the 95 % interval of the mean (t, over seeds;
    none for one seed), the objectives along x, scratch's mean as a dashed line. The y axis spans the
    data, not zero: the differences between rows, a few percent, are what the plot must show."""
    plt = _pyplot()
    colors = objective_colors(ft)
    paths = []
    for (backbone, mode), sub in ft[ft["corruption_rate"] == 0].groupby(["backbone", "mode"]):
        groups = sorted(set(zip(sub["target"], sub["label_budget"], sub["unit"])))
        widest = max(sub.groupby(["target", "label_budget"])["objective"].nunique())
        fig, axes = plt.subplots(1, len(groups), figsize=(max(4.0, 0.62 * widest + 1.6) * len(groups), 4.0),
                                 squeeze=False)
        for ax, (target, budget, unit) in zip(axes[0], groups):
            cell = sub[(sub["target"] == target) & (sub["label_budget"] == budget)]
            objectives = sorted(set(cell["objective"]), key=lambda o: (o != SCRATCH, o))
            for k, objective in enumerate(objectives):
                values = cell[cell["objective"] == objective]["value"].astype(float).tolist()
                if not values:
                    continue
                offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
                ax.scatter([k + o for o in offsets], values, s=14, color=colors[objective], alpha=0.55, zorder=2)
                mean = statistics.fmean(values)
                half = (t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
                        if len(values) > 1 else None)
                ax.errorbar(k + 0.3, mean, yerr=half, fmt="o", color=colors[objective], capsize=3, zorder=3)
                if objective == SCRATCH:
                    ax.axhline(mean, color=colors[objective], linestyle="--", linewidth=0.8, zorder=1)
            ax.set_xticks(range(len(objectives)), objectives, rotation=30, ha="right")
            ax.set_title(f"{target}, n={budget}")
            ax.set_ylabel(f"test MAE ({unit})")
        fig.suptitle(f"{backbone}, {mode.replace('_', ' ')}: seeds (dots), mean with its 95 % interval", fontsize=10)
        paths.append(_save(fig, out / f"{prefix}mae_{backbone}_{mode}.png"))
    return paths


def curve_plots(frame: pd.DataFrame, out: Path, prefix: str = "") -> list[Path]:
    """``curves_<backbone>_<target>_n<budget>.png``: the validation MAE of the fine-tuning target
    (``curve:val/<target>_mae_<unit>`` rows of ``frame``, a ``results.csv``) against the optimiser step, the
    mean over seeds per objective (clean pretraining, fine-tuning mode; log y axis), one plot per backbone x
    target x label budget. Runs stopped early end early, so a late step's mean is over the runs still
    going."""
    plt = _pyplot()
    curves = frame[(frame["phase"] == "finetune") & (frame["mode"] == "finetune") & (frame["corruption_rate"] == 0)
                   & frame["metric"].str.startswith("curve:val/")]
    curves = curves[curves.apply(lambda r: r["metric"].startswith(f"curve:val/{r['target']}_mae_"), axis=1)]
    colors = objective_colors(frame[frame["phase"] == "finetune"])
    paths = []
    for (backbone, target, budget), sub in curves.groupby(["backbone", "target", "label_budget"]):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for objective, group in sorted(sub.groupby("objective"), key=lambda g: (g[0] != SCRATCH, g[0])):
            mean = group.groupby("step")["value"].mean()
            ax.plot(mean.index, mean.values, label=objective, color=colors[objective])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(sub["metric"].iloc[0].replace("curve:", ""))
        ax.set_yscale("log")
        ax.set_title(f"{backbone}: fine-tuning on {target}, n={budget}")
        ax.legend(frameon=False)
        paths.append(_save(fig, out / f"{prefix}curves_{backbone}_{target}_n{budget}.png"))
    return paths


def budget_plots(ft: pd.DataFrame, out: Path, prefix: str = "") -> list[Path]:
    """``budget_<backbone>_<target>_<mode>.png``: each objective's paired change against training from scratch
    (per seed ``100 * (objective - scratch) / scratch``, %), mean and 95 % interval (paired t), against the
    label budget (log axis), for every backbone x target x mode fine-tuned at two or more budgets from
    clean pretraining. Below zero, pretraining lowered the error; where pretraining matters most shows
    as the budget with the lowest points."""
    plt = _pyplot()
    sub = labelled(ft)
    sub = sub[sub["corruption_rate"] == 0]
    colors = objective_colors(ft)
    paths = []
    for (backbone, target, mode, unit), group in sub.groupby(["backbone", "target", "mode", "unit"]):
        budgets = sorted(int(n) for n in group["label_budget"].unique())
        if len(budgets) < 2 or SCRATCH not in set(group["objective"]):
            continue
        objectives = sorted(set(group["objective"]) - {SCRATCH})
        fig, ax = plt.subplots(figsize=(5, 3.6))
        drawn = False
        for j, objective in enumerate(objectives):
            xs, means, halves = [], [], []
            for n in budgets:
                at = group[group["label_budget"] == n]
                ours, scratch = by_seed(at[at["objective"] == objective]), by_seed(at[at["objective"] == SCRATCH])
                common = sorted(set(ours) & set(scratch))
                if not common:
                    continue
                mean, half = paired_interval([100.0 * (ours[k] - scratch[k]) / scratch[k] for k in common])
                xs.append(n * 1.06 ** (j - (len(objectives) - 1) / 2))  # side by side on the log axis
                means.append(mean)
                halves.append(0.0 if half is None else half)
            if xs:
                drawn = True
                ax.errorbar(xs, means, yerr=halves, marker="o", capsize=3, label=objective, color=colors[objective])
        if not drawn:
            plt.close(fig)
            continue
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(n) for n in budgets])
        ax.set_xticks([], minor=True)  # the log axis's minor ticks would label e.g. 60 and 200 between the budgets
        ax.set_xlabel("labelled training examples")
        ax.set_ylabel("vs scratch, same seed (%)")
        ax.set_title(f"{backbone}: {target} ({unit}), {mode.replace('_', ' ')}\n"
                     "paired change against scratch, mean with its 95 % interval", fontsize=9)
        ax.legend(frameon=False, fontsize=8)
        paths.append(_save(fig, out / f"{prefix}budget_{backbone}_{target}_{mode}.png"))
    return paths


def noise_plots(ft: pd.DataFrame, out: Path, prefix: str = "") -> list[Path]:
    """``noise_<backbone>_<target>_n<budget>.png``: test MAE against the pretraining corruption rate."""
    plt = _pyplot()
    sub = ft[ft["mode"] == "finetune"]
    sub = labelled(sub)
    stats = sub.groupby(["backbone", "target", "label_budget", "unit", "objective", "corruption", "corruption_rate"])[
        "value"].agg(["mean", "std"]).fillna(0.0).reset_index()
    colors = objective_colors(ft)
    styles = {kind: style for kind, style in zip(sorted(set(stats["corruption"]) - {""}), ("-", "--", ":", "-.", (0, (5, 1))))}
    paths = []
    for (backbone, target, budget, unit), group in stats.groupby(["backbone", "target", "label_budget", "unit"]):
        swept = [o for o, g in group.groupby("objective") if o != SCRATCH and len(g) >= 2]
        if not swept:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for objective in sorted(swept):
            g = group[group["objective"] == objective]
            clean = g[g["corruption_rate"] == 0]
            for kind in sorted(set(g["corruption"]) - {""}) or [""]:
                line = pd.concat([clean, g[(g["corruption"] == kind) & (g["corruption_rate"] > 0)]]).sort_values(
                    "corruption_rate")
                ax.errorbar(line["corruption_rate"], line["mean"], yerr=line["std"], marker="o", capsize=3,
                            label=objective + (f", {kind}" if kind else ""), color=colors[objective],
                            linestyle=styles.get(kind, "-"))
        scratch = group[group["objective"] == SCRATCH]
        if not scratch.empty:
            ax.axhline(scratch["mean"].iloc[0], color=colors[SCRATCH], linestyle="--", label="none (scratch)")
        ax.set_xlabel("fraction of pretraining structures corrupted")
        ax.set_ylabel(f"test MAE ({unit})")
        ax.set_title(f"{backbone}: {target}, n={budget} (mean ± std over seeds)")
        ax.legend(frameon=False)
        paths.append(_save(fig, out / f"{prefix}noise_{backbone}_{target}_n{budget}.png"))
    return paths


def noise_change_plots(ft: pd.DataFrame, out: Path, prefix: str = "") -> list[Path]:
    """``noise_change_<backbone>_<target>_n<budget>.png``: the paired change of the test MAE at the largest
    corruption rate (corrupted minus clean pretraining, same seed), per artifact kind (x) and objective
    (colour): each seed's change as a small dot, the mean as a marker with its 95 % interval (paired t;
    none for one seed). Above zero, the artifact made the fine-tuned model worse. One plot per backbone x
    target x label budget whose objectives were pretrained corrupted; none otherwise."""
    plt = _pyplot()
    sub = labelled(ft[ft["mode"] == "finetune"])
    colors = objective_colors(ft)
    paths = []
    for (backbone, target, budget, unit), group in sub.groupby(["backbone", "target", "label_budget", "unit"]):
        corrupted = group[(group["corruption_rate"] > 0) & (group["objective"] != SCRATCH)]
        if corrupted.empty:
            continue
        kinds = sorted(set(corrupted["corruption"]))
        objectives = sorted(set(corrupted["objective"]))
        width = 0.8 / len(objectives)
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(kinds), 3.6))
        for j, objective in enumerate(objectives):
            mine = group[group["objective"] == objective]
            clean = mine[mine["corruption_rate"] == 0]
            for i, kind in enumerate(kinds):
                runs = mine[mine["corruption"] == kind]
                if runs.empty or clean.empty:
                    continue
                diffs = paired_changes(clean, runs[runs["corruption_rate"] == runs["corruption_rate"].max()])
                if not diffs:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                mean, half = paired_interval(diffs)
                ax.scatter([x] * len(diffs), diffs, s=9, color=colors[objective], alpha=0.5)
                ax.errorbar([x], [mean], yerr=None if half is None else [[half], [half]], marker="o", capsize=3,
                            color=colors[objective], label=objective)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(kinds)), [k or "corruption" for k in kinds], rotation=15)
        ax.set_ylabel(f"corrupted - clean, test MAE ({unit})")
        rate = corrupted["corruption_rate"].max()
        ax.set_title(f"{backbone}: {target}, n={budget}, {rate:g} of pretraining corrupted\n"
                     "dots: seeds; marker: mean with its paired 95 % interval", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), frameon=False, fontsize=8)
        paths.append(_save(fig, out / f"{prefix}noise_change_{backbone}_{target}_n{budget}.png"))
    return paths
