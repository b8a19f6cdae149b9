"""The surprise command (``python -m atomzoo.surprise``): perturbations do what they say, the statistics are
right, and the command runs end to end on the committed trajectories with a world model trained by
``zoo fit``, the random-init baseline and the GFN2-xTB energy-jump reference."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from atomzoo.datamodules import TrajectoryDataModule
from atomzoo.surprise import GEOMETRIC, KINDS, Case, auroc, bonds, main, make_cases, perturb

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "trajectories" / "xtb_qm9_md.extxyz"


def distances(pos: np.ndarray) -> np.ndarray:
    return np.linalg.norm(pos[:, None] - pos[None], axis=-1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    dm = TrajectoryDataModule(str(FIXTURE), split="time", horizons=[1, 2], cache_dir=str(tmp_path_factory.mktemp("c")))
    dm.setup()
    return dm


def test_perturbations_do_what_they_say(data):
    rng = np.random.default_rng(0)
    a, b = data.store.offsets[0], data.store.offsets[1]  # the first frame (gdb 11, 7 atoms)
    z, pos = np.asarray(data.store.arrays["z"][a:b], np.int64), np.asarray(data.store.arrays["pos"][a:b], np.float64)
    zr, pr = perturb("rotation", z, pos, rng, {}, 0.3)
    assert np.array_equal(zr, z) and np.allclose(distances(pr), distances(pos)) and not np.allclose(pr, pos)
    zp, pp = perturb("permutation", z, pos, rng, {}, 0.3)
    assert sorted(map(tuple, np.c_[zp, pp].tolist())) == sorted(map(tuple, np.c_[z, pos].tolist()))
    zt, pt = perturb("teleport", z, pos, rng, {}, 0.3)
    moved = np.linalg.norm(pt - pos, axis=-1)
    assert np.array_equal(zt, z) and (moved > 0).sum() == 1 and 0.5 <= moved.max() <= 1.0
    zs, ps = perturb("swap", z, pos, rng, {}, 0.3)
    changed = np.flatnonzero(zs != z)
    assert changed.size == 2 and zs[changed[0]] == z[changed[1]] and np.array_equal(ps, pos)
    pairs = bonds(z, pos)
    assert pairs and all(distances(pos)[i, j] < 2.0 for i, j in pairs)
    longest = {pair: distances(pos)[pair] + 0.05 for pair in pairs}
    _, pst = perturb("stretch", z, pos, rng, longest, 0.3)
    (i, j), = [pair for pair in pairs if np.isclose(distances(pst)[pair], longest[pair] + 0.3)]  # one bond
    assert np.isclose(distances(pst), distances(pos)).sum() >= z.size - 2  # only atoms i and j moved
    assert np.allclose(np.delete(pst, [i, j], axis=0), np.delete(pos, [i, j], axis=0))
    assert np.allclose((pst[i] + pst[j]) / 2, (pos[i] + pos[j]) / 2)  # stretched symmetrically


def test_cases_time_reversal_and_ensemble_frames(data):
    cases = make_cases(data, "test", list(KINDS), np.random.default_rng(1))
    by_kind = {k: [c for c in cases if c.kind == k] for k in KINDS}
    assert {k: len(v) for k, v in by_kind.items()}["true"] == data.windows("test").shape[0]
    windows, store = data.windows("test"), data.store
    for case in by_kind["reversed"]:
        rows = windows[case.window]
        k = int(store.arrays["frame"][rows[-1]] - store.arrays["frame"][rows[-2]])
        expected = [*rows[-2::-1], rows[0] - k]  # t, t - s, .., t - (h-1)s, then t - (h-1)s - k
        for (z, pos), row in zip(case.frames, expected):
            a, b = store.offsets[row], store.offsets[row + 1]
            assert np.allclose(pos, store.arrays["pos"][a:b])
    for case in by_kind["ensemble"]:
        rows = windows[case.window]
        target = case.frames[-1][1]
        match = [r for r in range(len(store)) if store.offsets[r + 1] - store.offsets[r] == target.shape[0]
                 and np.allclose(store.arrays["pos"][store.offsets[r]:store.offsets[r + 1]], target)]  # fmt: skip
        assert len(match) == 1 and abs(match[0] - rows[-1]) >= 10
        assert store.arrays["trajectory"][match[0]] == store.arrays["trajectory"][rows[-1]]


def test_auroc():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert auroc(np.array([2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_unscored_windows_rank_highest_and_are_counted():
    """A detector that cannot score a window (xTB's SCF not converging on a teleported atom) gives it an
    infinite score: it ranks above every scored window in the AUROC, is counted in ``failed``, and the
    mean and z-score are those of the finite scores."""
    from atomzoo.surprise import summarise

    windows = {"true": np.arange(4), "teleport": np.arange(4)}
    scores = {"true": np.array([1.0, 2.0, 3.0, 4.0]), "teleport": np.array([5.0, np.inf, 6.0, np.inf])}
    rows = summarise(scores, windows)
    assert rows["teleport"]["failed"] == 2 and rows["true"]["failed"] == 0
    assert rows["teleport"]["auroc"] == 1.0 and rows["teleport"]["mean"] == 5.5
    assert np.isfinite(rows["teleport"]["z_score"]) and rows["teleport"]["max_abs_change"] == 4.0  # |5 - 1|
    # the median z-score: of (5 - 2.5) / sd and (6 - 2.5) / sd, sd the population std of the true scores
    assert np.isclose(rows["teleport"]["z_median"], 3.0 / np.std([1.0, 2.0, 3.0, 4.0]))
    outlier = summarise({"true": np.array([1.0, 2.0, 3.0, 4.0]), "teleport": np.array([5.0, 6.0, 7.0, 1e20])},
                        {"true": np.arange(4), "teleport": np.arange(4)})["teleport"]
    assert outlier["z_score"] > 1e18 and np.isclose(outlier["z_median"], 4.0 / np.std([1.0, 2.0, 3.0, 4.0]))


def test_violations_are_also_scored_against_frames_of_the_same_ensemble():
    """``auroc_vs_ensemble``: P(violation > another frame of the trajectory), the specificity a detector of
    physics needs beyond "not the next frame"; NaN for the nuisances, and without ensemble frames."""
    from atomzoo.surprise import aggregate, summarise

    windows = {k: np.arange(4) for k in ("true", "ensemble", "teleport")}
    scores = {"true": np.array([1.0, 2.0, 3.0, 4.0]), "ensemble": np.array([5.0, 6.0, 7.0, 8.0]),
              "teleport": np.array([6.0, 7.0, 8.0, 9.0])}
    rows = summarise(scores, windows)
    assert rows["teleport"]["auroc"] == 1.0 and rows["ensemble"]["auroc"] == 1.0
    # teleport 6, 7, 8, 9 against ensemble 5-8: 1.5 + 2.5 + 3.5 + 4 of 16 pairs (ties count a half)
    assert rows["teleport"]["auroc_vs_ensemble"] == 11.5 / 16
    assert np.isnan(rows["ensemble"]["auroc_vs_ensemble"]) and np.isnan(rows["true"]["auroc_vs_ensemble"])
    assert np.isnan(summarise({"true": scores["true"], "teleport": scores["teleport"]},
                              windows)["teleport"]["auroc_vs_ensemble"])
    summary = aggregate({("trained", "teleport"): [rows["teleport"], {**rows["teleport"], "auroc_vs_ensemble": 0.5}]})
    assert np.isclose(summary[0]["auroc_vs_ensemble"], (11.5 / 16 + 0.5) / 2)
    assert "| 0.609 +- 0.109 |" in table_of(summary)  # the table's "AUROC vs ensemble frame" column


def table_of(summary: list[dict]) -> str:
    """surprise.md of ``summary`` (what write_summary writes)."""
    import tempfile

    from atomzoo.surprise import write_summary

    with tempfile.TemporaryDirectory() as folder:
        write_summary(summary, Path(folder))
        return (Path(folder) / "surprise.md").read_text()


def test_surprise_command_end_to_end(tmp_path, fit_on_trajectories):
    ckpt = fit_on_trajectories("configs/objectives/world_model.yaml", "wm", "--model.predictor_depth", "2")
    denoising = fit_on_trajectories("configs/objectives/denoising.yaml", "dn")  # another objective's encoder
    out = tmp_path / "surprise"
    common = ["--data", str(ROOT / "configs/data/trajectories.yaml"), "--data-path", str(FIXTURE),
              "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    summary = main(["--ckpt", str(ckpt), str(ckpt), *common, "--out", str(out), "--max-windows", "16",
                    "--encoder-ckpt", str(denoising), f"noised={denoising}"])  # fmt: skip
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    assert {p.name for p in out.iterdir()} == {"surprise.csv", "surprise.md", "surprise.png", "surprise_windows.csv"}
    assert (out / "surprise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {(r["detector"], r["kind"]): r for r in summary}
    detectors = ("trained", "persistence", "random", "random_persistence", "xtb", "backbone:worldmodel",
                 "backbone:random", "backbone:denoising", "backbone:noised")  # NAME=FILE names a detector
    assert set(rows) == {(d, k) for d in detectors for k in KINDS}
    # one denoising file: scored on the first checkpoint's draws only; every other detector on both seeds
    single = ("backbone:denoising", "backbone:noised")
    assert all(r["seeds"] == (1 if r["detector"] in single else 2) and r["n"] == 16 for r in summary)
    assert rows[("backbone:noised", "swap")]["auroc"] == rows[("backbone:denoising", "swap")]["auroc"]  # same file
    for detector in ("trained", "persistence", "random", "random_persistence", "backbone:worldmodel",
                     "backbone:random", "backbone:denoising"):
        # an invariant encoder: rotation and permutation change nothing but rounding
        assert rows[(detector, "rotation")]["max_abs_change"] < 1e-4 * rows[(detector, "true")]["mean"]
        assert rows[(detector, "permutation")]["max_abs_change"] < 1e-4 * rows[(detector, "true")]["mean"]
    assert rows[("xtb", "rotation")]["max_abs_change"] < 1e-6 and rows[("xtb", "permutation")]["max_abs_change"] < 1e-6
    # the physical reference sees the violations that change the energy
    for kind in ("teleport", "swap", "stretch"):
        assert rows[("xtb", kind)]["auroc"] > 0.9 and rows[("xtb", kind)]["z_score"] > 3
    scores = list(csv.DictReader((out / "surprise_windows.csv").open()))
    assert len(scores) == (7 * 2 + 2) * len(KINDS) * 16
    assert all(np.isfinite(float(r["score"])) or r["detector"] == "xtb" for r in scores)  # plain numbers
    # the summary recomputed from the windows file alone is the run's summary
    again = main(["--from-windows", str(out / "surprise_windows.csv"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again/surprise.md").read_text() == table_of(summary)
    key = lambda r: (r["detector"], r["kind"])  # noqa: E731
    for a, b in zip(sorted(summary, key=key), sorted(again, key=key)):
        assert a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a), (a, b)
    # the persistence detector is the trained encoder without its predictor: ||z_t - z_target||^2, recomputed
    from atomzoo.objectives import WorldModel
    from atomzoo.surprise import load_data, model_surprise, window_batch

    model = WorldModel.load_from_checkpoint(ckpt, map_location="cpu").eval()
    data = load_data(ROOT / "configs/data/trajectories.yaml", str(FIXTURE), str(tmp_path / "cache"))
    # the run's own draws for its first checkpoint (seed 0), true targets only
    cases = [c for c in make_cases(data, "test", list(KINDS), np.random.default_rng(0), max_windows=16)
             if c.kind == "true"]
    with torch.no_grad():
        z = model.embed_windows(window_batch(cases).to(model.device))
        expected = (z[:, -2] - z[:, -1]).pow(2).sum(-1).double().numpy()
        predicted = (model.predict(z[:, :-1], window_batch(cases).horizon, window_batch(cases).temperature)
                     - z[:, -1]).pow(2).sum(-1).double().numpy()
    prediction, persistence = model_surprise(model, cases)
    assert np.allclose(persistence, expected, rtol=1e-5) and np.allclose(prediction, predicted, rtol=1e-5)
    assert not np.allclose(expected, predicted)

    def written(detector: str) -> np.ndarray:  # the windows file's seed-0 true-target scores, in window order
        return np.array([float(r["score"]) for r in scores if (r["detector"], r["seed"], r["kind"]) == (detector, "0", "true")])

    assert np.allclose(written("trained"), predicted, rtol=1e-5) and np.allclose(written("persistence"), expected, rtol=1e-5)
    # the encoder distance: zero when the target is the last history frame, positive for another frame
    from atomzoo.model_files import build_backbone
    from atomzoo.surprise import backbone_distance

    backbone = build_backbone(denoising)
    same = [Case(c.kind, c.window, c.trajectory, [*c.frames[:-1], c.frames[-2]], c.horizon, c.temperature)
            for c in cases]
    assert np.all(backbone_distance(backbone, same) < 1e-10) and np.all(backbone_distance(backbone, cases) > 0)
    assert np.allclose(written("backbone:denoising"), backbone_distance(backbone, cases), rtol=1e-5)
    assert np.allclose(written("backbone:worldmodel"), backbone_distance(model.backbone, cases), rtol=1e-5)
    with pytest.raises(ValueError, match="--encoder-ckpt: 2 files of backbone:denoising for 1 --ckpt"):
        main(["--ckpt", str(ckpt), *common, "--out", str(tmp_path / "x"), "--max-windows", "2", "--no-xtb",
              "--encoder-ckpt", str(denoising), str(denoising)])
    assert {r["kind"] for r in scores} == set(KINDS) and set(GEOMETRIC) < set(KINDS)
    table = (out / "surprise.md").read_text()
    assert table.startswith("| detector | kind |") and "| xtb | teleport | violation | 16 |" in table
