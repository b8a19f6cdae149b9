"""The one unit table (atomzoo.units): every reader's factor is bit-identical to the one it used before."""

import pytest
from ase import units
from ase.units import create_units

from atomzoo.units import conversion_factor, display_unit, metric_suffix, unit_suffix, unit_table


def test_calculator_factors_are_ase_default_constants():
    """zoo/calculator.py converted model energies with ase.units' module constants (ASE's default CODATA)."""
    before = {"eV": 1.0, "meV": 1e-3, "kcal/mol": units.kcal / units.mol, "kJ/mol": units.kJ / units.mol,
              "Hartree": units.Hartree, "Ha": units.Hartree}  # fmt: skip
    for name, factor in before.items():
        assert conversion_factor(name, "energy") == factor, name  # exactly, not approximately


def test_ase_file_factors_are_unchanged():
    """datamodules/ase_file.py: energies, lengths, and forces as energy / length."""
    energy = {"eV": 1.0, "meV": 1e-3, "Hartree": units.Hartree, "Rydberg": units.Rydberg,
              "kcal/mol": units.kcal / units.mol, "kJ/mol": units.kJ / units.mol}  # fmt: skip
    length = {"Angstrom": 1.0, "Bohr": units.Bohr, "nm": 10.0}
    for name, factor in energy.items():
        assert conversion_factor(name, "energy") == factor, name
    for name, factor in length.items():
        assert conversion_factor(name, "length") == factor, name
    for e, ef in energy.items():
        for le, lf in length.items():
            assert conversion_factor(f"{e}/{le}", "force") == ef / lf, (e, le)
    assert conversion_factor("Hartree/Bohr", "force") == pytest.approx(51.4220671, rel=1e-8)

    from atomzoo.datamodules import ASEFileDataModule

    dm = ASEFileDataModule(path="unused.xyz", energy_unit="Hartree", length_unit="Bohr")
    factors = (dm.energy_factor, dm.length_factor, dm.force_factor)
    assert factors == (units.Hartree, units.Bohr, units.Hartree / units.Bohr)
    alias = ASEFileDataModule(path="unused.xyz", energy_unit="Ha", length_unit="A")  # one table: the aliases too
    assert (alias.energy_factor, alias.length_factor) == (units.Hartree, 1.0)


def test_md17_keeps_codata_2018():
    from atomzoo.datamodules.md17 import KCALMOL_EV

    codata = create_units("2018")
    assert KCALMOL_EV == codata["kcal"] / codata["mol"]  # the MD17 stores' constant, bit for bit
    assert KCALMOL_EV != units.kcal / units.mol  # ASE's default set differs (by ~1e-8 relative)
    assert conversion_factor("kcal/mol", codata="2018") == KCALMOL_EV


def test_unknown_units_name_the_choices():
    with pytest.raises(ValueError, match=r"'hartree' is not a known energy unit; choose one of eV, meV, Hartree"):
        conversion_factor("hartree")
    with pytest.raises(ValueError, match="not a known force unit"):
        conversion_factor("eV", "force")
    with pytest.raises(ValueError, match="kind='mass'"):
        conversion_factor("kg", "mass")
    assert list(unit_table("length")) == ["Angstrom", "A", "Bohr", "nm"]


def test_names_of_units_in_metrics_and_columns():
    assert display_unit("eV") == ("meV", 1000.0) and display_unit("eV/A") == ("meV/A", 1000.0)
    assert display_unit("a0^3") == ("a0^3", 1.0)
    assert metric_suffix("eV/A") == "meV_per_A" and metric_suffix("") == ""
    assert unit_suffix("eV/A") == "eV_per_A" and unit_suffix("") == "unitless"
