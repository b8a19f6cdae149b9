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


def listed_the_other_way(objective: str, ref: str, references: tuple[str, ...]) -> bool:
    """True when ``objective`` is itself a reference listed before ``ref``: the pair of two references
    appears once, as the later one minus the earlier one (``ref`` - ``objective``), not in both directions."""
    return objective in references and references.index(objective) < references.index(ref)


def spread_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Sample standard deviation of ``values`` and its 95 % interval, ``s * sqrt((n-1) / chi2(q, n-1))``
    for q = 0.975 and 0.025 (scipy.stats.chi2; normal samples); the bounds are ``None`` for n < 2.
    For n = 5 the interval is [0.60 s, 2.87 s]."""
    if len(values) < 2:
        return float("nan"), None, None
    from scipy.stats import chi2

    df = len(values) - 1
    sd = statistics.stdev(values)
    return sd, sd * math.sqrt(df / chi2.ppf(0.975, df)), sd * math.sqrt(df / chi2.ppf(0.025, df))


def spread_ratio(ours: list[float], reference: list[float]) -> tuple[float, float | None, float | None]:
    """Ratio of standard deviations ``sd(ours) / sd(reference)`` of two paired samples (the same seeds,
    in the same order) with its 95 % interval from the Pitman-Morgan test (Pitman, Biometrika 31, 9,
    1939; Morgan, Biometrika 31, 13, 1939): with F the ratio of the sample variances, r the correlation
    of the pairs and t = t(0.975, n-2), K = 1 + 2 (1 - r^2) t^2 / (n - 2), the variance ratio's interval
    is F (K -+ sqrt(K^2 - 1)); its square roots are returned. The bounds are ``None`` for n < 3 (or when
    a sample has no spread).

    Raises:
        ValueError: the two samples differ in length.
    """
    if len(ours) != len(reference):
        raise ValueError(f"paired samples need the same length, got {len(ours)} and {len(reference)}")
    if len(ours) < 2:
        return float("nan"), None, None
    sd_ours, sd_ref = statistics.stdev(ours), statistics.stdev(reference)
    if sd_ref == 0:
        return float("inf") if sd_ours else float("nan"), None, None
    ratio = sd_ours / sd_ref
    if len(ours) < 3 or sd_ours == 0:
        return ratio, None, None
    n = len(ours)
    r = statistics.correlation(ours, reference)
    t = t_quantile(n - 2)
    k = 1 + 2 * (1 - r * r) * t * t / (n - 2)
    root = math.sqrt(k * k - 1)
    return ratio, ratio * math.sqrt(k - root), ratio * math.sqrt(k + root)


def by_seed(sub: pd.DataFrame) -> dict[int, float]:
    """Test MAE per fine-tuning seed (averaged over pretraining seeds where several share one)."""
    return {int(k): float(v) for k, v in sub.groupby("seed")["value"].mean().items()}


def paired_changes(clean: pd.DataFrame, corrupted: pd.DataFrame) -> list[float]:
    """Corrupted minus clean test MAE per fine-tuning seed present in both (ascending seed order)."""
    ours, base = by_seed(corrupted), by_seed(clean)
    return [ours[k] - base[k] for k in sorted(set(ours) & set(base))]
