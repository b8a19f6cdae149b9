"""Linear probes of a world model's embedding (``python -m atomzoo.dynamics_probes``): the frame quantities
are right, the probe reads what is linear in its features, and the command runs end to end on the
committed trajectories with a world model trained by ``zoo fit`` and its random twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atomzoo.datamodules import TrajectoryDataModule
from atomzoo.dynamics_probes import QUANTITIES, centred, cos_dihedral, frame_quantities, main, probe_scores, torsion_chain

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "trajectories" / "xtb_qm9_md.extxyz"


def test_dihedral_of_butane_like_chain():
    """C-C-C-C with bonds of 1.5 A at 110 degrees: cis, gauche (60 degrees) and anti give cosines 1, 0.5
    and -1; the chain is found in any atom order; a molecule without four bonded atoms in a row has none."""
    def butane(phi):
        i, j, k = [-0.51, 1.41, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0]
        return np.array([i, j, k, [2.01, 1.41 * np.cos(phi), 1.41 * np.sin(phi)]])

    z = np.array([6, 6, 6, 6])
    for phi, expected in ((0.0, 1.0), (np.pi / 3, 0.5), (np.pi, -1.0)):
        pos = butane(phi)
        assert cos_dihedral(pos, (0, 1, 2, 3)) == pytest.approx(expected, abs=1e-9)
        order = np.array([2, 0, 3, 1])  # shuffled atoms: the same torsion is found
        chain = torsion_chain(z[order], pos[order])
        assert cos_dihedral(pos[order], chain) == pytest.approx(expected, abs=1e-9)
    water = np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    assert torsion_chain(np.array([8, 1, 1]), water) is None


def test_frame_quantities_and_centring(tmp_path):
    dm = TrajectoryDataModule(str(FIXTURE), split="time", horizons=[1], cache_dir=str(tmp_path))
    dm.setup()
    rows = np.arange(len(dm.store))
    q = frame_quantities(dm, rows)
    store = dm.store
    a, b = int(store.offsets[5]), int(store.offsets[6])
    forces = np.asarray(store.arrays["forces"][a:b], dtype=np.float64)
    assert q["force_rms"][5] == pytest.approx(np.sqrt((np.linalg.norm(forces, axis=-1) ** 2).mean()))
    assert q["energy"][5] == pytest.approx(float(store.arrays["labels"][5, 0]))
    assert np.isfinite(q["dihedral"]).all() and (np.abs(q["dihedral"]) <= 1 + 1e-9).all()  # every molecule has one
    groups = np.asarray(store.arrays["trajectory"])
    c = centred(q["energy"], groups)
    assert all(abs(c[groups == g].mean()) < 1e-9 for g in np.unique(groups))
    assert np.unique(np.round(q["energy"] - c, 9)).size == np.unique(groups).size  # one offset per trajectory


def test_probe_reads_a_linear_quantity_and_not_noise():
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(400, 8)), rng.normal(size=(200, 8))
    w = rng.normal(size=8)
    good = probe_scores(x_train, x_train @ w, x_test, x_test @ w)
    assert good["r2"] > 0.999 and good["frames"] == 200
    noise = probe_scores(x_train, rng.normal(size=400), x_test, rng.normal(size=200))
    assert noise["r2"] < 0.05
    y = x_test @ w
    y[:50] = np.nan  # undefined frames are left out
    assert probe_scores(x_train, x_train @ w, x_test, y)["frames"] == 150


def test_probes_command_end_to_end(tmp_path, fit_on_trajectories):
    ckpt = fit_on_trajectories("configs/objectives/world_model.yaml", "wm", "--model.predictor_depth", "2")
    out = tmp_path / "probes"
    results = main(["--ckpt", str(ckpt), str(ckpt), "--data", str(ROOT / "configs/data/trajectories.yaml"),
                    "--data-path", str(FIXTURE), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {"probes.csv", "probes.md"}
    keys = {(r["detector"], r["seed"], r["features"], r["quantity"]) for r in results}
    assert keys == {(d, s, f, q) for d in ("trained", "random") for s in (0, 1) for f in ("embedding", "backbone")
                    for q in QUANTITIES}
    assert all(np.isfinite(r["r2"]) and r["frames"] > 0 for r in results)
    trained = [r for r in results if r["detector"] == "trained" and r["seed"] == 0]
    assert [r["r2"] for r in trained] == [r["r2"] for r in results if r["detector"] == "trained" and r["seed"] == 1]
    table = (out / "probes.md").read_text()
    assert "| embedding | energy |" in table and "| backbone | dihedral |" in table
