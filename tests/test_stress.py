"""Stress ``(1/V) dE/d(strain)`` from the model: finite differences, rotation, mixed batches, the loss.

Checks (issue 30, items 1 and 4): for every built-in backbone and a user's backbone that declares
``periodic = True`` (examples/custom_backbone.py), in float64, the calculator's stress
equals ASE's central-difference stress of the same calculator
(``ase.calculators.fd.calculate_numerical_stress``, strain step 1e-5) to 1e-7 eV/A^3 absolute
(observed ~1e-10); the stress tensor of a rotated crystal is ``R sigma R^T``; in a batch mixing a
molecule, a slab and two crystals only the crystals get a stress (NaN rows elsewhere), equal to
their stress alone, and the stress loss ignores the others; a slab asked for its stress through the
calculator raises ``PropertyNotImplementedError``; the sign matches EMT's (a compressed Cu crystal
has negative diagonal stress in both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.stress import voigt_6_to_full_3x3_stress
from ase.units import GPa

from atomzoo.backbones import ET, MACE, PaiNN, SchNet
from atomzoo.calculator import AtomzooCalculator
from atomzoo.datamodules import ASEFileDataModule
from atomzoo.datamodules.checks import DataFormatError
from atomzoo.inference import AtomzooModel
from atomzoo.nn.batch import atoms_to_batch
from atomzoo.objectives import Regression
from atomzoo.objectives.forces import energy_forces_stress, has_stress
from atomzoo.objectives.losses import StressLoss

CUTOFF = 4.0


def custom_backbone(**kwargs):
    """examples/custom_backbone.py's DistanceMPNN: a backbone of the user's that declares ``periodic = True``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "custom_backbone.py"
    spec = importlib.util.spec_from_file_location("custom_backbone_for_stress", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DistanceMPNN(**kwargs)


BACKBONES = {
    "schnet": lambda: SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=8, cutoff=CUTOFF),
    "painn": lambda: PaiNN(width=16, num_interactions=2, num_rbf=8, cutoff=CUTOFF),
    "et": lambda: ET(width=16, num_interactions=2, num_rbf=8, num_heads=2, cutoff=CUTOFF),
    "mace": lambda: MACE(hidden_irreps="8x0e+8x1o", max_ell=1, correlation=2, num_interactions=2, radial_MLP=[8],
                         cutoff=CUTOFF, atomic_numbers=[1, 6, 8, 13, 29], dtype="float64"),  # fmt: skip
    "custom": lambda: custom_backbone(width=16, num_interactions=2, num_rbf=8, cutoff=CUTOFF),
}


def random_model(name: str) -> AtomzooModel:
    """An untrained float64 energy model (random weights give a generic, non-zero energy surface)."""
    torch.manual_seed(0)
    objective = Regression(BACKBONES[name](), targets=["energy"], forces=True).double()
    objective.stats_ready.fill_(True)
    objective.std.fill_(2.0)
    return AtomzooModel(objective, {}, None)


