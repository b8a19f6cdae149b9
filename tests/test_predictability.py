"""Closed-form predictability of MD windows (``python -m atomzoo.predictability``): each predictor recovers
the motion it can represent exactly and none invents predictability in a random walk; the world model's
own predictor is scored on the right frames; the command runs end to end on the committed trajectories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atomzoo.predictability import (closed_form_scores, distances, main, offsets, refit_predictor, window_parts,
                                    world_model_scores)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "trajectories" / "xtb_qm9_md.extxyz"


def windows(first: int, frames: int, history: int = 3, horizons=(1, 2, 4)) -> np.ndarray:
    """``[W, history + 1]`` consecutive-row windows of one trajectory of ``frames`` rows from ``first``."""
    out = [[first + t - history + 1 + j for j in range(history)] + [first + t + k]
           for k in horizons for t in range(history - 1, frames - k)]
    return np.array(out)


def by_predictor(scores: list[dict]) -> dict[tuple[str, float], float]:
    return {(s["predictor"], s["offset"]): s["ratio"] for s in scores}


def test_window_parts_and_offsets():
    rep = np.arange(10, dtype=float)[:, None] ** 2  # r_t = t^2
    rows = np.array([[2, 3, 4, 6], [0, 2, 4, 8]])  # stride 1 target +2; stride 2 target +4 (offset 2)
    last, diffs, change = window_parts(rep, rows)
    assert last[:, 0].tolist() == [16, 16]
    assert diffs[:, :, 0].tolist() == [[5, 7], [4, 12]]
    assert change[:, 0].tolist() == [20, 48]
    assert offsets(rows).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="history >= 2"):
        window_parts(rep, np.array([[3, 4]]))


def test_linear_motion_and_oscillation_are_recovered_exactly():
    """Constant velocity: extrapolation is exact; a harmonic oscillation (any frequency, any phase per
    dimension): the differences obey d_{t+1} = 2 cos(w) d_t - d_{t-1}, so the shared AR and the ridge map
    predict it to rounding while constant velocity does not."""
    t = np.arange(200, dtype=float)
    rng = np.random.default_rng(0)
    velocity = rng.normal(size=6)
    linear = t[:, None] * velocity
    rows = windows(0, 200)
    scores = by_predictor(closed_form_scores(linear, rows[::2], rows[1::2]))
    for k in (1, 2, 4):
        assert scores[("persistence", k)] == 1.0
        assert scores[("constant_velocity", k)] == pytest.approx(0.0, abs=1e-12)
        assert scores[("shared_ar", k)] == pytest.approx(0.0, abs=1e-12)
        assert scores[("ridge", k)] < 1e-3

    omega = 0.9  # one frequency, 5 fs frames of a ~35 fs vibration
    oscillation = np.cos(omega * t[:, None] + rng.uniform(0, 2 * np.pi, size=6))
    scores = by_predictor(closed_form_scores(oscillation, rows[::2], rows[1::2]))
    for k in (1, 2, 4):
        assert scores[("shared_ar", k)] < 1e-8
        assert scores[("ridge", k)] < 1e-3
        assert scores[("constant_velocity", k)] > 0.3


def test_a_random_walk_is_not_predictable():
    """Independent steps: nothing beats persistence on held-out windows (shared AR and ridge within a few
    per cent of 1), and extrapolating the last step doubles the error at k = 1 (Var(d_{t+1} - d_t) = 2)."""
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=(4000, 8)), axis=0)
    rows = windows(0, 4000)
    early = rows[:, -2] < 2000  # fitted on the first half of the walk, scored on the second
    scores = by_predictor(closed_form_scores(walk, rows[early], rows[~early]))
    for k in (1, 2, 4):
        assert scores[("shared_ar", k)] == pytest.approx(1.0, abs=0.05)
        assert scores[("ridge", k)] == pytest.approx(1.0, abs=0.05)
    assert scores[("constant_velocity", 1)] == pytest.approx(2.0, rel=0.1)


def test_distances_match_ase(tmp_path):
    from ase.io import read

    from atomzoo.datamodules import TrajectoryDataModule

    dm = TrajectoryDataModule(str(FIXTURE), split="time", horizons=[1], cache_dir=str(tmp_path))
    dm.setup()
    d = distances(dm.store)
    atoms = read(FIXTURE, index=0)
    n = len(atoms)
    expected = atoms.get_all_distances()[np.triu_indices(n, 1)]
    np.testing.assert_allclose(d[0, : expected.size], expected, rtol=1e-6)
    assert (d[0, expected.size:] == 0).all()
    assert d.shape[0] == len(np.asarray(dm.store.offsets)) - 1


class _Persistence(torch.nn.Module):
    """A predictor that returns the last history embedding: the world model's ratio must be exactly 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def predict(self, history, horizon, temperature):
        assert history.shape[1] == 3 and horizon.shape == temperature.shape == history.shape[:1]
        return history[:, -1] + 0 * self.w


