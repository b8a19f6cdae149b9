"""Physical units: the one table of conversion factors (from :mod:`ase.units`) and how units are named.

The zoo computes in eV, Angstrom and eV/A. Every reader that converts (the ASE-file and MD17
DataModules, the ASE calculator) takes its factor from here:

============  ===========================================================  =========
kind          units (name -> factor to the zoo's unit)                      zoo unit
============  ===========================================================  =========
``energy``    ``eV``, ``meV``, ``Hartree`` (``Ha``), ``Rydberg``,            eV
              ``kcal/mol``, ``kJ/mol``
``length``    ``Angstrom`` (``A``), ``Bohr``, ``nm``                         Angstrom
``force``     ``<energy>/<length>``, e.g. ``eV/A``, ``kcal/mol/A``,          eV/A
              ``Hartree/Bohr`` (energy factor / length factor)
``stress``    ``eV/A^3``, ``GPa``, ``kbar``                                 eV/A^3
============  ===========================================================  =========

Constants: ASE's default CODATA set (``ase.units``; 2014 in ASE 3.22-3.29) unless a reader names
another with ``codata=`` (the MD17 stores use CODATA 2018, whose kcal/mol differs by 1e-8 relative).

Names: metrics show eV as meV, eV/A as meV/A and eV/A^3 as meV/A^3 (:func:`display_unit`); units inside metric and
column names write ``/`` as ``_per_`` (:func:`metric_suffix`, :func:`unit_suffix`).

Imports nothing from atomzoo.
"""

from __future__ import annotations

from functools import lru_cache

from ase.units import __codata_version__ as DEFAULT_CODATA
from ase.units import create_units

KINDS = ("energy", "length", "force", "stress")


@lru_cache(maxsize=None)
def _tables(codata: str) -> dict[str, dict[str, float]]:
    u = create_units(codata)
    energy = {"eV": 1.0, "meV": 1e-3, "Hartree": u["Hartree"], "Ha": u["Hartree"], "Rydberg": u["Rydberg"],
              "kcal/mol": u["kcal"] / u["mol"], "kJ/mol": u["kJ"] / u["mol"]}  # fmt: skip
    length = {"Angstrom": 1.0, "A": 1.0, "Bohr": u["Bohr"], "nm": 10.0}
    stress = {"eV/A^3": 1.0, "GPa": u["GPa"], "kbar": u["GPa"] / 10}  # ase.units.GPa is 1 GPa in eV/A^3
    return {"energy": energy, "length": length, "stress": stress}


def unit_table(kind: str, codata: str | None = None) -> dict[str, float]:
    """``{unit name: factor}`` of ``kind`` (``"energy"`` to eV, ``"length"`` to Angstrom, ``"stress"`` to
    eV/A^3), in table order.

    ``codata``: ASE's name of a CODATA set (``"2014"``, ``"2018"``); default ASE's default. Raises
    ``ValueError`` for another ``kind`` (forces are composed, see :func:`conversion_factor`).
    """
    if kind not in ("energy", "length", "stress"):
        raise ValueError(
            f"kind={kind!r}: the unit tables are 'energy', 'length' and 'stress' (forces are energy/length)"
        )
    return dict(_tables(codata or DEFAULT_CODATA)[kind])


def conversion_factor(unit: str, kind: str = "energy", codata: str | None = None) -> float:
    """Factor converting a value in ``unit`` to eV (``kind="energy"``), Angstrom (``"length"``), eV/A
    (``"force"``) or eV/A^3 (``"stress"``).

    A force unit is ``"<energy unit>/<length unit>"`` (split at the last ``/``: ``"kcal/mol/A"`` is
    kcal/mol per Angstrom); its factor is the energy factor divided by the length factor.

    Raises:
        ValueError: ``"'<unit>' is not a known <kind> unit; choose one of ..."`` (callers prefix the
            option it came from), or an unknown ``kind``.
    """
    if kind == "force":
        energy, slash, length = unit.rpartition("/")
        energies, lengths = unit_table("energy", codata), unit_table("length", codata)
        if not slash or energy not in energies or length not in lengths:
            raise ValueError(
                f"{unit!r} is not a known force unit; give '<energy>/<length>' with an energy unit of "
                f"{', '.join(energies)} and a length unit of {', '.join(lengths)}"
            )
        return energies[energy] / lengths[length]
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    table = unit_table(kind, codata)
    if unit not in table:
        raise ValueError(f"{unit!r} is not a known {kind} unit; choose one of {', '.join(table)}")
    return table[unit]


# ----- how units appear in names ------------------------------------------------------------------
#: unit -> (display unit, factor): metrics show energies in meV and forces in meV/A
DISPLAY = {"eV": ("meV", 1000.0), "eV/A": ("meV/A", 1000.0), "eV/A^3": ("meV/A^3", 1000.0)}


def display_unit(unit: str) -> tuple[str, float]:
    """``(display unit, factor)`` such that ``value_in_unit * factor`` is in the display unit."""
    return DISPLAY.get(unit, (unit, 1.0))


def metric_suffix(unit: str) -> str:
    """A unit as it appears in a metric name: ``meV/A`` -> ``meV_per_A``, ``a0^3`` -> ``a0^3``."""
    return display_unit(unit)[0].replace("/", "_per_")


def unit_suffix(unit: str) -> str:
    """A unit as it appears in a prediction column name: ``"eV/A"`` -> ``"eV_per_A"``; ``""`` -> ``"unitless"``."""
    return unit.replace("/", "_per_") if unit else "unitless"


__all__ = ["DEFAULT_CODATA", "DISPLAY", "KINDS", "conversion_factor", "display_unit", "metric_suffix", "unit_suffix",
           "unit_table"]  # fmt: skip
