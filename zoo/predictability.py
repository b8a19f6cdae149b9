"""How predictable is an MD window's target frame beyond "nothing moves", in a given representation?

A world model that never beats the persistence prediction (``z_{t+k} = z_t``) leaves two readings
open: the motion of its embedding is unpredictable from the history (nothing to learn), or it is
predictable and the predictor failed to learn it. This command separates them with closed-form
predictors fitted on the training windows and scored on held-out ones, each relative to persistence.

For every window of the data (history frames ``t - (h-1)s .. t``, target ``t + k``; the
TrajectoryDataModule's windows) and a representation ``r`` of a frame, the predictors of ``r_{t+k}``:

* ``persistence``: ``r_t`` (the normaliser: its error is 1 in every table);
* ``constant_velocity``: ``r_t + (k / s) (r_t - r_{t-s})``, parameter-free extrapolation;
* ``shared_ar``: ``r_t + sum_j c_j (r_{t-js+s} - r_{t-js})``, one coefficient per history difference and
  target offset ``k``, shared by every dimension (least squares on the training windows): the
  mean-reverting or oscillating motion of a vibrating molecule, readable in any representation;
* ``ridge``: ``r_t + W d + b``, a full linear map of the ``h - 1`` history differences ``d`` per target
  offset (ridge regression on standardised differences, ``ridge`` x windows; fixed-size
  representations only);
* ``world_model``: the checkpoint's own predictor on its embedding (eval mode), the learned answer;
* ``refit lr=<lr>`` (with ``--refit-steps N``): a fresh copy of that predictor (same architecture and
  options, seeded random weights; :func:`refit_predictor`) trained alone, for ``N`` steps, on the frozen
  embeddings of the training windows: can the predictor learn what the closed-form ones find when the
  encoder holds still? ``--refit-set predictor_depth=1 predictor_dropout=0 ...`` changes the copy's
  WorldModel options (its size, dropout, ...), named in the row.

Representations: ``embedding`` (the world model's ``z``: backbone -> pooled -> projector), ``backbone`` (the
mean-pooled per-atom scalars), for the trained checkpoint and its randomly initialised twin
(:func:`atomzoo.surprise.random_like`), and ``distances`` (every interatomic distance of the frame, A:
the physics itself, independent of any network; per molecule, so only the shared predictors apply).

Score: the mean over the split's windows of ``||prediction - r_{t+k}||^2``, divided by that of
persistence (below 1: predictable beyond "nothing moves"), per representation, predictor and offset
``k``; with several checkpoints (seeds), mean and standard deviation over seeds.

    python -m atomzoo.predictability --ckpt s0/last.ckpt s1/last.ckpt --data configs/data/trajectories.yaml \\
        --split test --out predictability

writes ``predictability.csv`` (every row) and ``predictability.md``. Numbers: docs/world_model.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

PREDICTORS = ("persistence", "constant_velocity", "shared_ar", "ridge", "world_model")


def window_parts(rep: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(last [W, D], differences [W, h-1, D] oldest first, change [W, D])`` of the windows ``rows``
    ``[W, h+1]`` in the representation ``rep`` ``[frames, D]`` (``change = r_{t+k} - r_t``).

    Raises:
        ValueError: windows with fewer than two history frames (no difference to extrapolate from).
    """
    if rows.shape[1] < 3:
        raise ValueError(f"windows of {rows.shape[1] - 1} history frame(s): the predictors need at least 2 "
                         "(--data.init_args.history >= 2)")  # fmt: skip
    hist, target = rep[rows[:, :-1]], rep[rows[:, -1]]
    return hist[:, -1], np.diff(hist, axis=1), target - hist[:, -1]


def offsets(rows: np.ndarray) -> np.ndarray:
    """``[W]`` target offset ``k`` in history strides (``(row_target - row_t) / (row_t - row_{t-s})``)."""
    return (rows[:, -1] - rows[:, -2]) / (rows[:, -2] - rows[:, -3])