def strained_crystal(seed: int = 0) -> Atoms:
    """A rattled, sheared two-element fcc crystal (8 atoms; cell 3.6 A < twice the cutoff: self-images)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[[1, 3]] = 13
    rng = np.random.default_rng(seed)
    atoms.rattle(0.05, seed=seed)
    atoms.set_cell(atoms.cell @ (np.eye(3) + 0.03 * rng.normal(size=(3, 3))), scale_atoms=True)
    return atoms


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def model(request):
    return random_model(request.param)


def test_stress_equals_finite_difference_stress(model):
    atoms = strained_crystal()
    atoms.calc = AtomzooCalculator(model, dtype="float64")
    stress = atoms.get_stress()
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    assert stress.shape == (6,)
    assert np.abs(stress).max() > 1e-3  # a real stress, not zeros
    np.testing.assert_allclose(stress, numerical, rtol=0, atol=1e-7)


def test_stress_rotates_with_the_structure(model):
    atoms = strained_crystal(1)
    q, r = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    rotation *= np.linalg.det(rotation)  # proper rotation
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell @ rotation.T, scale_atoms=True)  # lattice vectors and positions rotated
    atoms.calc, rotated.calc = AtomzooCalculator(model), AtomzooCalculator(model)
    sigma = voigt_6_to_full_3x3_stress(atoms.get_stress())
    sigma_rot = voigt_6_to_full_3x3_stress(rotated.get_stress())
    np.testing.assert_allclose(sigma_rot, rotation @ sigma @ rotation.T, atol=1e-9)
    assert np.abs(sigma - sigma.T).max() < 1e-12  # symmetric (symmetrised strain)


def test_mixed_batch_gives_stress_to_crystals_only():
    model = random_model("painn")
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=4.0)  # pbc (True, True, False): no stress
    water = molecule("H2O")
    crystals = [strained_crystal(3), strained_crystal(4)]
    structures = [water, crystals[0], slab, crystals[1]]
    batch = atoms_to_batch(structures, torch.float64)
    assert has_stress(batch).tolist() == [False, True, False, True]
    out = model.predict_batch(batch, stress=True)
    stress = out["stress"]
    assert stress.shape == (4, 3, 3)
    assert torch.isnan(stress[[0, 2]]).all() and torch.isfinite(stress[[1, 3]]).all()
    for k in (1, 3):  # each crystal's stress and forces are its own, whatever else is in the batch
        alone = model.predict_batch(atoms_to_batch([structures[k]], torch.float64), stress=True)
        torch.testing.assert_close(stress[k], alone["stress"][0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out["forces"][batch.batch == k], alone["forces"], atol=1e-10, rtol=0)
    # the calculator refuses the slab's stress in one line, and predict() leaves it out
    slab.calc = AtomzooCalculator(model)
    with pytest.raises(PropertyNotImplementedError, match="fully periodic"):
        slab.get_stress()
    rows = model.predict(structures)
    assert ["stress" in row for row in rows] == [False, True, False, True]
    np.testing.assert_allclose(voigt_6_to_full_3x3_stress(rows[1]["stress"]), stress[1].numpy(), atol=1e-12)


def test_stress_loss_ignores_structures_without_stress_and_trains():
    model = random_model("schnet").objective
    batch = atoms_to_batch([molecule("H2O"), strained_crystal(5)], torch.float64)
    labels = torch.full((2, 3, 3), float("nan"), dtype=torch.float64)
    labels[1] = torch.eye(3, dtype=torch.float64) * 0.01
    pred, forces, stress = energy_forces_stress(lambda b: model(b)[:, 0], batch, training=True)
    loss = StressLoss("mse")(stress, labels, torch.tensor(0.01))
    expected = ((stress[1] - labels[1]) / 0.01).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()  # second derivatives through the strain reach the weights, and stay finite
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert StressLoss("l1")(stress[:1], labels[:1], torch.tensor(0.01)) == 0  # molecules only: no stress loss


def test_sign_convention_matches_emt():
    """Compressed Cu pushes outwards: negative diagonal stress in ASE's convention, in EMT and in our
    calculator (whose stress is the same derivative as ASE's numerical one, checked above)."""
    atoms = bulk("Cu", "fcc", a=3.45, cubic=True)  # EMT's lattice constant is ~3.59 A
    atoms.calc = EMT()
    emt = atoms.get_stress()
    assert (emt[:3] < -0.01).all()
    np.testing.assert_allclose(emt, calculate_numerical_stress(atoms, eps=1e-6), atol=1e-6)


# ----- reading stress and virials (ASEFileDataModule, --data.stress_key) ---------------------------
FIXTURE = Path(__file__).parent / "data" / "emt_materials" / "emt_materials.extxyz"


def box(stress=None, pbc=True, **info) -> Atoms:
    """Two Cu atoms in a 2 x 2 x 2.5 A box (V = 10 A^3) with an energy, forces and the given labels."""
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.0, 1.0, 1.2]], cell=[2.0, 2.0, 2.5], pbc=pbc)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((2, 3)),
                                       **({} if stress is None else {"stress": stress}))  # fmt: skip
    atoms.info.update(info)
    return atoms


def read_stress(tmp_path, structures, **kw) -> np.ndarray:
    path = tmp_path / "s.extxyz"
    write(path, structures)
    dm = ASEFileDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), num_train=len(structures), num_val=0,
                           num_test=0, **kw)  # fmt: skip
    dm.setup()
    return np.asarray(dm.store.arrays["stress"])


def test_reader_voigt_order_units_and_virial_sign(tmp_path):
    voigt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # xx yy zz yz xz xy
    full = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    got = read_stress(tmp_path, [box(voigt)], stress_key="stress")
    np.testing.assert_allclose(got[0], full)
    got = read_stress(tmp_path, [box(voigt)], stress_key="stress", stress_unit="GPa")
    np.testing.assert_allclose(got[0], full * 0.006241509125883258, rtol=1e-12)  # 1 GPa = 6.2415e-3 eV/A^3
    got = read_stress(tmp_path, [box(voigt)], stress_key="stress", stress_unit="kbar")
    np.testing.assert_allclose(got[0], full * 0.1 * GPa, rtol=1e-12)
    # a virial W (eV) is the stress -W / V: W = diag(10, 20, 30) eV in V = 10 A^3 -> sigma = -diag(1, 2, 3) eV/A^3
    virial = box(None, virial=np.diag([10.0, 20.0, 30.0]))
    got = read_stress(tmp_path, [virial], stress_key="virial")
    np.testing.assert_allclose(got[0], -np.diag([1.0, 2.0, 3.0]), rtol=1e-12)
    got = read_stress(tmp_path, [box(None, virial=np.diag([10.0, 20.0, 30.0]))], stress_key="virial",
                      energy_unit="meV")  # fmt: skip
    np.testing.assert_allclose(got[0], -np.diag([1e-3, 2e-3, 3e-3]), rtol=1e-12)


