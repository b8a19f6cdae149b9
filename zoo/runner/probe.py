"""Probes of pretrained backbones: what each objective trained into the frozen features.

Three probes and one set of diagnostics, all on frozen networks, on one QM9 target:

* **closed-form ridge probe** (:func:`ridge_mae`): the frozen backbone's per-atom scalars mean-pooled
  over each molecule (``[B, width]``), standardised on the training molecules, ridge regression to the
  target on the first ``train_size`` training molecules, MAE on the whole test split; for objectives
  with a projector (JEPA), the same on the projector's output (the embedding the loss saw);
* **frozen-backbone MLP probe** (:func:`mlp_probe_mae`; Zaidi et al. 2023, "Pre-training via
  denoising", frozen-backbone experiment: only the output head trains): a per-atom MLP
  (width -> width/2 -> 1, SiLU) on the frozen per-atom scalars, mean-pooled, L1 loss on the
  standardised target, Adam with cosine decay; the step with the lowest validation MAE is tested;
* **embedding diagnostics** (:func:`atomzoo.objectives.diagnostics.collapse_statistics`): per-dimension
  std, effective rank and the SIGReg statistic of the pooled features (and the projector output) of
  the validation molecules;

each against the same probes of ``random_nets`` randomly initialised networks of the same architecture
(seeds 0, 1, ...): a pretrained feature is only informative where it beats random ones.

    zoo-bench probe runs/bench/qm9_objectives/cells/pretrain/painn/denoising/c0/run --target homo
    zoo-bench probe benchmarks/matrices/objectives_v2.yaml     # every finished pretraining cell
                                                               # + 3 random nets -> <output>/probes.csv

:func:`probe_matrix` appends to ``<output>/probes.csv`` (rewritten atomically after every model; a model
with rows there is not probed again) and the report's ``probes`` section reads it
(:func:`probes_table`: the networks pretrained on clean data; :func:`probes_paired_table`: one
objective's probe MAEs minus another's, paired by pretraining seed; :func:`probes_spread_table`: how
much each objective's probes vary from seed to seed against another's); its ``noise`` section pairs the networks
pretrained on corrupted data with their clean twins (:func:`noise_probes_table`). Measured numbers: docs/benchmarks.md.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import Subset
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from atomzoo.datamodules import QM9DataModule
from atomzoo.model_files import load_into_backbone, read, resolve_class

#: columns of ``probes.csv``
PROBE_COLUMNS = ["model", "backbone", "objective", "seed", "features", "metric", "target", "value", "commit",
                 "corruption_rate", "corruption"]
#: the probe metrics, in table order (MAE in meV for eV targets, else the target's unit)
PROBE_METRICS = ("ridge_mae", "mlp_mae", "emb_std", "emb_erank", "emb_sigreg")
#: their column names in the report's tables
_NAMES = {"ridge_mae": "ridge MAE", "mlp_mae": "MLP MAE", "emb_std": "std", "emb_erank": "eff. rank",
          "emb_sigreg": "SIGReg"}


def backbone_of(run: Path, random_init: bool) -> torch.nn.Module:
    """The backbone of a ``zoo fit`` run folder (its config.yaml), with its final weights (the newer of
    ``last.ckpt`` and ``last-step.ckpt``: see :func:`atomzoo.runner.execute.checkpoint_of`)."""
    config = run / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} does not exist: pass the run folder of a zoo fit (it holds config.yaml)")
    spec = yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]
    backbone = resolve_class(spec["class_path"])(**spec.get("init_args", {}))
    if not random_init:
        saved = sorted((run / "checkpoints").glob("last*.ckpt"),
                       key=lambda f: (f.stat().st_mtime, f.name == "last.ckpt"))
        load_into_backbone(backbone, str(saved[-1] if saved else run / "checkpoints" / "last.ckpt"))
    return backbone.eval()


@torch.no_grad()
def features(backbone: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled per-atom scalars ``[B, width]`` and the target ``[B]`` of every molecule."""
    xs, ys = [], []
    for batch in loader:
        xs.append(scatter(backbone(batch).scalars, batch.batch, 0, reduce="mean"))
        ys.append(batch.y.reshape(-1))
    return torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy()