def fit_shared_ar(diffs: np.ndarray, change: np.ndarray) -> np.ndarray:
    """``[h-1]`` least-squares coefficients ``c`` of ``change ~ sum_j c_j diffs[:, j]``, pooled over windows
    and dimensions (padded zeros of a variable-size representation contribute nothing)."""
    a = diffs.transpose(0, 2, 1).reshape(-1, diffs.shape[1])
    return np.linalg.lstsq(a, change.reshape(-1), rcond=None)[0]


def fit_ridge(diffs: np.ndarray, change: np.ndarray, ridge: float = 1e-3):
    """A function ``diffs -> change`` ``[W, D]``: multi-output ridge regression on the flattened history
    differences (standardised on the training windows, ``ridge`` relative to their number; intercept the
    training mean of every output)."""
    x = diffs.reshape(len(diffs), -1)
    mean, std = x.mean(0), x.std(0) + 1e-12
    a = (x - mean) / std
    y_mean = change.mean(0)
    weights = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ (change - y_mean))
    return lambda d: ((d.reshape(len(d), -1) - mean) / std) @ weights + y_mean


def closed_form_scores(rep: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                       ridge: bool = True) -> list[dict]:
    """Error ratios to persistence of the closed-form predictors, per target offset (module docstring).

    Args:
        rep: ``[frames, D]`` a representation of every store row (zero-padded for variable sizes).
        train_rows, test_rows: ``[W, h+1]`` windows to fit on and to score.
        ridge: include the full linear map (only for representations whose dimensions mean the same
            thing in every molecule).

    Returns:
        one dict per predictor and offset: ``predictor``, ``offset``, ``ratio``, ``persistence_mse``
        (the mean squared norm of the change), ``windows``.
    """
    out = []
    train_k, test_k = offsets(train_rows), offsets(test_rows)
    for k in np.unique(test_k):
        fit, score = train_rows[train_k == k], test_rows[test_k == k]
        _, fit_diffs, fit_change = window_parts(rep, fit)
        _, diffs, change = window_parts(rep, score)
        base = float((change**2).sum(1).mean())
        predicted = {"persistence": np.zeros_like(change), "constant_velocity": k * diffs[:, -1]}
        if len(fit):
            predicted["shared_ar"] = np.einsum("wjd,j->wd", diffs, fit_shared_ar(fit_diffs, fit_change))
            if ridge:
                predicted["ridge"] = fit_ridge(fit_diffs, fit_change)(diffs)
        for name, p in predicted.items():
            ratio = float(((change - p) ** 2).sum(1).mean()) / base if base > 0 else float("nan")
            out.append({"predictor": name, "offset": float(k), "ratio": ratio, "persistence_mse": base,
                        "windows": int(len(score))})
    return out


@torch.no_grad()
def world_model_scores(model, embedding: np.ndarray, table: dict) -> list[dict]:
    """Error ratio to persistence of the world model's own predictor on the embeddings ``[frames, D]``
    (eval mode), per target offset, for the windows of ``table`` (:meth:`TrajectoryDataModule.window_table`)."""
    model.eval()
    rows, k = table["rows"], offsets(table["rows"])
    dtype = next(model.parameters()).dtype
    hist = torch.as_tensor(embedding[rows[:, :-1]], dtype=dtype)
    pred = model.predict(hist, torch.as_tensor(table["horizon"], dtype=dtype),
                         torch.as_tensor(table["temperature"], dtype=dtype)).double().numpy()
    target, last = embedding[rows[:, -1]], embedding[rows[:, -2]]
    out = []
    for value in np.unique(k):
        m = k == value
        base = float(((target[m] - last[m]) ** 2).sum(1).mean())
        out.append({"predictor": "world_model", "offset": float(value),
                    "ratio": float(((target[m] - pred[m]) ** 2).sum(1).mean()) / base,
                    "persistence_mse": base, "windows": int(m.sum())})
    return out