def test_reader_reads_stress_from_an_ase_database(tmp_path):
    """An ASE database row's stress (its calculator results, as ``ase db`` stores them) is read as from extxyz."""
    from ase.db import connect

    voigt = np.array([0.01, 0.02, 0.03, -0.004, 0.005, -0.006])
    with connect(tmp_path / "s.db") as db:
        db.write(box(voigt))
        db.write(box(2 * voigt))
    dm = ASEFileDataModule(path=str(tmp_path / "s.db"), cache_dir=str(tmp_path / "cache"), stress_key="stress",
                           stress_unit="GPa", num_train=2, num_val=0, num_test=0)  # fmt: skip
    dm.setup()
    stored = np.asarray(dm.store.arrays["stress"])
    np.testing.assert_allclose(stored[1], 2 * voigt_6_to_full_3x3_stress(voigt) * GPa, rtol=1e-12)


def test_reader_errors_name_record_key_and_fix(tmp_path):
    with pytest.raises(DataFormatError, match=r"record 0: key 'sigma' \(stress\) has shape \(4,\); a stress needs 3x3"):
        read_stress(tmp_path, [box(None, sigma=np.ones(4))], stress_key="sigma")
    molecule_with_stress = box(np.ones(6), pbc=False)
    with pytest.raises(DataFormatError, match=r"record 0: key 'stress' gives a stress to a structure that is not fully "
                                              r"periodic \(pbc=\[False, False, False\]\)"):  # fmt: skip
        read_stress(tmp_path, [molecule_with_stress], stress_key="stress")
    slab = box(np.ones(6), pbc=[True, True, False])
    with pytest.raises(DataFormatError, match="not fully periodic"):
        read_stress(tmp_path, [slab], stress_key="stress")
    with pytest.raises(DataFormatError, match=r"record 1: the structure is periodic but has no stress under key 'st"):
        read_stress(tmp_path, [box(np.ones(6)), box(None)], stress_key="stress")
    with pytest.raises(ValueError, match=r"stress_unit='bar' is not a known stress unit; choose one of eV/A\^3, GPa"):
        ASEFileDataModule(path="x.extxyz", stress_key="stress", stress_unit="bar")
    # a molecule without stress in a file of crystals: a NaN row, no error
    got = read_stress(tmp_path, [box(np.ones(6)), box(None, pbc=False)], stress_key="stress")
    assert np.isfinite(got[0]).all() and np.isnan(got[1]).all()


def test_fixture_stress_is_emt_stress_and_reaches_the_batch(tmp_path):
    dm = ASEFileDataModule(path=str(FIXTURE), cache_dir=str(tmp_path), stress_key="stress", num_train=0.8, num_val=0.1,
                           batch_size=16)  # fmt: skip
    dm.setup()
    stored = np.asarray(dm.store.arrays["stress"])
    surfaces = [i for i, a in enumerate(read(FIXTURE, ":")) if a.info["config_type"] == "surface"]
    assert np.isnan(stored[surfaces]).all()
    for record in (1, 100, 239):  # recomputed with EMT from the file's geometry
        atoms = read(FIXTURE, index=record)
        if record in surfaces:
            continue
        atoms.calc = EMT()
        np.testing.assert_allclose(stored[record], voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-9)
    batch = next(iter(dm.train_dataloader()))
    assert batch.stress.shape == (16, 3, 3)
    assert dm.stress and dm.stress_unit == "eV/A^3"
    assert dm.store.meta["units"]["stress"] == "eV/A^3" and "stress" not in dm.store.meta["ignored"]


def test_regression_trains_on_stress_and_logs_its_mae(tmp_path):
    import lightning as L

    dm = ASEFileDataModule(path=str(FIXTURE), cache_dir=str(tmp_path), stress_key="stress", num_train=64, num_val=32,
                           num_test=0, batch_size=16)  # fmt: skip
    torch.manual_seed(0)
    model = Regression(SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=8, cutoff=CUTOFF),
                       targets=["energy"], forces=True, stress=True, warmup_steps=1)  # fmt: skip
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert "val/stress_mae_meV_per_A^3" in metrics and torch.isfinite(metrics["val/stress_mae_meV_per_A^3"])
    assert float(model.stress_rms) == pytest.approx(
        np.sqrt(np.nanmean(np.asarray(dm.store.arrays["stress"])[np.sort(dm.splits["train"])] ** 2)), rel=1e-6)
    with pytest.raises(ValueError, match="stress=True needs forces=True"):
        Regression(SchNet(width=8, num_filters=8, num_interactions=1, num_rbf=8), targets=["energy"], stress=True)