def closed_form_probe(run: Path, target: str = "homo", train_size: int = 10000, ridge: float = 1e-4,
                      random_init: bool = False, seed: int = 0) -> dict:
    """Test MAE of the ridge-regression probe of ``run``'s backbone on one QM9 target.

    Args:
        run: run folder of a ``zoo fit`` (``config.yaml``, ``checkpoints/last*.ckpt``).
        ridge: ridge strength relative to the number of training molecules.
        random_init: probe the same architecture with random weights (seeded by ``seed``).

    Returns:
        ``{"mae": float, "unit": str, "molecules": int}``: MAE in meV for eV targets, else the target's unit.

    Raises:
        FileNotFoundError: ``run`` holds no ``config.yaml``.
    """
    torch.manual_seed(seed)
    backbone = backbone_of(Path(run), random_init)
    data = QM9DataModule(targets=[target], train_size=train_size, eval_batch_size=256)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    x_train, y_train = features(backbone, DataLoader(data.dataset("train"), batch_size=256))
    x_test, y_test = features(backbone, data.test_dataloader())
    mae = ridge_mae(x_train, y_train, x_test, y_test, ridge)
    unit = data.target_info(target).unit
    scale, shown = (1000.0, "meV") if unit == "eV" else (1.0, unit)
    return {"mae": float(scale * mae), "unit": shown, "molecules": int(len(y_test))}


@dataclass
class Features:
    """Frozen features of one split: per-atom scalars ``atoms [N, F]`` with their molecule ``index [N]``,
    mean-pooled ``pooled [B, F]``, the projector's output ``projected [B, D]`` (``None`` without a
    projector) and the target ``y [B]`` (float64)."""

    atoms: torch.Tensor
    index: torch.Tensor
    pooled: np.ndarray
    projected: np.ndarray | None
    y: np.ndarray


@torch.no_grad()
def extract(backbone: torch.nn.Module, loader, projector=None) -> Features:
    """:class:`Features` of every molecule of ``loader`` (``projector``: a callable batch -> ``[B, D]``)."""
    atoms, index, pooled, projected, ys, offset = [], [], [], [], [], 0
    for batch in loader:
        scalars = backbone(batch).scalars
        atoms.append(scalars.float())
        index.append(batch.batch + offset)
        offset += int(batch.num_graphs)
        pooled.append(scatter(scalars, batch.batch, 0, dim_size=int(batch.num_graphs), reduce="mean"))
        if projector is not None:
            projected.append(projector(batch))
        ys.append(batch.y.reshape(-1))
    return Features(torch.cat(atoms), torch.cat(index), torch.cat(pooled).double().numpy(),
                    torch.cat(projected).double().numpy() if projector is not None else None,
                    torch.cat(ys).double().numpy())


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """Predictions ``[len(x_test)]`` of ridge regression fitted to ``y_train`` (features standardised on the
    training rows; ``ridge`` relative to the number of training rows; intercept the training mean)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    a, b = (x_train - mean) / std, (x_test - mean) / std
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    weights = np.linalg.solve(gram, a.T @ (y_train - y_train.mean()))
    return b @ weights + y_train.mean()


def ridge_mae(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              ridge: float = 1e-4) -> float:
    """Test MAE of :func:`ridge_predict`, in the targets' unit."""
    return float(np.abs(ridge_predict(x_train, y_train, x_test, ridge) - y_test).mean())


