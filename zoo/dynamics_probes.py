"""Linear probes of a world model's embedding: does it encode the physical state of an MD frame?

For every frame of the training and the held-out trajectories of a TrajectoryDataModule, three
per-frame quantities, each centred on its trajectory's mean (so that the probe must read the state
of the molecule along its trajectory, not which molecule it is):

* ``energy``: the frame's energy (the file's, e.g. GFN2-xTB), eV;
* ``force_rms``: the root mean square of the atomic force vectors' norms, eV/A;
* ``dihedral``: the cosine of one torsion angle of the molecule, the first chain ``i-j-k-l`` of bonded
  heavy atoms (bonds of the trajectory's first frame; hydrogens join when the molecule
  has fewer than four heavy atoms in a chain; :func:`torsion_chain`); molecules without such a chain
  are left out of this probe.

Features: the world model's embedding ``z`` (backbone -> pooled -> projector, what the predictor
reads) and the backbone's mean-pooled per-atom scalars, both centred on their trajectory's mean like
the targets (no labels involved). A ridge probe
(:func:`atomzoo.runner.probe.ridge_predict`) is fitted on the training split's frames and scored on
the ``--split`` frames (default: test, molecules never seen in training) by R^2 (1 - residual / total
sum of squares of the centred target) and MAE, for every checkpoint (seed) and for randomly
initialised networks of the same architecture (one per checkpoint, seeded): a learned state shows as
an R^2 well above the random networks'.

    python -m atomzoo.dynamics_probes --ckpt s0/last.ckpt s1/last.ckpt --data configs/data/trajectories.yaml \
        --out probes

writes ``probes.csv`` (one row per detector x seed x features x quantity) and ``probes.md`` (means
and standard deviations over seeds). Numbers: docs/world_model.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from atomzoo.runner.probe import ridge_predict

QUANTITIES = {"energy": "eV", "force_rms": "eV/A", "dihedral": "cos"}


def torsion_chain(z: np.ndarray, pos: np.ndarray) -> tuple[int, int, int, int] | None:
    """The first chain ``i-j-k-l`` of four distinct bonded atoms (heavy atoms only if they form one),
    or ``None``. Bonds: :func:`atomzoo.surprise.bonds` (1.2 x the sum of covalent radii)."""
    from atomzoo.surprise import bonds

    n = len(z)
    bonded = np.zeros((n, n), dtype=bool)
    for i, j in bonds(z, pos):
        bonded[i, j] = bonded[j, i] = True
    for allowed in (z > 1, np.ones(n, dtype=bool)):
        for j in np.nonzero(allowed)[0]:
            for k in np.nonzero(bonded[j] & allowed)[0]:
                for i in np.nonzero(bonded[j] & allowed)[0]:
                    if i == k:
                        continue
                    for l in np.nonzero(bonded[k] & allowed)[0]:
                        if l not in (i, j):
                            return int(i), int(j), int(k), int(l)
    return None


def cos_dihedral(pos: np.ndarray, chain: tuple[int, int, int, int]) -> float:
    """Cosine of the dihedral angle of ``chain`` (positions ``[n, 3]``)."""
    i, j, k, l = chain
    b1, b2, b3 = pos[j] - pos[i], pos[k] - pos[j], pos[l] - pos[k]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return float(np.dot(n1, n2) / (np.linalg.norm(n1) * np.linalg.norm(n2) + 1e-12))


def frame_quantities(data, rows: np.ndarray) -> dict[str, np.ndarray]:
    """``{quantity: [len(rows)]}`` of the store rows (frames) ``rows``, before centring (NaN: undefined)."""
    store = data.store
    energy = np.asarray(store.arrays["labels"][rows, 0], dtype=np.float64) if "labels" in store.arrays else None
    out = {"energy": energy if energy is not None else np.full(len(rows), np.nan),
           "force_rms": np.full(len(rows), np.nan), "dihedral": np.full(len(rows), np.nan)}
    chains: dict[int, tuple | None] = {}
    trajectory = np.asarray(store.arrays["trajectory"])
    for n, row in enumerate(rows):
        a, b = int(store.offsets[row]), int(store.offsets[row + 1])
        z = np.asarray(store.arrays["z"][a:b], dtype=np.int64)
        pos = np.asarray(store.arrays["pos"][a:b], dtype=np.float64)
        if "forces" in store.arrays:
            forces = np.asarray(store.arrays["forces"][a:b], dtype=np.float64)
            out["force_rms"][n] = float(np.sqrt((forces ** 2).sum(-1).mean()))
        t = int(trajectory[row])
        if t not in chains:
            first = int(data.trajectory_table[t]["first_row"])
            c, d = int(store.offsets[first]), int(store.offsets[first + 1])
            chains[t] = torsion_chain(z, np.asarray(store.arrays["pos"][c:d], dtype=np.float64))
        if chains[t] is not None:
            out["dihedral"][n] = cos_dihedral(pos, chains[t])
    return out


def centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` minus the mean of their group (NaNs stay NaN)."""
    out = values.copy()
    for g in np.unique(groups):
        mask = groups == g
        out[mask] -= np.nanmean(values[mask])
    return out