def refit_predictor(model, embedding: np.ndarray, table: dict, steps: int, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), seed: int = 0, batch_size: int = 32):
    """Train ``model``'s predictor alone on frozen embeddings; return ``model`` in eval mode.

    ``model`` is a :class:`~atomzoo.objectives.WorldModel` with fresh weights (in the command, the
    checkpoint's architecture and options with seeded random weights, :func:`atomzoo.surprise.random_like`:
    the residual head zero-initialised as in training); its encoder is never used. Its action encoder,
    transformer and head learn ``MSE(predict(z_history, action), z_{t+k})`` on windows drawn uniformly
    with replacement from ``table`` (the training windows, :meth:`TrajectoryDataModule.window_table`),
    ``batch_size`` per step: AdamW at ``lr`` with ``weight_decay`` and ``betas`` on every predictor
    parameter, linear warm-up over the first 5 % of the steps then cosine decay to 0, gradients clipped at
    norm 1.0 (LeWM's), dropout as configured. Seeded (``seed``) window draws.

    Args:
        embedding: ``[frames, D]`` the trained encoder's embedding of every store row.
        steps: optimiser steps (>= 1).
    """
    parts = (model.action_encoder, model.predictor, model.prediction_head,
             *([model.difference_norm] if model.difference_norm is not None else []))
    params = [p for part in parts for p in part.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    dtype = next(model.parameters()).dtype
    z = torch.as_tensor(embedding, dtype=dtype)
    rows = torch.as_tensor(table["rows"])
    horizon = torch.as_tensor(table["horizon"], dtype=dtype)
    temperature = torch.as_tensor(table["temperature"], dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    for part in parts:
        part.train()
    for _ in range(steps):
        i = torch.randint(len(rows), (batch_size,), generator=generator)
        loss = (model.predict(z[rows[i, :-1]], horizon[i], temperature[i]) - z[rows[i, -1]]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


def distances(store) -> np.ndarray:
    """``[frames, P]`` every interatomic distance of every store row (A; upper triangle, row-major),
    zero-padded to the largest molecule's pair count."""
    offsets_ = np.asarray(store.offsets)
    sizes = np.diff(offsets_)
    n_max = int(sizes.max())
    out = np.zeros((len(sizes), n_max * (n_max - 1) // 2))
    pos = np.asarray(store.arrays["pos"], dtype=np.float64)
    for row, (a, b) in enumerate(zip(offsets_[:-1], offsets_[1:])):
        p = pos[a:b]
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(len(p), 1)]
        out[row, : d.size] = d
    return out


def run_predictability(checkpoints: list[str], data, split: str = "test", out: str | Path = "predictability",
                       seed: int = 0, random_baseline: bool = True, refit_steps: int = 0,
                       refit_lrs: list[float] | None = None, refit_options: dict | None = None) -> list[dict]:
    """Score every predictor on every representation (module docstring); write ``predictability.csv`` and
    ``predictability.md`` under ``out``; return the rows. ``refit_steps > 0`` adds the refitted predictor
    at every learning rate of ``refit_lrs`` (default: the checkpoint's), built with the WorldModel options
    ``refit_options`` changed."""
    from atomzoo.dynamics_probes import features
    from atomzoo.objectives import WorldModel
    from atomzoo.surprise import random_like

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = data.window_table("train"), data.window_table(split)
    results = [{"representation": "distances", "detector": "physics", "seed": -1, **r}
               for r in closed_form_scores(distances(data.store), train["rows"], test["rows"], ridge=False)]
    frames = np.arange(len(np.asarray(data.store.offsets)) - 1)
    for i, checkpoint in enumerate(checkpoints):
        trained = WorldModel.load_from_checkpoint(checkpoint, map_location="cpu")
        detectors = {"trained": trained}
        if random_baseline:
            detectors["random"] = random_like(trained, checkpoint, seed + i)
        for name, model in detectors.items():
            feats = features(model, data, frames)
            for kind in ("embedding", "backbone"):
                rows = closed_form_scores(feats[kind], train["rows"], test["rows"])
                if name == "trained" and kind == "embedding":
                    rows += world_model_scores(model, feats[kind], test)
                    for lr in (refit_lrs or [float(trained.hparams["lr"])]) if refit_steps > 0 else []:
                        fresh = random_like(trained, checkpoint, seed + i, **(refit_options or {}))
                        refit = refit_predictor(fresh, feats[kind], train, refit_steps, lr, trained.weight_decay,
                                                trained.betas, seed + i)
                        label = " ".join([f"refit lr={lr:g}", *(f"{k}={v}" for k, v in (refit_options or {}).items())])
                        rows += [{**r, "predictor": label} for r in world_model_scores(refit, feats[kind], test)]
                results += [{"representation": kind, "detector": name, "seed": seed + i, **r} for r in rows]
    write_tables(results, out, split)
    return results


def write_tables(results: list[dict], out: Path, split: str) -> None:
    """``predictability.csv`` (every row) and ``predictability.md`` (mean +- std over seeds of the ratio)."""
    keys = ["representation", "detector", "seed", "predictor", "offset", "ratio", "persistence_mse", "windows"]
    (out / "predictability.csv").write_text(
        ",".join(keys) + "\n" + "".join(",".join(repr(float(r[k])) if isinstance(r[k], float) else str(r[k])
                                                 for k in keys) + "\n" for r in results))
    ks = sorted({r["offset"] for r in results})
    lines = [f"Mean squared error of predicting the target frame's representation, divided by that of persistence "
             f"(the last history frame), on the {split} windows; fitted predictors on the training windows; "
             "mean ± std over seeds (below 1: predictable beyond \"nothing moves\").", "",
             "| representation | network | predictor | " + " | ".join(f"k = {k:g}" for k in ks) + " |",
             "|---|---|---|" + "---:|" * len(ks)]
    groups = dict.fromkeys((r["representation"], r["detector"], r["predictor"]) for r in results)
    for rep, detector, predictor in groups:
        cells = []
        for k in ks:
            values = np.array([r["ratio"] for r in results if (r["representation"], r["detector"], r["predictor"],
                                                               r["offset"]) == (rep, detector, predictor, k)])
            spread = f" ± {values.std():.3f}" if values.size > 1 else ""
            cells.append(f"{values.mean():.3f}{spread}" if values.size else "–")
        lines.append(f"| {rep} | {detector} | {predictor} | " + " | ".join(cells) + " |")
    windows = {k: next(r["windows"] for r in results if r["offset"] == k) for k in ks}
    lines += ["", "Windows scored per offset k (in history strides): "
              + ", ".join(f"k = {k:g}: {n}" for k, n in windows.items()) + "."]
    (out / "predictability.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    import inspect

    import yaml

    from atomzoo.objectives import WorldModel
    from atomzoo.surprise import load_data, world_model_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    world_model_arguments(p, out="predictability")
    p.add_argument("--refit-steps", type=int, default=0,
                   help="also train a fresh copy of each checkpoint's predictor alone on the frozen embeddings for "
                        "this many steps (0: off)")  # fmt: skip
    p.add_argument("--refit-lr", type=float, nargs="+", default=None,
                   help="learning rate(s) of the refitted predictor (default: the checkpoint's)")
    p.add_argument("--refit-set", nargs="+", default=[], metavar="OPTION=VALUE",
                   help="WorldModel options of the refitted predictor, e.g. predictor_depth=1 predictor_dropout=0")
    args = p.parse_args(argv)
    if args.refit_steps < 0:
        p.error(f"--refit-steps {args.refit_steps}: give 0 (off) or a number of steps")
    refit_options = {}
    for item in args.refit_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--refit-set {item!r}: write OPTION=VALUE, e.g. predictor_depth=1")
        refit_options[key] = yaml.safe_load(value)
    unknown = set(refit_options) - set(inspect.signature(WorldModel).parameters)
    if unknown:
        p.error(f"--refit-set: {sorted(unknown)} are not WorldModel options (atomzoo.objectives.WorldModel)")
    data = load_data(args.data, args.data_path, args.cache_dir)
    results = run_predictability(args.ckpt, data, args.split, args.out, args.seed, not args.no_random,
                                 args.refit_steps, args.refit_lr, refit_options)
    print((Path(args.out) / "predictability.md").read_text())
    return results


if __name__ == "__main__":
    main()
