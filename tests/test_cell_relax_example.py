"""examples/cell_relax.py at a smoke budget: data, zoo fit with stress, cell relaxation and NPT all run.

The full-budget numbers (lattice constant against EMT's, NPT stability) are in docs/results.md; here
a 20-step model on 40 structures must still give a converged, cubic cell relaxation near copper's
lattice constant (the cell's stress drives it), EMT's own relaxation must land on EMT's 3.59 A, and
both 20-step NPT runs must stay stable.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("cell_relax", ROOT / "examples" / "cell_relax.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~15 s of CPU, up to 2 min wall on the loaded 2-core VM
def test_cell_relax_example_smoke(example, tmp_path):
    report = example.run(str(tmp_path), structures=40, steps=20, relax_steps=100, npt_ps=0.04, seed=0)
    assert np.isfinite(report["training"]["validation"]["val/stress_mae_meV_per_A^3"])
    emt, model = report["relaxation"]["emt"], report["relaxation"]["model"]
    assert emt["converged"] and emt["a_A"] == pytest.approx(3.590, abs=0.002)  # EMT's fcc Cu
    assert model["converged"] and model["steps"] >= 2, report  # it moved from 3.75 A
    # cubic up to the model's own instability: this 20-step model has an unstable internal mode at the fcc
    # sites, which BFGS grows from rounding-level forces (1e-14 eV/A at the cubic start: the stress is isotropic
    # to 1e-17 there) to 0.2 eV/A within ~6 steps, so the cell ends a few mA from cubic (2.1 mA measured with the
    # PaiNN of 2026-12-06, whose summation order differs from the earlier one's, which stayed cubic to 1e-13 A)
    assert model["a_spread_A"] < 5e-3
    assert 3.4 < model["a_A"] < 3.75, report  # shrank towards copper's lattice constant
    assert model["residual_stress_GPa"] < 0.05
    for run in report["npt"]["model"], report["npt"]["emt"]:
        assert run["steps"] == 20 and run["stable"], report
        assert 0 < run["mean_temperature_K"] < 1000