def centred_rows(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rows of ``values`` ``[F, D]`` minus the mean row of their group."""
    out = values.copy()
    for g in np.unique(groups):
        out[groups == g] -= values[groups == g].mean(0)
    return out


@torch.no_grad()
def features(model, data, rows: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
    """``{"embedding": [F, D], "backbone": [F, width]}`` of the frames ``rows`` (model in eval mode)."""
    from torch_geometric.data import Batch
    from torch_geometric.utils import scatter

    from atomzoo.objectives.heads import SIGRegProjector

    model.eval()
    store, out = data.store, {"embedding": [], "backbone": []}
    dtype = next(model.parameters()).dtype
    for start in range(0, len(rows), batch_size):
        items = []
        for row in rows[start:start + batch_size]:
            a, b = int(store.offsets[row]), int(store.offsets[row + 1])
            items.append(_frame(store, a, b, dtype))
        batch = Batch.from_data_list(items)
        scalars = model.backbone(batch).scalars
        pooled = SIGRegProjector.pool(scalars, batch.batch, int(batch.num_graphs))
        out["embedding"].append(model.projection(pooled).double().numpy())
        out["backbone"].append(scatter(scalars, batch.batch, 0, dim_size=int(batch.num_graphs), reduce="mean")
                               .double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _frame(store, a: int, b: int, dtype):
    """The PyG ``Data`` of the store's atoms ``a:b`` (one frame)."""
    from torch_geometric.data import Data

    return Data(z=torch.as_tensor(np.asarray(store.arrays["z"][a:b], dtype=np.int64)),
                pos=torch.as_tensor(np.array(store.arrays["pos"][a:b]), dtype=dtype))


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """R^2 and MAE of the ridge probe (frames with an undefined target left out)."""
    fit, score = ~np.isnan(train_y), ~np.isnan(test_y)
    if fit.sum() < 10 or score.sum() < 2:
        return {"r2": float("nan"), "mae": float("nan"), "frames": int(score.sum())}
    pred = ridge_predict(train_x[fit], train_y[fit], test_x[score])
    y = test_y[score]
    r2 = 1.0 - float(((pred - y) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())
    return {"r2": r2, "mae": float(np.abs(pred - y).mean()), "frames": int(score.sum())}


def run_probes(checkpoints: list[str], data, split: str = "test", out: str | Path = "probes", seed: int = 0,
               random_baseline: bool = True) -> list[dict]:
    """Probe every checkpoint (and its random twin); write ``probes.csv`` and ``probes.md``; return the rows."""
    from atomzoo.objectives import WorldModel
    from atomzoo.surprise import random_like

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {name: np.sort(np.asarray(data.splits[name])) for name in ("train", split)}
    trajectory = np.asarray(data.store.arrays["trajectory"])
    targets = {name: {q: centred(v, trajectory[r]) for q, v in frame_quantities(data, r).items()}
               for name, r in rows.items()}
    results = []
    for i, checkpoint in enumerate(checkpoints):
        trained = WorldModel.load_from_checkpoint(checkpoint, map_location="cpu")
        detectors = {"trained": trained}
        if random_baseline:
            detectors["random"] = random_like(trained, checkpoint, seed + i)
        for name, model in detectors.items():
            # features centred per trajectory like the targets: the probe reads the state along a
            # trajectory, not which molecule it is (the centring uses no labels)
            feats = {s: {k: centred_rows(v, trajectory[r]) for k, v in features(model, data, r).items()}
                     for s, r in rows.items()}
            for kind in ("embedding", "backbone"):
                for quantity, unit in QUANTITIES.items():
                    scores = probe_scores(feats["train"][kind], targets["train"][quantity], feats[split][kind],
                                          targets[split][quantity])
                    results.append({"detector": name, "seed": seed + i, "features": kind, "quantity": quantity,
                                    "unit": unit, **scores})
    write_tables(results, out, split)
    return results


def write_tables(results: list[dict], out: Path, split: str) -> None:
    """``probes.csv`` (every row) and ``probes.md`` (mean +- std over seeds of R^2 and MAE)."""
    keys = ["detector", "seed", "features", "quantity", "unit", "r2", "mae", "frames"]
    (out / "probes.csv").write_text(
        ",".join(keys) + "\n" + "".join(",".join(repr(r[k]) if isinstance(r[k], float) else str(r[k]) for k in keys)
                                      + "\n" for r in results))
    lines = [f"Ridge probes of per-trajectory-centred frame quantities, fitted on the training trajectories, "
             f"scored on the {split} split (mean ± std over seeds):", "",
             "| features | quantity | trained R² | random R² | trained MAE | random MAE | frames |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for kind in ("embedding", "backbone"):
        for quantity, unit in QUANTITIES.items():
            cells = []
            for metric in ("r2", "mae"):
                for detector in ("trained", "random"):
                    values = np.array([r[metric] for r in results if r["detector"] == detector
                                       and r["features"] == kind and r["quantity"] == quantity], dtype=float)
                    if values.size == 0 or np.isnan(values).all():
                        cells.append("–")
                        continue
                    spread = f" ± {np.nanstd(values):.3f}" if values.size > 1 else " (n = 1)"
                    cells.append(f"{np.nanmean(values):.3f}{spread}" + (f" {unit}" if metric == "mae" else ""))
            frames = next((r["frames"] for r in results if r["features"] == kind and r["quantity"] == quantity), 0)
            lines.append(f"| {kind} | {quantity} | " + " | ".join(cells) + f" | {frames} |")
    (out / "probes.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    from atomzoo.surprise import load_data, world_model_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    world_model_arguments(p, out="probes")
    args = p.parse_args(argv)
    data = load_data(args.data, args.data_path, args.cache_dir)
    results = run_probes(args.ckpt, data, args.split, args.out, args.seed, not args.no_random)
    print((Path(args.out) / "probes.md").read_text())
    return results


if __name__ == "__main__":
    main()
