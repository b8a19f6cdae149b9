"""Tables and plots from a matrix's ``results.csv`` alone (nothing else is read).

- ``results.md``: per fine-tuning mode, test MAE mean +- std over seeds for every backbone x
  pretraining objective (rows) and target x label budget (columns); the best mean of each column in
  bold; the relative change against training from scratch (objective ``none``) in brackets
  (negative = lower error = better). A noise-robustness table when corruption rates were swept, and
  one row per pretraining run (steps, last validation loss, wall time).
- ``bars_<backbone>_<mode>.png``: grouped bars with error bars (std over seeds).
- ``curves_<backbone>_<target>_n<budget>.png``: validation MAE during fine-tuning, per objective.
- ``noise_<backbone>_<target>_n<budget>.png``: test MAE against the pretraining corruption rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .matrix import SCRATCH


def load(csv_path: Path) -> pd.DataFrame:
    frame = pd.read_csv(csv_path, dtype={"target": str, "mode": str, "step": "float64"}, keep_default_na=False,
                        na_values={"step": [""]})
    return frame


def final_test_mae(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per fine-tuning cell: its test MAE of its own target, with the metric's unit."""
    ft = frame[(frame["phase"] == "finetune") & frame["metric"].str.startswith("test/")]
    own = pd.Series([m.startswith(f"test/{t}_mae_") for m, t in zip(ft["metric"], ft["target"])], index=ft.index, dtype=bool)
    ft = ft[own]
    if ft.empty:  # nothing fine-tuned yet (e.g. only pretraining cells have finished)
        return ft.assign(unit=pd.Series(dtype=str))
    ft = ft.assign(unit=ft.apply(lambda r: r["metric"][len(f"test/{r['target']}_mae_"):].replace("_per_", "/"), axis=1))
    return ft


def _fmt(mean: float, std: float) -> str:
    digits = 2 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(ft: pd.DataFrame, mode: str, rate: float = 0.0) -> str:
    """Markdown table of test MAE for one fine-tuning mode at one corruption rate."""
    sub = ft[(ft["mode"] == mode) & ((ft["corruption_rate"] == rate) | (ft["objective"] == SCRATCH))]
    if sub.empty:
        return ""
    stats = sub.groupby(["backbone", "objective", "target", "label_budget", "unit"])["value"].agg(["mean", "std", "count"])
    stats["std"] = stats["std"].fillna(0.0)
    columns = sorted({(t, int(n), u) for (_, _, t, n, u) in stats.index}, key=lambda c: (c[0], c[1]))
    rows = sorted({(b, o) for (b, o, _, _, _) in stats.index}, key=lambda r: (r[0], r[1] != SCRATCH, r[1]))
    header = "| backbone | pretraining | " + " | ".join(f"{t} n={n} ({u})" for t, n, u in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    best = {c: stats.xs((c[0], c[1], c[2]), level=("target", "label_budget", "unit"))["mean"].min() for c in columns}
    for backbone, objective in rows:
        cells = []
        for target, budget, unit in columns:
            key = (backbone, objective, target, budget, unit)
            if key not in stats.index:
                cells.append("–")
                continue
            mean, std, count = stats.loc[key, ["mean", "std", "count"]]
            text = _fmt(mean, std)
            if np.isclose(mean, best[(target, budget, unit)]):
                text = f"**{text}**"
            scratch = (backbone, SCRATCH, target, budget, unit)
            if objective != SCRATCH and scratch in stats.index:
                base = stats.loc[scratch, "mean"]
                text += f" ({100.0 * (mean - base) / base:+.0f}%)"
            if count < ft["seed"].nunique():
                text += f" [{int(count)} seeds]"
            cells.append(text)
        lines.append(f"| {backbone} | {objective} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_table(ft: pd.DataFrame) -> str:
    """Test MAE (mean over seeds, fine-tuning mode) against the pretraining corruption rate.

    One row per backbone x objective x target x budget pretrained at two or more rates; the scratch
    MAE of the same target and budget is the reference a useful pretraining must stay below.
    """
    rates = sorted(ft["corruption_rate"].unique())
    if len(rates) < 2:
        return ""
    sub = ft[ft["mode"] == "finetune"]
    stats = sub.groupby(["backbone", "objective", "target", "label_budget", "unit", "corruption_rate"])["value"].agg(
        ["mean", "std"]).fillna(0.0)
    lines = ["| backbone | pretraining | target | n | " + " | ".join(f"rate {r:g}" for r in rates)
             + " | change at max rate | scratch |", "|" + "---|" * (len(rates) + 6)]
    for (b, o, t, n, u), group in stats.groupby(level=[0, 1, 2, 3, 4]):
        if o == SCRATCH or len(group) < 2:
            continue
        values = {r: group.xs(r, level="corruption_rate").iloc[0] for r in rates
                  if r in group.index.get_level_values("corruption_rate")}
        cells = [_fmt(values[r]["mean"], values[r]["std"]) if r in values else "–" for r in rates]
        change = (f"{100 * (values[rates[-1]]['mean'] - values[rates[0]]['mean']) / values[rates[0]]['mean']:+.0f}%"
                  if rates[0] in values and rates[-1] in values else "–")
        scratch = stats.xs((b, SCRATCH, t, n, u), level=[0, 1, 2, 3, 4]) if (b, SCRATCH, t, n, u, 0.0) in stats.index else None
        reference = _fmt(scratch["mean"].iloc[0], scratch["std"].iloc[0]) if scratch is not None else "–"
        lines.append(f"| {b} | {o} | {t} ({u}) | {n} | " + " | ".join(cells) + f" | {change} | {reference} |")
    return "\n".join(lines)


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


def bar_plots(ft: pd.DataFrame, out: Path) -> list[Path]:
    plt = _pyplot()
    colors = objective_colors(ft)
    paths = []
    for (backbone, mode), sub in ft[ft["corruption_rate"] == 0].groupby(["backbone", "mode"]):
        stats = sub.groupby(["target", "label_budget", "unit", "objective"])["value"].agg(["mean", "std"]).fillna(0.0)
        groups = sorted({(t, n, u) for t, n, u, _ in stats.index})
        objectives = sorted({o for *_, o in stats.index}, key=lambda o: (o != SCRATCH, o))
        fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.4), squeeze=False)
        for ax, (target, budget, unit) in zip(axes[0], groups):
            for k, objective in enumerate(objectives):
                key = (target, budget, unit, objective)
                if key in stats.index:
                    ax.bar(k, stats.loc[key, "mean"], yerr=stats.loc[key, "std"], capsize=3, label=objective,
                           color=colors[objective])
            ax.set_title(f"{target}, n={budget}")
            ax.set_ylabel(f"test MAE ({unit})")
            ax.set_xticks([])
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(objectives), frameon=False)
        fig.suptitle(f"{backbone}, {mode.replace('_', ' ')} (mean ± std over seeds)")
        paths.append(_save(fig, out / f"bars_{backbone}_{mode}.png", rect=(0, 0.1, 1, 1)))
    return paths


