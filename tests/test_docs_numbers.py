"""The README quotes only numbers that docs/results.md records (issue 31, "Docs that drift").

Every measured number the README quotes -- durations (``2 min 55 s``, ``12 minutes``, ``3 and 2 min``),
errors in energy units (``168 meV``, ``meV/A``, ``kcal/mol``) and speed ratios (``10x slower``,
``2.2-2.4x``) -- must be found in ``docs/results.md`` (the page that records each run with its date,
machine and command), equal to the precision the README gives: ``2 min`` matches 131 s (it rounds to
2 min), ``168 meV`` matches 168.4 meV, ``150 meV`` does not match 149.4 meV. A README that keeps an old
number after results.md was updated fails here; so does a new number quoted from a run nobody recorded.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"\d[\d,]*(?:\.\d+)?"
#: unit -> (kind, factor to the kind's base unit: seconds, meV, meV/A, ratio)
UNITS = {
    "h": ("time", 3600), "hours": ("time", 3600), "hour": ("time", 3600),
    "min": ("time", 60), "minutes": ("time", 60), "minute": ("time", 60),
    "s": ("time", 1), "seconds": ("time", 1), "second": ("time", 1),
    "meV": ("energy", 1), "eV": ("energy", 1000), "kcal/mol": ("energy", 43.3641),
    "meV/A": ("force", 1), "eV/A": ("force", 1000),
    "x": ("ratio", 1),
}  # fmt: skip
UNIT = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))
#: "2 min 55 s", "3 and 2 min", "2.2-2.4x", "168 meV", "10x slower"
QUOTE = re.compile(
    rf"(?<![\w.])((?:{NUMBER}(?:\s*(?:-|and|to|,)\s*{NUMBER})*)\s?(?:{UNIT})(?:\s+{NUMBER}\s?(?:s|seconds)\b)?)(?![\w/])"
)


def parse(quote: str) -> list[tuple[str, float, float]]:
    """``(kind, value, half of the last digit's step)`` of each number in one quote, in base units."""
    match = re.fullmatch(rf"(.+?)\s?({UNIT})(?:\s+({NUMBER})\s?(s|seconds))?", quote)
    numbers, unit, seconds = match.group(1), match.group(2), match.group(3)
    kind, factor = UNITS[unit]
    out = []
    for text in re.findall(NUMBER, numbers):
        value = Decimal(text.replace(",", ""))
        step = Decimal(1).scaleb(value.as_tuple().exponent)  # 168 -> 1, 168.4 -> 0.1
        if seconds is not None:  # "2 min 55 s": the seconds set the precision
            out.append((kind, float(value) * factor + float(seconds), 0.5))
        else:
            out.append((kind, float(value) * factor, float(step) * factor / 2))
    return out


def quotes(text: str) -> list[tuple[str, str, float, float]]:
    """``(quote, kind, value, tolerance)`` of every measured number in ``text`` (code blocks skipped:
    commands and configs hold settings, not measurements)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code (one line): option values, metric names
    return [(q, *p) for q in (m.group(1) for m in QUOTE.finditer(prose)) for p in parse(q)]


def recorded(results: str) -> list[tuple[str, float, float]]:
    return [(kind, value, tol) for _, kind, value, tol in quotes(results)]


def found(kind: str, value: float, tol: float, record) -> bool:
    return any(k == kind and abs(v - value) <= tol + 1e-9 for k, v, _ in record)


def test_every_number_the_readme_quotes_is_recorded_in_results():
    readme = (ROOT / "README.md").read_text()
    record = recorded((ROOT / "docs" / "results.md").read_text())
    quoted = quotes(readme)
    assert len(quoted) >= 3, quoted  # the quickstart's time and MAE at least
    missing = [q for q, kind, value, tol in quoted if not found(kind, value, tol, record)]
    assert not missing, (
        f"README.md quotes {missing}, which docs/results.md does not record: measure it and record the run "
        "(date, machine, command) in docs/results.md, or update the README to the recorded number"
    )


@pytest.mark.parametrize(
    ("readme", "results", "ok"),
    [
        ("Measured: 2 min 55 s, test HOMO MAE 168 meV.", "| 2 min 55 s | **168.4 meV** |", True),
        ("Measured: 2 min 55 s, test HOMO MAE 168 meV.", "| 2 min 41 s | **149.6 meV** |", False),
        ("took 3 and 2 min of CPU", "175 s + 131 s CPU", True),
        ("took 3 and 2 min of CPU", "175 s + 151 s CPU", False),
        ("about 12 minutes", "12 min 25 s", True),
        ("150 meV", "149.4 meV", False),
        ("ran 10x slower there", "are 10x slower, not 2x faster", True),
        ("2.2-2.4x faster", "2.2x and 2.5x", False),
        ("forces 31.5 meV/A", "31.47 meV/A", True),
        ("forces 31.5 meV/A", "31.5 meV", False),  # another unit: another quantity
        ("`--trainer.max_steps 300` and 20 `steps`", "", True),  # settings in code are not measurements
    ],
)
def test_the_comparison_follows_the_quoted_precision(readme, results, ok):
    record = recorded(results)
    assert all(found(kind, value, tol, record) for _, kind, value, tol in quotes(readme)) == ok
