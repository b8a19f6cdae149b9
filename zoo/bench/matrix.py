"""Benchmark matrix files and their expansion into cells.

A matrix is a YAML file::

    name: qm9_objectives
    output: runs/bench/qm9_objectives        # relative paths resolve against the current directory
    common_args: [-c, configs/trainer/cpu.yaml]          # CLI arguments for every cell
    backbones:                                # name -> backbone config (+ init_args overrides)
      painn: {config: configs/backbones/painn.yaml, overrides: {width: 64}}
    objectives:                               # name -> pretraining objective config; none = scratch
      none: null
      denoising: configs/objectives/denoising.yaml
    pretrain:
      data: configs/data/qm9.yaml
      args: [--data.targets, "null", --trainer.max_steps, "3000"]
      corruption: {kind: displacement, rates: [0.0, 0.1], scale: 0.5}   # optional
    finetune:
      data: configs/data/qm9.yaml
      objective: configs/objectives/regression.yaml
      targets: [homo, u0]
      label_budgets: [1000, 10000]
      seeds: [0, 1, 2]
      modes: [finetune, linear_probe]          # linear_probe: frozen backbone + linear head
      args: [--trainer.max_epochs, "30"]
      probe_args: [--model.lr, "0.01"]          # optional: added to linear_probe cells only (after args)

Each pretraining objective is run once per backbone (and corruption rate); each fine-tuning cell
starts from that pretraining run's last checkpoint (``--model.init_from``), or from scratch for
``none``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCRATCH = "none"
MODES = ("finetune", "linear_probe")


@dataclass
class Cell:
    """One run of the matrix.

    Attributes:
        id: unique, path-like name (also the cell's folder under ``<output>/cells``).
        phase: ``"pretrain"`` or ``"finetune"``.
        args: arguments of ``zoo fit`` (without the run-folder arguments the runner adds).
        depends_on: id of the pretraining cell whose checkpoint this cell starts from.
    """

    id: str
    phase: str
    backbone: str
    objective: str
    args: list[str]
    target: str = ""
    label_budget: int = 0
    mode: str = ""
    seed: int = 0
    corruption_rate: float = 0.0
    depends_on: str | None = None

    @property
    def labels(self) -> dict[str, Any]:
        return {
            "cell": self.id,
            "phase": self.phase,
            "backbone": self.backbone,
            "objective": self.objective,
            "target": self.target,
            "label_budget": self.label_budget,
            "mode": self.mode,
            "seed": self.seed,
            "corruption_rate": self.corruption_rate,
        }


@dataclass
class Matrix:
    """A parsed matrix file (see the module docstring for the format)."""

    name: str
    output: Path
    backbones: dict[str, dict[str, Any]]
    objectives: dict[str, str | None]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    common_args: list[str] = field(default_factory=list)
    source: Path | None = None

    @property
    def cells_dir(self) -> Path:
        return self.output / "cells"

    @property
    def results_csv(self) -> Path:
        return self.output / "results.csv"


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise ValueError(f"matrix file: '{where}' needs the key '{key}'")
    return mapping[key]


def load_matrix(path: str | Path) -> Matrix:
    """Read and check a matrix file; errors name the missing or wrong key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"matrix file {path} does not exist") from err
    if not isinstance(raw, dict):
        raise ValueError(f"matrix file {path} must hold a mapping")
    backbones = {}
    for name, spec in _require(raw, "backbones", "top level").items():
        spec = {"config": spec} if isinstance(spec, str) else dict(spec)
        _require(spec, "config", f"backbones.{name}")
        spec.setdefault("overrides", {})
        backbones[name] = spec
    objectives = dict(_require(raw, "objectives", "top level"))
    finetune = dict(_require(raw, "finetune", "top level"))
    for key in ("data", "objective", "targets", "label_budgets"):
        _require(finetune, key, "finetune")
    finetune.setdefault("seeds", [0])
    finetune.setdefault("modes", ["finetune"])
    finetune.setdefault("args", [])
    finetune.setdefault("probe_args", [])
    bad = [m for m in finetune["modes"] if m not in MODES]
    if bad:
        raise ValueError(f"matrix file: finetune.modes {bad} not in {list(MODES)}")
    pretrain = dict(raw.get("pretrain") or {})
    if any(v is not None for k, v in objectives.items() if k != SCRATCH):
        _require(pretrain, "data", "pretrain")
    pretrain.setdefault("args", [])
    return Matrix(
        name=str(raw.get("name", path.stem)),
        output=Path(raw.get("output", f"runs/bench/{path.stem}")),
        backbones=backbones,
        objectives=objectives,
        pretrain=pretrain,
        finetune=finetune,
        common_args=[str(a) for a in raw.get("common_args", [])],
        source=path,
    )