def curve_plots(frame: pd.DataFrame, out: Path) -> list[Path]:
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
        paths.append(_save(fig, out / f"curves_{backbone}_{target}_n{budget}.png"))
    return paths


def noise_plots(ft: pd.DataFrame, out: Path) -> list[Path]:
    """``noise_<backbone>_<target>_n<budget>.png``: test MAE against the pretraining corruption rate."""
    plt = _pyplot()
    sub = ft[ft["mode"] == "finetune"]
    stats = sub.groupby(["backbone", "target", "label_budget", "unit", "objective", "corruption_rate"])["value"].agg(
        ["mean", "std"]).fillna(0.0).reset_index()
    colors = objective_colors(ft)
    paths = []
    for (backbone, target, budget, unit), group in stats.groupby(["backbone", "target", "label_budget", "unit"]):
        swept = [o for o, g in group.groupby("objective") if o != SCRATCH and len(g) >= 2]
        if not swept:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for objective in sorted(swept):
            g = group[group["objective"] == objective].sort_values("corruption_rate")
            ax.errorbar(g["corruption_rate"], g["mean"], yerr=g["std"], marker="o", capsize=3, label=objective,
                        color=colors[objective])
        scratch = group[group["objective"] == SCRATCH]
        if not scratch.empty:
            ax.axhline(scratch["mean"].iloc[0], color=colors[SCRATCH], linestyle="--", label="none (scratch)")
        ax.set_xlabel("fraction of pretraining structures corrupted")
        ax.set_ylabel(f"test MAE ({unit})")
        ax.set_title(f"{backbone}: {target}, n={budget} (mean ± std over seeds)")
        ax.legend(frameon=False)
        paths.append(_save(fig, out / f"noise_{backbone}_{target}_n{budget}.png"))
    return paths


def pretraining_table(frame: pd.DataFrame) -> str:
    """One row per pretraining cell: steps reached, last validation loss (objective-specific scale), wall time."""
    pre = frame[frame["phase"] == "pretrain"]
    if pre.empty:
        return ""
    lines = ["| backbone | pretraining | corruption rate | steps | last val/loss | wall time (min) |", "|---|---|---|---|---|---|"]
    for (b, o, r), group in pre.groupby(["backbone", "objective", "corruption_rate"]):
        val = group[group["metric"] == "curve:val/loss"].sort_values("step")
        train = group[group["metric"] == "curve:train/loss"]
        wall = group.loc[group["metric"] == "wall_s", "value"]
        steps = f"{int(train['step'].max()) + 1}" if not train.empty else "–"
        last = f"{val['value'].iloc[-1]:.4g}" if not val.empty else "–"
        minutes = f"{wall.iloc[0] / 60:.1f}" if not wall.empty else "–"
        lines.append(f"| {b} | {o} | {r:g} | {steps} | {last} | {minutes} |")
    return "\n".join(lines)


def write_report(output: Path, title: str | None = None) -> Path:
    """Write ``results.md`` and the PNG plots next to ``output/results.csv``; return the Markdown path."""
    output = Path(output)
    frame = load(output / "results.csv")
    ft = final_test_mae(frame)
    parts = [f"# {title or output.name}", ""]
    for mode in ("finetune", "linear_probe"):
        table = summary_table(ft, mode)
        if table:
            parts += [f"## Test MAE, {mode.replace('_', ' ')}", "", table, ""]
    noise = noise_table(ft)
    if noise:
        parts += ["## Noise robustness: test MAE against the pretraining corruption rate", "", noise, ""]
    pretraining = pretraining_table(frame)
    if pretraining:
        parts += ["## Pretraining runs", "", pretraining, ""]
    walls = frame[frame["metric"] == "wall_s"].groupby("phase")["value"].agg(["count", "sum"])
    parts += ["## Cost", "", "| phase | cells | summed wall time of the cells (min; parallel cells overlap) |", "|---|---|---|"]
    parts += [f"| {phase} | {int(r['count'])} | {r['sum'] / 60:.1f} |" for phase, r in walls.iterrows()]
    plots = bar_plots(ft, output) + curve_plots(frame, output) + noise_plots(ft, output)
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = output / "results.md"
    path.write_text("\n".join(parts) + "\n")
    return path
