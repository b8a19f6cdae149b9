"""The surprise test of a world model on held-out MD (LeWorldModel's violation-of-expectation test, for atoms).

    python -m atomzoo.surprise --ckpt runs/wm/version_0/checkpoints/last.ckpt [more checkpoints: seeds] \\
        --data configs/data/trajectories.yaml --split test --out results/surprise

For every window of the split (history frames ``t - (h-1)s .. t``, target ``t + k``) the surprise of
a :class:`~atomzoo.objectives.WorldModel` is ``||pred(z_history, action) - z_target||^2`` (squared
Euclidean norm over the embedding), in eval mode. It is computed for the true target and for the
target replaced by (one draw per window, seeded):

* changes that must not matter (``nuisance``):
  ``rotation`` (a random rigid rotation about the centroid and a translation of up to 5 A in each
  direction), ``permutation`` (the target's atoms in a random order: exactly the true surprise for
  an invariant encoder, up to rounding -- a sanity check), ``ensemble`` (another frame of the same
  trajectory, at least ``min_separation`` frames from the target, i.e. a draw from the same thermal
  ensemble; frames from any split may be drawn);
* physical violations (``violation``): ``teleport`` (one atom moved 0.5-1.0 A in a random direction),
  ``swap`` (the elements of two atoms of different elements exchanged, positions kept), ``stretch``
  (one bond, a pair closer than 1.2 x the sum of covalent radii, lengthened symmetrically to its
  largest length over the trajectory plus ``stretch_margin`` A), ``reversed`` (time runs backwards:
  history ``t, t - s, .., t - (h-1)s`` and target ``t - (h-1)s - k``; windows for which that frame is
  not in the trajectory are left out).

Detectors, each scoring the same perturbed windows:

* ``trained``: the checkpoint's world model;
* ``persistence``: the same trained encoder without its predictor, ``||z_t - z_target||^2`` with ``z_t``
  the embedding of the last history frame (the "nothing moves" prediction). The control that says
  whether the predictor matters: an encoder whose embedding jumps for any odd structure is "surprised"
  by a violation without knowing any dynamics, and then this detector does as well as ``trained``;
* ``backbone:<objective>`` (with ``--encoder-ckpt``): the same "nothing moves" distance on the mean-pooled
  backbone features of other pretrained networks (any objective: coordinate denoising, JEPA, ...) and of
  the world model's own backbone (``backbone:worldmodel``): is the world-model objective what makes an
  encoder flag broken geometry, or does any pretraining on the same frames?
* ``random``: the same architecture randomly initialised (seeded; the checkpoint's hyperparameters), and
  ``random_persistence``, its "nothing moves" distance (the baseline of ``persistence``; with
  ``--encoder-ckpt`` also ``backbone:random``, the baseline of the ``backbone:`` detectors);
* ``xtb``: the physical reference, ``|E(target) - E(x_t)|`` with GFN2-xTB (tblite) energies of the
  (perturbed) target and the last history frame (needs ``pip install tblite``; ``--no-xtb`` skips it).

Per detector and kind: the mean score; the z-score, the mean over windows of ``(s - mean(s_true)) /
std(s_true)``, and its median over windows (the table shows the median: a few enormous scores, e.g.
an atom teleported onto another, swamp the mean); the AUROC of telling the kind's scores from the true ones (Mann-Whitney, ties 1/2);
and for the geometric kinds the largest ``|s - s_true|`` of a window (``max_abs_change``). With
several checkpoints (seeds ``seed, seed + 1, ...``; perturbations and the random network are drawn
per seed), means and standard deviations over seeds.

Writes, under ``--out``: ``surprise_windows.csv`` (every score), ``surprise.csv`` (the summary),
``surprise.md`` (the summary as a table) and ``surprise.png`` (AUROC per kind and detector).
``--from-windows surprise_windows.csv --out DIR`` recomputes the summary from the scores alone.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

NUISANCE = ("rotation", "permutation", "ensemble")
VIOLATION = ("teleport", "swap", "stretch", "reversed")
KINDS = ("true", *NUISANCE, *VIOLATION)
#: kinds that perturb the target frame of the same window (a paired comparison with "true")
GEOMETRIC = ("rotation", "permutation", "teleport", "swap", "stretch")


@dataclass
class Case:
    """One scored window: frames (``z`` [n], ``pos`` [n, 3] A) oldest first, the last one the target."""

    kind: str
    window: int
    trajectory: int
    frames: list[tuple[np.ndarray, np.ndarray]]
    horizon: float
    temperature: float


# ----- perturbations ---------------------------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3 x 3 rotation matrix (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def bonds(z: np.ndarray, pos: np.ndarray) -> list[tuple[int, int]]:
    """Atom pairs closer than 1.2 x the sum of their covalent radii (ASE's table)."""
    from ase.data import covalent_radii

    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    limit = 1.2 * (covalent_radii[z][:, None] + covalent_radii[z][None])
    i, j = np.nonzero(np.triu(d < limit, k=1))
    return list(zip(i.tolist(), j.tolist()))


def perturb(kind: str, z: np.ndarray, pos: np.ndarray, rng: np.random.Generator,
            bond_max: dict[tuple[int, int], float], stretch_margin: float
            ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The target frame ``(z, pos)`` after the geometric perturbation ``kind`` (module docstring)."""
    z, pos = z.copy(), pos.copy()
    if kind == "rotation":
        centre = pos.mean(axis=0)
        return z, (pos - centre) @ random_rotation(rng).T + centre + rng.uniform(-5.0, 5.0, size=3)
    if kind == "permutation":
        order = rng.permutation(z.size)
        return z[order], pos[order]
    if kind == "teleport":
        atom, direction = rng.integers(z.size), rng.normal(size=3)
        pos[atom] += direction / np.linalg.norm(direction) * rng.uniform(0.5, 1.0)
        return z, pos
    if kind == "swap":
        pairs = [(i, j) for i in range(z.size) for j in range(i + 1, z.size) if z[i] != z[j]]
        if not pairs:
            raise ValueError("swap needs atoms of two elements")
        i, j = pairs[rng.integers(len(pairs))]
        z[i], z[j] = z[j], z[i]
        return z, pos
    if kind == "stretch":
        pairs = sorted(bond_max)
        i, j = pairs[rng.integers(len(pairs))]
        bond = pos[j] - pos[i]
        length = np.linalg.norm(bond)
        extra = bond_max[(i, j)] + stretch_margin - length
        pos[i] -= 0.5 * extra * bond / length
        pos[j] += 0.5 * extra * bond / length
        return z, pos
    raise ValueError(f"unknown geometric perturbation {kind!r}; choose one of {GEOMETRIC}")


def frame(store, row: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = int(store.offsets[row]), int(store.offsets[row + 1])
    return np.asarray(store.arrays["z"][a:b], dtype=np.int64), np.asarray(store.arrays["pos"][a:b], dtype=np.float64)


def make_cases(dm, split: str, kinds: list[str], rng: np.random.Generator, min_separation: int = 10,
               stretch_margin: float = 0.3, max_windows: int | None = None) -> list[Case]:  # fmt: skip
    """Every window of ``split`` of the set-up TrajectoryDataModule ``dm``, once per kind (module docstring)."""
    store, table = dm.store, dm.trajectory_table
    windows = dm.windows(split)
    if max_windows is not None and windows.shape[0] > max_windows:
        windows = windows[np.sort(rng.choice(windows.shape[0], max_windows, replace=False))]
    trajectory = np.asarray(store.arrays["trajectory"])
    frame_index = np.asarray(store.arrays["frame"])
    bond_max: dict[int, dict[tuple[int, int], float]] = {}
    cases = []
    for w, rows in enumerate(windows):
        t = int(trajectory[rows[0]])
        info = table[t]
        first, count = info["first_row"], info["frames"]
        history, target = [frame(store, int(r)) for r in rows[:-1]], int(rows[-1])
        k = int(frame_index[rows[-1]] - frame_index[rows[-2]])
        common = {"window": w, "trajectory": t, "horizon": k * info["time_step_fs"],
                  "temperature": info["temperature_K"]}
        for kind in kinds:
            if kind == "true":
                cases.append(Case(kind, frames=[*history, frame(store, target)], **common))
            elif kind == "ensemble":
                far = [r for r in range(first, first + count) if abs(r - target) >= min_separation]
                if far:
                    other = int(far[rng.integers(len(far))])
                    cases.append(Case(kind, frames=[*history, frame(store, other)], **common))
            elif kind == "reversed":
                back = int(rows[0]) - k  # t - (h-1)s - k
                if back >= first:
                    frames = [frame(store, int(r)) for r in rows[-2::-1]] + [frame(store, back)]
                    cases.append(Case(kind, frames=frames, **common))
            else:
                if kind == "stretch" and t not in bond_max:
                    z0, _ = frame(store, first)
                    pos = np.asarray(store.arrays["pos"][store.offsets[first]:store.offsets[first + count]])
                    pos = pos.reshape(count, z0.size, 3).astype(np.float64)
                    pairs = bonds(z0, pos[0])
                    bond_max[t] = {(i, j): float(np.linalg.norm(pos[:, i] - pos[:, j], axis=-1).max())
                                   for i, j in pairs}
                z, pos = frame(store, target)
                cases.append(Case(kind, frames=[*history, perturb(kind, z, pos, rng, bond_max.get(t, {}),
                                                                  stretch_margin)], **common))  # fmt: skip
    return cases


# ----- detectors -----------------------------------------------------------------------------------------
def window_batch(cases: list[Case], dtype=torch.float32):
    """The PyG batch of ``cases`` in the window layout of ``atomzoo.datamodules.trajectory``."""
    from torch_geometric.data import Batch, Data

    items = [Data(z=torch.as_tensor(z, dtype=torch.long), pos=torch.as_tensor(pos, dtype=dtype))
             for case in cases for z, pos in case.frames]  # fmt: skip
    batch = Batch.from_data_list(items)
    p = len(cases[0].frames)
    batch.window = torch.arange(len(cases)).repeat_interleave(p)
    batch.window_position = torch.arange(p).repeat(len(cases))
    batch.horizon = torch.tensor([c.horizon for c in cases], dtype=dtype)
    batch.temperature = torch.tensor([c.temperature for c in cases], dtype=dtype)
    return batch


@torch.no_grad()
def model_surprise(model, cases: list[Case], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(prediction, persistence)`` of every case, from one encoder pass (the model in eval mode):
    ``||pred - z_target||^2``, the world model's surprise, and ``||z_last - z_target||^2``, the no-change
    prediction (``z_last`` the embedding of the last history frame: the same encoder without its predictor)."""
    model.eval()
    dtype = next(model.parameters()).dtype
    prediction, persistence = [], []
    for start in range(0, len(cases), batch_size):
        batch = window_batch(cases[start:start + batch_size], dtype).to(model.device)
        z = model.embed_windows(batch)
        pred = model.predict(z[:, :-1], batch.horizon, batch.temperature)
        prediction.append((pred - z[:, -1]).pow(2).sum(-1).double().cpu().numpy())
        persistence.append((z[:, -2] - z[:, -1]).pow(2).sum(-1).double().cpu().numpy())
    return np.concatenate(prediction), np.concatenate(persistence)


@torch.no_grad()
def backbone_distance(backbone, cases: list[Case], batch_size: int = 64) -> np.ndarray:
    """``||f(x_t) - f(x_target)||^2`` of every case, ``f`` the backbone's mean-pooled per-atom scalar features
    (``[F]`` per frame; the features a fine-tuning head reads) and ``x_t`` the last history frame: the
    "nothing moves" detector of any pretrained encoder, whatever its objective (eval mode)."""
    from torch_geometric.utils import scatter

    backbone.eval()
    dtype = next(backbone.parameters()).dtype
    out = []
    for start in range(0, len(cases), batch_size):
        chunk = [replace(case, frames=case.frames[-2:]) for case in cases[start:start + batch_size]]
        batch = window_batch(chunk, dtype)
        scalars = backbone(batch).scalars
        pooled = scatter(scalars, batch.batch, 0, dim_size=int(batch.num_graphs), reduce="mean").view(len(chunk), 2, -1)
        out.append((pooled[:, 0] - pooled[:, 1]).pow(2).sum(-1).double().cpu().numpy())
    return np.concatenate(out)


def encoder_name(path: str | Path) -> str:
    """``backbone:<objective>`` of a model file: its objective's class name in lower case
    (``backbone:denoising``, ``backbone:jepa``, ...; ``backbone:unknown`` when the file does not record it)."""
    from atomzoo.model_files import read

    objective = read(path).objective
    return "backbone:" + (objective.rsplit(".", 1)[-1].lower() if objective else "unknown")


def xtb_energy_jump(cases: list[Case]) -> np.ndarray:
    """``|E(target) - E(last history frame)|`` in eV, GFN2-xTB (tblite), every frame computed once.

    A frame whose SCF does not converge (GFN2-xTB cannot describe it: a swapped or teleported atom can
    do that) gets an infinite jump: the detector flags it above every converged one (AUROC), and the
    means and z-scores are taken over the finite scores (:func:`summarise` counts the others)."""
    from ase import Atoms
    from ase.calculators.calculator import CalculationFailed
    from tblite.ase import TBLite

    cache: dict[bytes, float] = {}

    def energy(z: np.ndarray, pos: np.ndarray) -> float:
        key = z.tobytes() + np.round(pos, 8).tobytes()
        if key not in cache:
            atoms = Atoms(numbers=z, positions=pos)
            atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
            try:
                cache[key] = float(atoms.get_potential_energy())
            except CalculationFailed:
                cache[key] = float("nan")
        return cache[key]

    jumps = np.array([abs(energy(*c.frames[-1]) - energy(*c.frames[-2])) for c in cases])
    return np.where(np.isnan(jumps), np.inf, jumps)


def random_like(trained, checkpoint: str | Path, seed: int, **overrides):
    """``trained``'s architecture (the checkpoint's backbone arguments and objective options, with
    ``overrides`` of the objective's options) with fresh, seeded random weights. Raises ``ValueError`` when
    the checkpoint does not record every backbone argument."""
    from atomzoo import model_files

    spec = model_files.read(checkpoint).backbone
    if not spec.get("init_args_complete", False):
        raise ValueError(f"{checkpoint}: the backbone's constructor arguments are not all recorded "
                         f"({spec.get('init_args')}); use --no-random")  # fmt: skip
    torch.manual_seed(seed)
    backbone = type(trained.backbone)(**spec.get("init_args", {}))
    options = {k: v for k, v in trained.hparams.items() if k not in ("backbone", "init_from")}
    return type(trained)(backbone, **{**options, **overrides})


# ----- statistics --------------------------------------------------------------------------------------------
def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative) + P(tie) / 2 (Mann-Whitney U / (n_pos n_neg))."""
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (positive.size * negative.size))


def summarise(scores: dict[str, np.ndarray], windows: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per kind: ``n``, ``failed`` (infinite scores: a detector that could not score the window, e.g. an
    unconverged SCF), ``mean`` and ``z_score`` over the finite scores, ``z_median`` (the median of the
    windows' z-scores: the robust summary, which a few enormous scores -- an atom teleported onto another
    -- cannot swamp as they do the mean), ``auroc`` against ``true`` (all scores; infinity ranks highest),
    ``auroc_vs_ensemble`` of a violation against ``ensemble`` (another frame of the same trajectory: a
    plausible state that is not the next one; NaN without it): whether the detector flags what breaks
    physics more than what is merely not the next frame, and ``max_abs_change`` (paired kinds, finite pairs)."""
    true = scores["true"][np.isfinite(scores["true"])]
    mu, sd = (float(true.mean()), float(true.std())) if true.size else (float("nan"), 0.0)
    out = {}
    for kind, s in scores.items():
        finite = s[np.isfinite(s)]
        row = {"n": int(s.size), "failed": int(s.size - finite.size),
               "mean": float(finite.mean()) if finite.size else float("nan"),
               "z_score": float(((finite - mu) / sd).mean()) if sd > 0 and finite.size else float("nan"),
               "z_median": float(np.median((finite - mu) / sd)) if sd > 0 and finite.size else float("nan"),
               "auroc": auroc(s, scores["true"]) if kind != "true" else 0.5, "max_abs_change": float("nan"),
               "auroc_vs_ensemble": auroc(s, scores["ensemble"])
               if kind not in NUISANCE and kind != "true" and "ensemble" in scores else float("nan")}  # fmt: skip
        if kind in GEOMETRIC:
            paired = dict(zip(windows["true"].tolist(), scores["true"].tolist()))
            changes = [abs(v - paired[w]) for w, v in zip(windows[kind].tolist(), s.tolist())
                       if np.isfinite(v) and np.isfinite(paired[w])]
            row["max_abs_change"] = float(max(changes)) if changes else float("nan")
        out[kind] = row
    return out


def run_surprise(checkpoints: list[str], data, split: str = "test", out: str | Path = "surprise", seed: int = 0,
                 random_baseline: bool = True, xtb: bool = True, min_separation: int = 10, stretch_margin: float = 0.3,
                 max_windows: int | None = None, kinds: tuple[str, ...] = KINDS,
                 encoders: list[str] | None = None) -> list[dict]:  # fmt: skip
    """Run the test (module docstring) with the set-up TrajectoryDataModule ``data``; write the files; return
    the summary rows (``detector``, ``kind``, ``group``, ``seeds``, ``mean``, ``z_score``, ``z_score_std``,
    ``z_median``, ``z_median_std``, ``auroc``, ``auroc_std``, ``max_abs_change``, ``n``).

    ``encoders``: model files of other pretrained networks (any objective; :func:`backbone_distance`),
    each ``FILE`` (detector :func:`encoder_name`) or ``NAME=FILE`` (detector ``backbone:NAME``, e.g. to tell
    JEPA-EMA from JEPA-SIGReg, one class); the k-th file of a detector is scored on the k-th checkpoint's
    draws (pair seeds by order). ``ValueError`` when an objective has more files than there are checkpoints."""
    from atomzoo.model_files import build_backbone
    from atomzoo.objectives import WorldModel

    by_encoder: dict[str, list[str]] = {}
    for entry in encoders or []:
        name, _, path = str(entry).rpartition("=") if "=" in str(entry) else ("", "", str(entry))
        by_encoder.setdefault(f"backbone:{name}" if name else encoder_name(path), []).append(path)
    for name, paths in by_encoder.items():
        if len(paths) > len(checkpoints):
            raise ValueError(f"--encoder-ckpt: {len(paths)} files of {name} for {len(checkpoints)} --ckpt seeds; "
                             "give at most one per seed, in seed order")  # fmt: skip

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed: dict[tuple[str, str], list[dict]] = {}
    lines = ["detector,seed,kind,window,trajectory,score"]
    for i, checkpoint in enumerate(checkpoints):
        rng = np.random.default_rng(seed + i)
        cases = make_cases(data, split, list(kinds), rng, min_separation, stretch_margin, max_windows)
        by_kind = {k: [c for c in cases if c.kind == k] for k in kinds}
        by_kind = {k: v for k, v in by_kind.items() if v}
        windows = {k: np.array([c.window for c in v]) for k, v in by_kind.items()}
        trained = WorldModel.load_from_checkpoint(checkpoint, map_location="cpu")

        def record(name: str, scores: dict[str, np.ndarray]) -> None:
            for kind, row in summarise(scores, windows).items():
                per_seed.setdefault((name, kind), []).append(row)
            lines.extend(f"{name},{seed + i},{k},{c.window},{c.trajectory},{float(s)!r}"
                         for k, v in by_kind.items() for c, s in zip(v, scores[k]))  # fmt: skip

        worlds = {("trained", "persistence"): trained}  # detector names: (its prediction, its no-change distance)
        if random_baseline:
            worlds[("random", "random_persistence")] = twin = random_like(trained, checkpoint, seed + i)
        for (predicted, no_change), model in worlds.items():
            if model.history < len(by_kind["true"][0].frames) - 1:
                raise ValueError(f"{checkpoint}: the model covers {model.history} history frames, the data has "
                                 f"{len(by_kind['true'][0].frames) - 1} (--data history)")  # fmt: skip
            both = {k: model_surprise(model, v) for k, v in by_kind.items()}
            record(predicted, {k: v[0] for k, v in both.items()})
            record(no_change, {k: v[1] for k, v in both.items()})
        backbones = {"backbone:worldmodel": trained.backbone} if by_encoder else {}
        if by_encoder and random_baseline:
            backbones["backbone:random"] = twin.backbone
        backbones.update({name: build_backbone(paths[i]) for name, paths in by_encoder.items() if i < len(paths)})
        for name, backbone in backbones.items():
            record(name, {k: backbone_distance(backbone, v) for k, v in by_kind.items()})
        if xtb:
            record("xtb", {k: xtb_energy_jump(v) for k, v in by_kind.items()})
    (out / "surprise_windows.csv").write_text("\n".join(lines) + "\n")
    summary = aggregate(per_seed)
    write_summary(summary, out)
    return summary


def aggregate(per_seed: dict[tuple[str, str], list[dict]]) -> list[dict]:
    """The summary rows from :func:`summarise`'s rows per ``(detector, kind)``, one per seed: means and
    standard deviations over seeds (NaN for one seed)."""
    summary = []
    for (detector, kind), rows in per_seed.items():
        def stat(key):
            values = np.array([r[key] for r in rows], dtype=float)
            if np.isnan(values).all():  # e.g. a nuisance's AUROC against the ensemble frames: no numpy warning
                return float("nan"), float("nan")
            return float(np.nanmean(values)), float(np.nanstd(values)) if len(rows) > 1 else float("nan")

        (z, z_sd), (zm, zm_sd), (a, a_sd) = stat("z_score"), stat("z_median"), stat("auroc")
        ae, ae_sd = stat("auroc_vs_ensemble")
        summary.append({"detector": detector, "kind": kind,
                        "group": "reference" if kind == "true" else "nuisance" if kind in NUISANCE else "violation",
                        "seeds": len(rows), "n": int(np.mean([r["n"] for r in rows])),
                        "failed": int(sum(r["failed"] for r in rows)), "mean": stat("mean")[0],
                        "z_score": z, "z_score_std": z_sd, "z_median": zm, "z_median_std": zm_sd,
                        "auroc": a, "auroc_std": a_sd, "auroc_vs_ensemble": ae, "auroc_vs_ensemble_std": ae_sd,
                        "max_abs_change": float(np.nanmax([r["max_abs_change"] for r in rows]))
                        if kind in GEOMETRIC else float("nan")})  # fmt: skip
    return summary


def summary_from_windows(path: str | Path, out: str | Path | None = None) -> list[dict]:
    """Recompute the summary from a ``surprise_windows.csv`` (no model, no xTB: the scores are in the file)
    and write ``surprise.csv``, ``surprise.md`` and ``surprise.png`` beside it (or under ``out``)."""
    import csv

    path = Path(path)
    grouped: dict[tuple[str, str], dict[str, tuple[list[int], list[float]]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            kinds = grouped.setdefault((row["detector"], row["seed"]), {})
            windows, scores = kinds.setdefault(row["kind"], ([], []))
            windows.append(int(row["window"]))
            scores.append(float(row["score"]))
    per_seed: dict[tuple[str, str], list[dict]] = {}
    for (detector, _seed), kinds in grouped.items():
        rows = summarise({k: np.array(v[1]) for k, v in kinds.items()}, {k: np.array(v[0]) for k, v in kinds.items()})
        for kind in (k for k in KINDS if k in rows):
            per_seed.setdefault((detector, kind), []).append(rows[kind])
    summary = aggregate(per_seed)
    out = Path(out) if out is not None else path.parent
    out.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out)
    return summary


def write_summary(summary: list[dict], out: Path) -> None:
    """``surprise.csv``, ``surprise.md`` and ``surprise.png`` from the summary rows."""
    keys = ["detector", "kind", "group", "seeds", "n", "failed", "mean", "z_score", "z_score_std", "z_median",
            "z_median_std", "auroc", "auroc_std", "auroc_vs_ensemble", "auroc_vs_ensemble_std", "max_abs_change"]  # fmt: skip
    (out / "surprise.csv").write_text("\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys)
                                                                     for r in summary]) + "\n")  # fmt: skip

    def pm(value, spread, digits):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}" + ("" if math.isnan(spread) else f" +- {spread:.{digits}f}")

    md = ["| detector | kind | group | windows | not scored | mean score | median z-score | AUROC | "
          "AUROC vs ensemble frame | max abs change |",
          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in summary:
        change = "-" if math.isnan(r["max_abs_change"]) else f"{r['max_abs_change']:.2e}"
        md.append(f"| {r['detector']} | {r['kind']} | {r['group']} | {r['n']} | {r['failed']} | {r['mean']:.4g} | "
                  f"{pm(r['z_median'], r['z_median_std'], 2)} | {pm(r['auroc'], r['auroc_std'], 3)} | "
                  f"{pm(r['auroc_vs_ensemble'], r['auroc_vs_ensemble_std'], 3)} | {change} |")  # fmt: skip
    (out / "surprise.md").write_text("\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    detectors = list(dict.fromkeys(r["detector"] for r in summary))
    kinds = [k for k in KINDS[1:] if any(r["kind"] == k for r in summary)]
    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 2, 3.6))
    width = 0.8 / max(1, len(detectors))
    for d, detector in enumerate(detectors):
        rows = {r["kind"]: r for r in summary if r["detector"] == detector}
        x = np.arange(len(kinds)) + (d - (len(detectors) - 1) / 2) * width
        ax.bar(x, [rows[k]["auroc"] if k in rows else np.nan for k in kinds], width,
               yerr=[0 if k not in rows or math.isnan(rows[k]["auroc_std"]) else rows[k]["auroc_std"] for k in kinds],
               label=detector, color=f"C{d}")  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.axvline(len(NUISANCE) - 0.5, color="black", lw=0.6)
    ax.set_xticks(np.arange(len(kinds)), kinds, rotation=30)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("AUROC vs. true next frame")
    ax.set_title("surprise: must not matter (left) | physical violations (right)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "surprise.png", dpi=120)
    plt.close(fig)


def load_data(config: str | Path, path: str | None = None, cache_dir: str | None = None):
    """A set-up TrajectoryDataModule from a data config file (``data: class_path / init_args``)."""
    import yaml
    from atomzoo.datamodules import TrajectoryDataModule

    spec = (yaml.safe_load(Path(config).read_text()) or {}).get("data") or {}
    if not str(spec.get("class_path", "")).endswith("TrajectoryDataModule"):
        raise ValueError(f"{config}: the surprise test needs a TrajectoryDataModule data config "
                         f"(class_path {spec.get('class_path')!r}); e.g. configs/data/trajectories.yaml")  # fmt: skip
    options = dict(spec.get("init_args") or {})
    if path:
        options["path"] = path
    if cache_dir:
        options["cache_dir"] = cache_dir
    data = TrajectoryDataModule(**options)
    data.setup()
    return data


def world_model_arguments(p: argparse.ArgumentParser, required: bool = True, out: str | None = None) -> None:
    """The arguments every world-model evaluation command takes: checkpoints and trajectory data
    (``--ckpt``, ``--data``, ``--data-path``, ``--cache-dir``; read with :func:`load_data`); with ``out``
    (the default output folder) also those of the commands that score the test split against random twins:
    ``--split`` (val / test), ``--out``, ``--seed`` and ``--no-random``."""
    p.add_argument("--ckpt", nargs="+", required=required, help="WorldModel checkpoints (one per seed)")
    p.add_argument("--data", required=required, help="TrajectoryDataModule config, e.g. configs/data/trajectories.yaml")
    p.add_argument("--data-path", default=None, help="override the config's trajectory file(s)")
    p.add_argument("--cache-dir", default=None)
    if out is not None:
        p.add_argument("--split", default="test", choices=["val", "test"])
        p.add_argument("--out", default=out)
        p.add_argument("--seed", type=int, default=0, help="seed of the first random network (then +1 per checkpoint)")
        p.add_argument("--no-random", action="store_true", help="skip the randomly initialised networks")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    world_model_arguments(p, required=False)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", default="surprise")
    p.add_argument("--seed", type=int, default=0, help="seed of the first checkpoint (then +1 per checkpoint)")
    p.add_argument("--no-random", action="store_true", help="skip the randomly initialised network")
    p.add_argument("--no-xtb", action="store_true", help="skip the GFN2-xTB energy-jump detector")
    p.add_argument("--min-separation", type=int, default=10, help="frames between the target and an ensemble frame")
    p.add_argument("--stretch-margin", type=float, default=0.3, help="A beyond a bond's largest length")
    p.add_argument("--max-windows", type=int, default=None, help="score at most this many windows (a seeded choice)")
    p.add_argument("--encoder-ckpt", nargs="+", default=None, metavar="[NAME=]FILE",
                   help="other pretrained networks (any objective's checkpoint or export): their backbone's pooled-"
                        "feature distance ||f(x_t) - f(target)||^2 as detectors backbone:NAME (default NAME: the "
                        "objective's class, lower case; the k-th file of a NAME paired with the k-th --ckpt), and "
                        "the world model's own as backbone:worldmodel")
    p.add_argument("--from-windows", default=None, metavar="CSV", help="recompute the summary (surprise.csv, .md, "
                   ".png, into --out) from a surprise_windows.csv; no model, no data")
    args = p.parse_args(argv)
    if args.from_windows:
        summary = summary_from_windows(args.from_windows, args.out)
        print((Path(args.out) / "surprise.md").read_text())
        return summary
    if not args.ckpt or not args.data:
        p.error("--ckpt and --data are required (or --from-windows CSV)")
    data = load_data(args.data, args.data_path, args.cache_dir)
    summary = run_surprise(args.ckpt, data, args.split, args.out, args.seed, not args.no_random, not args.no_xtb,
                           args.min_separation, args.stretch_margin, args.max_windows,
                           encoders=args.encoder_ckpt)  # fmt: skip
    print((Path(args.out) / "surprise.md").read_text())
    return summary


if __name__ == "__main__":
    main()
