"""Paired statistics over seeds: the one place the report's intervals and replicate counts are computed.

Two rows of a results table are paired by fine-tuning seed (the same seed: the same head initialisation,
the same labelled molecules in the same order; with ``pretrain_seeds: same`` also the same pretraining
seed, hence one replicate). A difference's 95 % interval is the paired t interval, mean +- t(0.975, n-1)
x s_d / sqrt(n) (Student's t from scipy.stats; s_d the std of the n paired differences); "resolved" means
the interval excludes zero; :func:`seeds_needed` inverts the interval for the replicates a resolved
interval needs if the measured mean and spread held.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` >= 1 degrees of freedom, ``t(0.975, df)``
    (scipy.stats.t; 4.303 for 2, 2.776 for 4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_interval(diffs: list[float]) -> tuple[float, float | None]:
    """Mean and 95 % half-width (paired t: ``t(0.975, n-1) * sd / sqrt(n)``) of paired differences;
    the half-width is ``None`` for n = 1."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None
    return mean, t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def seeds_needed(mean: float, sd: float, limit: int = 10000) -> int | None:
    """Smallest n >= 2 with ``t(0.975, n-1) * sd / sqrt(n) < |mean|``: the seeds a paired 95 % interval
    excluding 0 needs if the measured mean difference and paired std held; ``None`` beyond ``limit``
    (or for a zero mean)."""
    if mean == 0 or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, limit + 1):
        if t_quantile(n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None


def by_seed(sub: pd.DataFrame) -> dict[int, float]:
    """Test MAE per fine-tuning seed (averaged over pretraining seeds where several share one)."""
    return {int(k): float(v) for k, v in sub.groupby("seed")["value"].mean().items()}


def paired_changes(clean: pd.DataFrame, corrupted: pd.DataFrame) -> list[float]:
    """Corrupted minus clean test MAE per fine-tuning seed present in both (ascending seed order)."""
    ours, base = by_seed(corrupted), by_seed(clean)
    return [ours[k] - base[k] for k in sorted(set(ours) & set(base))]