def mlp_probe_mae(train: Features, val: Features, test: Features, steps: int = 3000, batch_size: int = 64,
                  lr: float = 1e-3, seed: int = 0, every: int = 100) -> float:
    """Test MAE of a per-atom MLP head (``F -> F/2 -> 1``, SiLU, mean pooling) trained on frozen features.

    L1 loss on the target standardised with the training molecules' mean and std; Adam, cosine decay
    over ``steps`` steps of ``batch_size`` molecules; the head with the lowest validation MAE (checked
    every ``every`` steps) is tested. Deterministic for ``seed``. In the targets' unit."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    width = train.atoms.shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(width, max(width // 2, 1)), torch.nn.SiLU(),
                               torch.nn.Linear(max(width // 2, 1), 1)).double()
    mean, std = float(train.y.mean()), float(train.y.std() + 1e-12)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.argsort(train.index, stable=True)
    atoms, index = train.atoms[order].double(), train.index[order]
    starts = torch.searchsorted(index, torch.arange(len(train.y) + 1))
    target = torch.from_numpy((train.y - mean) / std)

    def predict(features: Features) -> np.ndarray:
        with torch.no_grad():
            out = head(features.atoms.double()).reshape(-1)
            pooled = scatter(out, features.index, 0, dim_size=len(features.y), reduce="mean")
        return pooled.numpy() * std + mean

    best, best_state = math.inf, None
    for step in range(steps):
        molecules = torch.randperm(len(train.y), generator=generator)[:batch_size]
        sizes = starts[molecules + 1] - starts[molecules]
        local = torch.repeat_interleave(torch.arange(len(molecules)), sizes)
        first = torch.repeat_interleave(starts[molecules] - (torch.cumsum(sizes, 0) - sizes), sizes)
        rows = first + torch.arange(int(sizes.sum()))  # each molecule's atoms, in order, without a Python loop
        pred = scatter(head(atoms[rows]).reshape(-1), local, 0, dim_size=len(molecules), reduce="mean")
        loss = (pred - target[molecules]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            mae = float(np.abs(predict(val) - val.y).mean())
            if mae < best:
                best, best_state = mae, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return float(np.abs(predict(test) - test.y).mean())


def _instantiate(spec):
    """An object from a saved ``{class_path, init_args}`` spec (nested specs built first); other values as they are."""
    if isinstance(spec, dict) and "class_path" in spec:
        return resolve_class(spec["class_path"])(**{k: _instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
    return spec


def objective_spec(run: Path, checkpoint: Path | None = None) -> dict:
    """The ``{class_path, init_args}`` of a run's objective: the ``model`` section of the run folder's
    ``config.yaml``, or -- the folder gone, e.g. in a fresh checkout -- the hyperparameters of
    ``checkpoint`` (a ``pretrain.keep`` copy holds them: the same constructor arguments).

    Raises:
        FileNotFoundError: neither the config nor the checkpoint exists.
    """
    config = Path(run) / "config.yaml"
    if config.exists():
        return yaml.safe_load(config.read_text())["model"]
    if checkpoint is not None and Path(checkpoint).is_file():
        from atomzoo.objectives.base import drop_linked_options

        hparams = dict(read(checkpoint).hyperparameters)
        drop_linked_options(hparams, None)  # the data options the CLI linked in, which the class does not take
        return {"class_path": hparams["_class_path"],
                "init_args": {k: v for k, v in hparams.items() if not k.startswith("_")}}
    raise FileNotFoundError(f"{config} does not exist: pass the run folder of a zoo fit (it holds config.yaml)"
                            + (f" or a checkpoint that exists (not {checkpoint})" if checkpoint is not None else ""))


def objective_of(run: Path, checkpoint: Path | None, random_init: bool, seed: int = 0, spec: dict | None = None):
    """The objective of a ``zoo fit`` run folder (its ``config.yaml``; ``spec``, from :func:`objective_spec`,
    overrides it), with the weights of ``checkpoint`` (or, with ``random_init``, freshly initialised from
    ``seed``), in eval mode."""
    spec = spec if spec is not None else objective_spec(run)
    torch.manual_seed(seed)
    objective = _instantiate(spec)
    if not random_init:
        objective.load_state_dict(read(checkpoint).state_dict, strict=True)
    return objective.eval()


def embedding_of(objective):
    """The objective's molecular embedding beyond the backbone's pooled features, as a callable
    ``batch -> [G, D]``, or ``None``: SCD's condition (``embed``: pooled scalars through its projection),
    JEPA's and the world model's projector output (``forward``); denoising has none."""
    if callable(getattr(objective, "embed", None)):
        return objective.embed
    if getattr(objective, "projection", None) is not None:
        return objective.forward
    return None


def probe_objective(objective, splits: dict[str, object], target_unit: str, mlp_steps: int = 3000,
                    seed: int = 0) -> list[dict]:
    """Probe rows (``features``, ``metric``, ``value``) of one objective's frozen backbone (and projector,
    when the objective has one) on ``splits`` (``train``/``val``/``test`` loaders)."""
    from atomzoo.objectives.diagnostics import collapse_statistics

    projector = embedding_of(objective)
    feats = {name: extract(objective.backbone, loader, projector) for name, loader in splits.items()}
    scale = 1000.0 if target_unit == "eV" else 1.0
    rows = []
    kinds = [("backbone", lambda f: f.pooled)] + ([("projector", lambda f: f.projected)] if projector else [])
    for kind, get in kinds:
        rows.append((kind, "ridge_mae", scale * ridge_mae(get(feats["train"]), feats["train"].y, get(feats["test"]),
                                                          feats["test"].y)))
        for name, value in collapse_statistics(torch.from_numpy(get(feats["val"])).float()).items():
            rows.append((kind, name, float(value)))
    rows.append(("backbone", "mlp_mae", scale * mlp_probe_mae(feats["train"], feats["val"], feats["test"],
                                                              steps=mlp_steps, seed=seed)))
    return [{"features": f, "metric": m, "value": v} for f, m, v in rows]


def probe_matrix(matrix, target: str = "homo", train_size: int = 10000, random_nets: int = 3,
                 mlp_steps: int = 3000, val_size: int = 1024, limit: int | None = None, log=print) -> Path:
    """Probe every finished pretraining cell of ``matrix`` (clean, and pretrained on corrupted data, with
    its ``corruption_rate`` and ``corruption``) and ``random_nets`` random networks of each backbone (the
    architecture of its first finished clean cell); rows go to ``<output>/probes.csv``.

    Resumable: a model with rows in the file is skipped. ``limit`` caps the test molecules (tests).

    A cell whose run folder is gone is probed from its ``pretrain.keep`` copy
    (:func:`atomzoo.runner.execute.checkpoint_of`; architecture from :func:`objective_spec`); a finished cell
    with neither (its weights lost with a machine, before the matrix kept copies) is not probed, and one
    line lists such cells and how to remake them.
    """
    from .execute import KEPT_SUBDIR, code_version, final_weights, log_dir, patches_dir
    from .matrix import expand
    from .results import finished_cells, read_rows, write_rows

    out = Path(matrix.output) / "probes.csv"
    rows = read_rows(out)
    done = {r["model"] for r in rows}
    finished = finished_cells(matrix.results_csv)
    cells = [c for c in expand(matrix) if c.phase == "pretrain" and c.id in finished]
    data = QM9DataModule(targets=[target], train_size=train_size, eval_batch_size=256)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    unit = data.target_info(target).unit
    test, val = data.dataset("test"), data.dataset("val")
    if limit is not None:
        test = Subset(test, range(min(limit, len(test))))
    splits = {"train": DataLoader(data.dataset("train"), batch_size=256),
              "val": DataLoader(Subset(val, range(min(val_size, len(val)))), batch_size=256),
              "test": DataLoader(test, batch_size=256)}
    commit = code_version(patches=patches_dir(matrix))
    # (model, backbone, objective, seed, its cell (a random network: the backbone's first cell), random init)
    models = [(c.id, c.backbone, c.objective, c.seed, c, False) for c in cells]
    for backbone in dict.fromkeys(c.backbone for c in cells):
        first = next((c for c in cells if c.backbone == backbone and c.corruption_rate == 0),
                     next(c for c in cells if c.backbone == backbone))  # the architecture: any finished cell's
        models += [(f"random/{backbone}/r{k}", backbone, "random init", k, first, True) for k in range(random_nets)]
    lost = []
    for model, backbone, objective, seed, cell, random_init in models:
        if model in done:
            continue
        weights = final_weights(matrix, cell)
        if weights is None:
            lost.append(cell.id)
            continue
        log(f"probing {model}")
        spec = objective_spec(log_dir(matrix, cell), weights)
        found = probe_objective(objective_of(log_dir(matrix, cell), None if random_init else weights, random_init,
                                             seed, spec), splits, unit, mlp_steps, seed)
        corrupted = {} if random_init else {"corruption_rate": cell.corruption_rate, "corruption": cell.corruption}
        rows += [{"model": model, "backbone": backbone, "objective": objective, "seed": seed, "target": target,
                  "commit": commit, **corrupted, **r} for r in found]
        write_rows(out, rows, PROBE_COLUMNS)
    if lost:
        log(f"not probed: {len(lost)} finished pretraining cells whose weights are gone (no finished run folder "
            f"under {matrix.cells_dir}, no pretrain.keep copy under {matrix.output / KEPT_SUBDIR}): "
            f"{', '.join(dict.fromkeys(lost))}; remake one with zoo-bench run MATRIX --only '^<id>$' --rerun to "
            "probe it")
    return out


def _read_probes(path: Path, models: set[str] | None) -> pd.DataFrame:
    """``probes.csv`` with ``corruption_rate`` numeric (0 for clean networks, random ones and rows written
    before the column existed) and, with ``models``, only those rows (:func:`probes_table`)."""
    frame = pd.read_csv(path, keep_default_na=False, dtype={"corruption": str})
    for column in ("corruption_rate", "corruption"):
        if column not in frame:
            frame[column] = ""
    frame["corruption_rate"] = pd.to_numeric(frame["corruption_rate"], errors="coerce").fillna(0.0)
    if models is not None:
        prefixes = tuple(m for m in models if m.endswith("/"))
        frame = frame[[m in models or m.startswith(prefixes) for m in frame["model"]]]
    return frame


def noise_probes_table(output: Path, models: set[str] | None = None) -> str:
    """Markdown table: what pretraining on corrupted data changed in the frozen backbone, per backbone x
    objective x artifact kind x rate, from ``<output>/probes.csv``: the paired change (corrupted minus
    clean, same pretraining seed) of the ridge and MLP probe MAEs with its 95 % interval (paired t over
    seeds, :func:`atomzoo.runner.paired.paired_interval`), and the embedding diagnostics of the pooled
    backbone features on the same clean validation molecules, clean -> corrupted (means over the seeds
    both have). Empty without corrupted rows. ``models`` as in :func:`probes_table`."""
    from .paired import by_seed, paired_interval

    path = Path(output) / "probes.csv"
    if not path.exists():
        return ""
    frame = _read_probes(path, models)
    frame = frame[(frame["features"] == "backbone") & (frame["objective"] != "random init")]
    corrupted = frame[frame["corruption_rate"] > 0]
    if corrupted.empty:
        return ""

    lines = ["| backbone | pretraining | artifact | seeds | ridge MAE change [95 %] | MLP MAE change [95 %] | "
             "eff. rank clean -> corrupted | std clean -> corrupted | SIGReg clean -> corrupted |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    groups = corrupted.groupby(["backbone", "objective", "corruption", "corruption_rate"])
    for (backbone, objective, kind, rate), rows in groups:
        clean = frame[(frame["backbone"] == backbone) & (frame["objective"] == objective)
                      & (frame["corruption_rate"] == 0)]
        texts, seeds = [], 0
        for metric in ("ridge_mae", "mlp_mae", "emb_erank", "emb_std", "emb_sigreg"):
            ours, base = by_seed(rows[rows["metric"] == metric]), by_seed(clean[clean["metric"] == metric])
            common = sorted(set(ours) & set(base))
            seeds = max(seeds, len(common))
            if not common:
                texts.append("–")
            elif metric.endswith("_mae"):
                mean, half = paired_interval([ours[k] - base[k] for k in common])
                texts.append(f"{mean:+.1f} (n = 1)" if half is None else
                             f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]")
            else:
                before = statistics.fmean(base[k] for k in common)
                after = statistics.fmean(ours[k] for k in common)
                texts.append(f"{before:.3g} -> {after:.3g}")
        lines.append(f"| {backbone} | {objective} | {kind or 'corruption'} {rate:g} | {seeds} | " + " | ".join(texts)
                     + " |")
    return "\n".join(lines)


def probes_table(output: Path, models: set[str] | None = None) -> str:
    """Markdown table of ``<output>/probes.csv``: per backbone x objective (random init last), the mean ±
    std over seeds (pretraining seeds, or random networks) of every probe metric; empty without the file.

    ``models``: probe only these rows' ``model`` ids (pretraining cell ids; an entry ending in ``/`` is a
    prefix, e.g. ``random/painn64/`` for every random network of that backbone); ``None``: every row.
    """
    path = Path(output) / "probes.csv"
    if not path.exists():
        return ""
    frame = _read_probes(path, models)
    frame = frame[frame["corruption_rate"] == 0]  # networks pretrained on corrupted data: noise_probes_table
    if frame.empty:
        return ""
    columns = [(f, m) for f in ("backbone", "projector") for m in PROBE_METRICS
               if ((frame["features"] == f) & (frame["metric"] == m)).any()]
    target = frame["target"].iloc[0]
    lines = ["| backbone | pretraining | seeds | " + " | ".join(f"{f}: {_NAMES[m]}" for f, m in columns) + " |",
             "|---|---|---:|" + "---:|" * len(columns)]
    order = sorted(set(zip(frame["backbone"], frame["objective"])), key=lambda r: (r[0], r[1] == "random init", r[1]))
    for backbone, objective in order:
        sub = frame[(frame["backbone"] == backbone) & (frame["objective"] == objective)]
        texts = []
        for f, m in columns:
            values = sub[(sub["features"] == f) & (sub["metric"] == m)]["value"].astype(float).tolist()
            if not values:
                texts.append("–")
                continue
            mean = statistics.fmean(values)
            spread = f" ± {statistics.stdev(values):.3g}" if len(values) > 1 else " (n = 1)"
            texts.append(f"{mean:.4g}{spread}")
        lines.append(f"| {backbone} | {objective} | {sub['seed'].nunique()} | " + " | ".join(texts) + " |")
    return (f"Probes of the frozen pretrained networks on QM9 {target} (MAE in meV; zoo-bench probe; "
            "random init: the same architecture with random weights):\n\n" + "\n".join(lines))


#: the backbone-feature probes whose spread across pretraining seeds :func:`probes_spread_table` compares
SPREAD_METRICS = ("ridge_mae", "mlp_mae", "emb_std", "emb_erank")


def _probe_pairs(output: Path, models: set[str] | None, references: tuple[str, ...]):
    """Yield ``(backbone, objective, reference, ours, theirs)`` for every pair of clean pretrained networks
    the report compares (each objective against each of ``references`` it is not, two references once,
    as in the paired table); ``ours`` / ``theirs`` map a backbone-feature metric to ``{seed: value}``."""
    from .paired import by_seed, listed_the_other_way

    path = Path(output) / "probes.csv"
    if not path.exists() or not references:
        return
    frame = _read_probes(path, models)
    frame = frame[(frame["corruption_rate"] == 0) & (frame["features"] == "backbone")
                  & (frame["objective"] != "random init")]
    for backbone, group in frame.groupby("backbone"):
        values: dict[str, dict[str, dict[int, float]]] = {}
        for (objective, metric), rows in group.groupby(["objective", "metric"]):
            values.setdefault(objective, {})[metric] = by_seed(rows)
        for objective in sorted(values):
            for ref in references:
                if ref != objective and ref in values and not listed_the_other_way(objective, ref, references):
                    yield backbone, objective, ref, values[objective], values[ref]


def probes_paired_table(output: Path, models: set[str] | None = None, references: tuple[str, ...] = ()) -> str:
    """Markdown table: each objective's frozen-backbone probe MAEs minus each reference's (pairs as in
    :func:`_probe_pairs`), paired by pretraining seed (the two networks of a seed share its
    initialisation), mean and 95 % interval (paired t, :func:`atomzoo.runner.paired.paired_interval`),
    bold where the interval excludes 0; negative: the objective's features predict the target better.
    Empty without ``probes.csv``, without references or without a pair of two or more common seeds."""
    from .paired import paired_interval

    lines = ["| backbone | pretraining | vs | seeds | ridge MAE difference [95 %] | MLP MAE difference [95 %] |",
             "|---|---|---|---:|---:|---:|"]
    for backbone, objective, ref, ours, theirs in _probe_pairs(output, models, references):
        texts, seeds = [], 0
        for metric in ("ridge_mae", "mlp_mae"):
            mine, other = ours.get(metric, {}), theirs.get(metric, {})
            common = sorted(set(mine) & set(other))
            seeds = max(seeds, len(common))
            if len(common) < 2:
                texts.append("–")
                continue
            mean, half = paired_interval([mine[k] - other[k] for k in common])
            text = f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"
            texts.append(f"**{text}**" if abs(mean) > half else text)
        if seeds >= 2:
            lines.append(f"| {backbone} | {objective} | {ref} | {seeds} | " + " | ".join(texts) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def probes_spread_table(output: Path, models: set[str] | None = None,
                        references: tuple[str, ...] = ()) -> str:
    """Markdown table: how steady each objective's frozen backbone features are across pretraining seeds
    against each of ``references`` (the matrix's, scratch aside: it has no pretrained network; pairs as
    in :func:`_probe_pairs`). Per pair and metric of :data:`SPREAD_METRICS`, the ratio of the two
    standard deviations over the pretraining seeds both have, with its 95 % interval
    (:func:`atomzoo.runner.paired.spread_ratio`, Pitman-Morgan: the two networks of a seed share its
    initialisation), bold where the interval excludes 1. Empty without ``probes.csv``, without
    references or without a pair of three or more common seeds."""
    from .paired import spread_ratio

    lines = ["| backbone | pretraining | vs | seeds | " + " | ".join(_NAMES[m] for m in SPREAD_METRICS) + " |",
             "|---|---|---|---:|" + "---:|" * len(SPREAD_METRICS)]
    for backbone, objective, ref, ours, theirs in _probe_pairs(output, models, references):
        texts, seeds = [], 0
        for metric in SPREAD_METRICS:
            mine, other = ours.get(metric, {}), theirs.get(metric, {})
            common = sorted(set(mine) & set(other))
            seeds = max(seeds, len(common))
            ratio, low, high = (spread_ratio([mine[k] for k in common], [other[k] for k in common])
                                if len(common) >= 3 else (float("nan"), None, None))
            if low is None:
                texts.append("–")
                continue
            text = f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
            texts.append(f"**{text}**" if high < 1 or low > 1 else text)
        if seeds >= 3:
            lines.append(f"| {backbone} | {objective} | {ref} | {seeds} | " + " | ".join(texts) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""