def _backbone_args(spec: dict[str, Any]) -> list[str]:
    args = ["--model.backbone", str(spec["config"])]
    for key, value in spec["overrides"].items():
        args += [f"--model.backbone.init_args.{key}", yaml.safe_dump(value, default_flow_style=True).strip().rstrip(".").strip()]
    return args


def _rate_tag(rate: float) -> str:
    return f"c{rate:g}"


def expand(matrix: Matrix) -> list[Cell]:
    """All cells of the matrix, pretraining cells first."""
    corruption = matrix.pretrain.get("corruption") or {}
    rates = [float(r) for r in corruption.get("rates", [0.0])]
    cells: list[Cell] = []
    pretrain_ids: dict[tuple[str, str, float], str] = {}
    for backbone, spec in matrix.backbones.items():
        for objective, config in matrix.objectives.items():
            if objective == SCRATCH or config is None:
                continue
            for rate in rates:
                cell_id = f"pretrain/{backbone}/{objective}/{_rate_tag(rate)}"
                args = ["-c", str(matrix.pretrain["data"]), "-c", str(config), *_backbone_args(spec)]
                if rate > 0:
                    args += ["--data.corruption", str(corruption.get("kind", "displacement")),
                             "--data.corruption_rate", str(rate),
                             "--data.corruption_scale", str(corruption.get("scale", 0.5))]
                args += [*matrix.common_args, *map(str, matrix.pretrain["args"])]
                cells.append(Cell(cell_id, "pretrain", backbone, objective, args, corruption_rate=rate))
                pretrain_ids[(backbone, objective, rate)] = cell_id
    ft = matrix.finetune
    for backbone, spec in matrix.backbones.items():
        for objective, config in matrix.objectives.items():
            scratch = objective == SCRATCH or config is None
            for rate in [0.0] if scratch else rates:
                for target in ft["targets"]:
                    for budget in ft["label_budgets"]:
                        for mode in ft["modes"]:
                            for seed in ft["seeds"]:
                                cell_id = (f"finetune/{backbone}/{objective}/{_rate_tag(rate)}/{target}/"
                                           f"n{budget}/{mode}/s{seed}")
                                args = ["-c", str(ft["data"]), "-c", str(ft["objective"]), *_backbone_args(spec),
                                        "--data.targets", f"[{target}]", "--data.train_size", str(budget),
                                        "--seed_everything", str(seed), "--test_after_fit", "true"]
                                if mode == "linear_probe":  # frozen backbone, one Linear per target
                                    args += ["--model.freeze_backbone", "true", "--model.head_hidden", "0",
                                             "--model.aux_denoising_weight", "0"]
                                args += [*matrix.common_args, *map(str, ft["args"])]
                                if mode == "linear_probe":
                                    args += [*map(str, ft["probe_args"])]
                                depends = None if scratch else pretrain_ids[(backbone, objective, rate)]
                                cells.append(Cell(cell_id, "finetune", backbone, objective, args, target, int(budget),
                                                  mode, int(seed), rate, depends))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("matrix file: names of backbones/objectives/targets must be unique")
    return cells


def select(cells: list[Cell], pattern: str | None) -> list[Cell]:
    """Cells whose id matches the regular expression ``pattern`` (all if ``None``)."""
    if not pattern:
        return cells
    regex = re.compile(pattern)
    return [c for c in cells if regex.search(c.id)]