def test_world_model_ratio_uses_the_windows_frames():
    rng = np.random.default_rng(2)
    embedding = np.cumsum(rng.normal(size=(300, 4)), axis=0)
    rows = windows(0, 300)
    table = {"rows": rows, "horizon": offsets(rows) * 5.0, "temperature": np.full(len(rows), 300.0)}
    scores = world_model_scores(_Persistence(), embedding, table)
    assert {s["offset"] for s in scores} == {1.0, 2.0, 4.0}
    assert all(s["ratio"] == pytest.approx(1.0, abs=1e-12) for s in scores)
    assert sum(s["windows"] for s in scores) == len(rows)


def test_refitted_predictor_learns_predictable_motion_and_leaves_the_encoder():
    """Embeddings decaying towards 0 (``z_{t+1} = 0.9 z_t``, the change a linear map of the last frame): a
    small residual predictor, starting at "no change", trained alone on 50 trajectories goes well below
    persistence on their windows and on 10 held-out trajectories; the encoder's weights do not change."""
    from atomzoo.backbones import SchNet
    from atomzoo.objectives import WorldModel

    torch.manual_seed(0)
    model = WorldModel(SchNet(width=16, num_filters=16, num_interactions=1, num_rbf=8, cutoff=4.0), residual=True,
                       predictor_depth=1, predictor_heads=2, predictor_head_dim=8, predictor_mlp=32,
                       predictor_dropout=0.0, embedding_dim=8, projection_hidden=16, head_hidden=16)
    encoder = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    rng = np.random.default_rng(3)
    parts, rows = [], {"train": [], "test": []}
    for trajectory in range(60):
        parts.append(rng.normal(size=8) * 0.9 ** np.arange(30)[:, None])
        rows["train" if trajectory < 50 else "test"].append(windows(30 * trajectory, 30))
    embedding = np.concatenate(parts)
    tables = {s: {"rows": np.concatenate(r), "temperature": np.full(sum(len(w) for w in r), 300.0)}
              for s, r in rows.items()}
    for table in tables.values():
        table["horizon"] = offsets(table["rows"]) * 5.0
    before = world_model_scores(model.eval(), embedding, tables["test"])
    assert all(s["ratio"] == pytest.approx(1.0) for s in before)  # residual: starts at "no change"
    refit_predictor(model, embedding, tables["train"], steps=300, lr=1e-3, seed=0)
    fitted, held_out = (world_model_scores(model, embedding, tables[s]) for s in ("train", "test"))
    assert max(s["ratio"] for s in fitted) < 0.5, fitted  # measured 0.20-0.29
    assert max(s["ratio"] for s in held_out) < 0.75, held_out  # measured 0.39-0.55
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in encoder.items())
    assert not model.training


def test_predictability_command_end_to_end(tmp_path, fit_on_trajectories):
    ckpt = fit_on_trajectories("configs/objectives/world_model.yaml", "wm", "--model.predictor_depth", "2",
                               "--model.residual", "true", "--model.predictor_input", "differences")
    out = tmp_path / "pred"
    results = main(["--ckpt", str(ckpt), "--data", str(ROOT / "configs/data/trajectories.yaml"),
                    "--data-path", str(FIXTURE), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                    "--refit-steps", "2", "--refit-lr", "1e-3", "--refit-set", "predictor_depth=1",
                    "predictor_dropout=0"])
    assert {p.name for p in out.iterdir()} == {"predictability.csv", "predictability.md"}
    keys = {(r["representation"], r["detector"], r["predictor"]) for r in results}
    assert ("distances", "physics", "shared_ar") in keys and ("distances", "physics", "ridge") not in keys
    assert ("embedding", "trained", "world_model") in keys and ("embedding", "random", "world_model") not in keys
    assert ("embedding", "trained", "refit lr=0.001 predictor_depth=1 predictor_dropout=0") in keys
    from atomzoo.objectives import WorldModel

    assert WorldModel.load_from_checkpoint(ckpt, map_location="cpu").predictor_input == "differences"
    assert {(rep, d, "ridge") for rep in ("embedding", "backbone") for d in ("trained", "random")} <= keys
    assert all(r["ratio"] == 1.0 for r in results if r["predictor"] == "persistence")
    assert all(np.isfinite(r["ratio"]) and r["windows"] > 0 for r in results)
    table = (out / "predictability.md").read_text()
    assert "| distances | physics | shared_ar |" in table and "| embedding | trained | world_model |" in table


@pytest.mark.parametrize("bad, message", [(["--refit-set", "predictor_depth"], "write OPTION=VALUE"),
                                          (["--refit-set", "predictor_width=3"], "not WorldModel options"),
                                          (["--refit-steps", "-1"], "--refit-steps -1")])
def test_bad_refit_options_are_refused_in_one_line(bad, message, capsys):
    with pytest.raises(SystemExit):
        main(["--ckpt", "missing.ckpt", "--data", str(ROOT / "configs/data/trajectories.yaml"), *bad])
    assert message in capsys.readouterr().err
