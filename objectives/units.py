"""How metrics are displayed: energies in meV (and meV/A for forces), everything else as stored."""

from __future__ import annotations

DISPLAY = {"eV": ("meV", 1000.0), "eV/A": ("meV/A", 1000.0)}


def display_unit(unit: str) -> tuple[str, float]:
    """``(display unit, factor)`` such that ``value_in_unit * factor`` is in the display unit."""
    return DISPLAY.get(unit, (unit, 1.0))


def metric_suffix(unit: str) -> str:
    """A unit as it appears in a metric name: ``meV/A`` -> ``meV_per_A``, ``a0^3`` -> ``a0^3``."""
    return display_unit(unit)[0].replace("/", "_per_")
