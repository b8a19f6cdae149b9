"""Matrix files -- the plan of an experiment -- and their expansion into cells.

A matrix is a YAML file; every key but ``backbones`` and one of ``pretrain`` / ``finetune`` is optional::

    name: qm9_objectives
    output: runs/bench/qm9_objectives        # results.csv, results.md and plots; relative paths resolve
                                              # against the current directory (run from the repository root)
    cells: runs/bench/qm9_objectives/cells    # the cells' run folders (default <output>/cells)
    pythonpath: [benchmarks]                  # folders put on every cell's PYTHONPATH (code named by class path)
    common_args: [-c, configs/trainer/cpu.yaml]          # CLI arguments for every cell
    backbones:                                # name -> a backbone config (+ init_args overrides) ...
      painn: {config: configs/backbones/painn.yaml, overrides: {width: 64}}
      pyg_schnet:                             # ... or a class path (+ init_args)
        class_path: parity_adapters.PygSchNet
        init_args: {width: 64, cutoff: 5.0}
    objectives:                               # name -> pretraining objective config; none = scratch (the default)
      none: null
      denoising: configs/objectives/denoising.yaml
      scd: {config: configs/objectives/scd.yaml, args: [--model.backbone.init_args.condition_dim, "64"]}
      denoising_eqcpu:                        # pretrain_args come after pretrain.args (they win): e.g. a
        config: configs/objectives/denoising.yaml   # step budget of this objective alone (equal CPU time)
        pretrain_args: [--trainer.max_steps, "6000"]
    pretrain:                                 # one cell per backbone x objective (x corruption rate) (x seed)
      data: configs/data/qm9.yaml
      args: [--data.targets, "null", --trainer.max_steps, "3000"]
      corruption: {kind: displacement, rates: [0.0, 0.1], scale: 0.5}   # optional; or several kinds:
                                              # {kinds: [displacement, wrong_element], rates: [0.0, 0.3]}: one
                                              # cell per kind x rate > 0 (atomzoo.datamodules.artifacts.KINDS),
                                              # rate 0 (clean) once, shared by every kind
      seeds: [0, 1, 2]                        # optional: pretraining seeds (--seed_everything; ids end in /p<seed>)
      keep: true                              # optional: keep a weights-only copy of each finished pretraining
                                              # run in <output>/pretrained/<cell id>.ckpt (committed with
                                              # --commit-results): fine-tuning cells start from it once the
                                              # run folder is gone (a fresh checkout, another machine)
    finetune:                                 # one cell per backbone x objective x task x budget x mode x seed
      data: configs/data/qm9.yaml
      objective: configs/objectives/regression.yaml
      targets: [homo, u0]                     # shorthand: task <t> = {args: [--data.targets, "[<t>]"]}
      tasks:                                  # ... or tasks with settings of their own (not both)
        md_forces:
          data: configs/data/rmd17.yaml       # default: finetune.data
          args: [--data.molecule, ethanol]    # placed where a target's --data.targets goes
          metric: test/forces_mae_meV_per_A   # the test metric reported (default test/<task>_mae_<unit>)
          final_args: [--trainer.gradient_clip_val, "1.0"]   # optional: placed last (after common_args,
                                              # finetune.args and probe_args), so they win over both
          overrides: {mace: {avg_num_neighbors: 8.0}}   # backbone init_args for this task only
      label_budgets: [1000, 10000]
      seeds: [0, 1, 2]
      modes: [finetune, linear_probe]          # linear_probe: frozen backbone + linear head
      args: [--trainer.max_epochs, "30"]
      probe_args: [--model.lr, "0.01"]          # optional: added to linear_probe cells only (after args)
      early_stopping: {patience: 20}          # optional: Lightning's EarlyStopping on the validation MAE
                                              # (monitor default val/<task>_mae_meV, or the task's metric with
                                              # test/ -> val/; min_delta 0) under the step/epoch cap of args
      pretrain_seeds: same                    # with pretrain.seeds: fine-tuning seed k starts from pretraining
                                              # seed k ("same", the default), or a list (every one of them)
      grids:                                  # optional: the cells are the union of these grids, each the
        - {backbones: [painn], seeds: [0, 1, 2, 3, 4]}   # product of the axes above with the ones it names
        - {tasks: [md_forces], label_budgets: [300]}     # (backbones, objectives, tasks, label_budgets,
                                                          # modes, seeds); default: one grid, all of them
    compare:                                  # paired comparisons in the report: name -> {axis: [ours, reference]}
      painn: {backbone: [painn, schnetpack_painn]}       # axis: backbone or objective; paired by seed
    references: [none, denoising]             # objectives every other is paired with in the report's
                                              # ``paired`` section (this is the default)
    curves: [val/, train/loss, train/emb]     # logged series kept in results.csv (metric-name prefixes)
    report: [summary, noise, pretraining, cost, plots]   # sections of results.md (this is the default)
    report_name: results                      # the report is <output>/<report_name>.md; another name also
                                              # prefixes its plots (<report_name>_mae_...png): matrices that
                                              # share an output (and results.csv) keep separate reports
    report_with: [main.yaml]                  # optional: the report shows this matrix's cells and those of
                                              # these matrix files (paths relative to this file; same output),
                                              # nothing else; [] = its own cells only. Without the key: every
                                              # row of results.csv (the stages of a study share that file)
    order: matrix                             # or "seeds": every cell of seed 0 first (scratch, then each
                                              # objective's pretraining and its fine-tuning), then seed 1, ...

Each pretraining objective is run once per backbone (and corruption, and pretraining seed); each
fine-tuning cell starts from that pretraining run's final checkpoint (``--model.init_from``,
:func:`atomzoo.runner.execute.checkpoint_of`; its ``pretrain.keep`` copy when the run folder is gone;
a finished pretraining cell with neither is run again first), or from scratch for ``none``. A cell's id names its
place in the matrix, not its arguments: after changing a matrix's settings, give it another
``output`` so that its finished cells are not taken for the new ones. ``report`` sections: see
:mod:`atomzoo.runner.report`.

A cell's command puts an objective's ``args`` before ``common_args`` and ``pretrain.args``, and a task's
``args`` before ``common_args`` and ``finetune.args``; the last value of an option wins. An option set
both in such ``args`` and in a key placed after it would silently lose, so :func:`load_matrix` refuses
the file (ValueError naming both keys): put the option in ``objectives.<name>.pretrain_args`` or
``finetune.tasks.<name>.final_args``, which come last.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCRATCH = "none"
MODES = ("finetune", "linear_probe")
#: report sections, in the order results.md shows them
SECTIONS = ("compare", "summary", "paired", "compute", "finetuning", "noise", "probes", "pretraining", "curves", "cost",
            "plots")
DEFAULT_SECTIONS = ("compare", "summary", "noise", "pretraining", "cost", "plots")
#: the report's file name without ``.md``, unless ``report_name`` says
DEFAULT_REPORT_NAME = "results"
ORDERS = ("matrix", "seeds")
DEFAULT_CURVES = ("val/", "train/loss", "train/emb")
#: the objectives every other is compared with in the report's ``paired`` section, unless ``references`` says
DEFAULT_REFERENCES = (SCRATCH, "denoising")
TOP_KEYS = {"name", "output", "cells", "pythonpath", "common_args", "backbones", "objectives", "pretrain", "finetune",
            "compare", "curves", "report", "order", "references", "report_name", "report_with"}
FINETUNE_KEYS = {"data", "objective", "targets", "tasks", "label_budgets", "seeds", "modes", "args", "probe_args",
                 "grids", "early_stopping", "pretrain_seeds"}
PRETRAIN_KEYS = {"data", "args", "corruption", "seeds", "keep"}
CORRUPTION_KEYS = {"kind", "kinds", "rates", "scale"}
#: the corruption kind of a matrix that names none (ids of its corrupted cells carry no kind)
DEFAULT_KIND = "displacement"
EARLY_STOPPING_KEYS = {"patience", "monitor", "min_delta"}
GRID_AXES = ("backbones", "objectives", "tasks", "label_budgets", "modes", "seeds")
COMPARE_AXES = ("backbone", "objective")


@dataclass
class Cell:
    """One run of the matrix.

    Attributes:
        id: unique, path-like name (also the cell's folder under the matrix's ``cells`` folder).
        phase: ``"pretrain"`` or ``"finetune"``.
        args: arguments of ``zoo fit`` (without the run-folder arguments the runner adds).
        target: the fine-tuning task (a QM9 target for ``targets``).
        depends_on: id of the pretraining cell whose checkpoint this cell starts from.
        seed: the cell's ``--seed_everything`` (a pretraining cell's: its pretraining seed).
        pretrain_seed: seed of the pretraining run a fine-tuning cell starts from (``None``: no
            ``pretrain.seeds`` in the matrix, or scratch).
        corruption: the artifact kind of the pretraining data (``""``: clean, or a matrix with one
            ``kind``; ids then carry the rate only, as before several kinds existed).
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
    pretrain_seed: int | None = None
    corruption: str = ""

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
            "corruption": self.corruption,
            "pretrain_seed": "" if self.pretrain_seed is None else self.pretrain_seed,
        }


@dataclass
class Task:
    """A fine-tuning task: its data config (``None``: the section's), CLI arguments, reported test
    metric (``None``: ``test/<name>_mae_<unit>``), per-backbone ``init_args`` overrides and the CLI
    arguments placed last in its cells (``final_args``: they win over ``common_args`` and
    ``finetune.args``, e.g. a fine-tuning recipe's batch size or gradient clipping)."""

    name: str
    args: list[str]
    data: str | None = None
    metric: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    final_args: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """Ours against a reference along one axis (``backbone`` or ``objective``), paired by seed."""

    name: str
    axis: str
    ours: str
    ref: str


@dataclass
class Matrix:
    """A parsed matrix file (see the module docstring for the format)."""

    name: str
    output: Path
    backbones: dict[str, dict[str, Any]]
    objectives: dict[str, dict[str, Any] | None]
    pretrain: dict[str, Any]
    finetune: dict[str, Any] | None
    common_args: list[str] = field(default_factory=list)
    source: Path | None = None
    cells: Path | None = None
    pythonpath: list[Path] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    compare: list[Comparison] = field(default_factory=list)
    curves: tuple[str, ...] = DEFAULT_CURVES
    report: tuple[str, ...] = DEFAULT_SECTIONS
    order: str = "matrix"
    references: tuple[str, ...] = DEFAULT_REFERENCES
    report_name: str = DEFAULT_REPORT_NAME
    report_with: tuple[Path, ...] | None = None

    @property
    def cells_dir(self) -> Path:
        return self.cells if self.cells is not None else self.output / "cells"

    @property
    def results_csv(self) -> Path:
        return self.output / "results.csv"

    def metric_of(self, task: str) -> str | None:
        """The test metric the report shows for ``task`` (``None``: ``test/<task>_mae_<unit>``)."""
        return self.tasks[task].metric if task in self.tasks else None


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise ValueError(f"matrix file: '{where}' needs the key '{key}'")
    return mapping[key]


def _unknown(mapping: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(mapping) - allowed)
    if bad:
        raise ValueError(f"matrix file: unknown key(s) {bad} in {where}; allowed: {sorted(allowed)}")


def _backbone_spec(name: str, spec: Any) -> dict[str, Any]:
    spec = {"config": spec} if isinstance(spec, str) else dict(spec or {})
    if ("config" in spec) == ("class_path" in spec):
        raise ValueError(f"matrix file: backbones.{name} needs either 'config' (a backbone YAML) or 'class_path'")
    _unknown(spec, {"config", "overrides"} if "config" in spec else {"class_path", "init_args"}, f"backbones.{name}")
    spec.setdefault("overrides", {})
    spec.setdefault("init_args", {})
    return spec


def _objective_spec(name: str, spec: Any) -> dict[str, Any] | None:
    if spec is None or name == SCRATCH:
        return None
    spec = {"config": spec} if isinstance(spec, str) else dict(spec)
    _require(spec, "config", f"objectives.{name}")
    _unknown(spec, {"config", "args", "pretrain_args"}, f"objectives.{name}")
    spec["args"] = [str(a) for a in spec.get("args", [])]
    spec["pretrain_args"] = [str(a) for a in spec.get("pretrain_args", [])]
    return spec


def _tasks(finetune: dict[str, Any]) -> dict[str, Task]:
    if ("targets" in finetune) == ("tasks" in finetune):
        raise ValueError("matrix file: 'finetune' needs the key 'targets' (a list) or 'tasks' (a mapping), not both")
    if "targets" in finetune:
        return {str(t): Task(str(t), ["--data.targets", f"[{t}]"]) for t in finetune["targets"]}
    tasks = {}
    for name, spec in finetune["tasks"].items():
        spec = dict(spec or {})
        _unknown(spec, {"data", "args", "metric", "overrides", "final_args"}, f"finetune.tasks.{name}")
        tasks[str(name)] = Task(str(name), [str(a) for a in spec.get("args", [])], spec.get("data"), spec.get("metric"),
                                {str(b): dict(o) for b, o in (spec.get("overrides") or {}).items()},
                                [str(a) for a in spec.get("final_args", [])])
    return tasks


def _options(args: list[str]) -> set[str]:
    """The ``--key`` options a list of CLI words sets (``--key value`` or ``--key=value``); list appends
    (``--key+=...``) and config files (``-c``) are not counted."""
    return {a.split("=", 1)[0] for a in args if a.startswith("--") and "+=" not in a}


def _check_not_overridden(earlier: list[str], later: list[tuple[str, list[str]]], where: str, fix: str) -> None:
    """Raise when an option of ``earlier`` (a matrix key's CLI words) is set again by a key placed after it
    in every cell's command (``later``: (key, words) pairs), which would silently win."""
    for key, words in later:
        clash = sorted(_options(earlier) & _options(words))
        if clash:
            raise ValueError(f"matrix file: {where} sets {', '.join(clash)}, which {key} sets again later in every "
                             f"cell's command (the later value wins); {fix}")


def load_matrix(path: str | Path) -> Matrix:
    """Read and check a matrix file; errors name the missing or wrong key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"matrix file {path} does not exist") from err
    if not isinstance(raw, dict):
        raise ValueError(f"matrix file {path} must hold a mapping")
    _unknown(raw, TOP_KEYS, "the top level")
    backbones = {name: _backbone_spec(name, spec) for name, spec in _require(raw, "backbones", "top level").items()}
    objectives = {name: _objective_spec(name, spec)
                  for name, spec in (raw.get("objectives") or {SCRATCH: None}).items()}
    if "finetune" not in raw and "pretrain" not in raw:
        raise ValueError("matrix file: the top level needs 'finetune', 'pretrain' or both")
    finetune, tasks = None, {}
    if "finetune" in raw:
        finetune = dict(raw["finetune"])
        _unknown(finetune, FINETUNE_KEYS, "finetune")
        for key in ("data", "objective", "label_budgets"):
            _require(finetune, key, "finetune")
        tasks = _tasks(finetune)
        finetune.setdefault("seeds", [0])
        finetune.setdefault("modes", ["finetune"])
        finetune.setdefault("args", [])
        finetune.setdefault("probe_args", [])
        finetune.setdefault("grids", [{}])
        bad = [m for m in finetune["modes"] if m not in MODES]
        if bad:
            raise ValueError(f"matrix file: finetune.modes {bad} not in {list(MODES)}")
        names = {"backbones": set(backbones), "objectives": set(objectives), "tasks": set(tasks)}
        for k, grid in enumerate(finetune["grids"]):
            _unknown(grid, set(GRID_AXES), f"finetune.grids[{k}]")
            for axis, known in names.items():
                missing = sorted(set(map(str, grid.get(axis, []))) - known)
                if missing:
                    raise ValueError(f"matrix file: finetune.grids[{k}].{axis} names {missing}, "
                                     f"not among {sorted(known)}")
        stopping = finetune.get("early_stopping")
        if stopping is not None:
            if not isinstance(stopping, dict) or "patience" not in stopping:
                raise ValueError("matrix file: finetune.early_stopping must be a mapping with 'patience' "
                                 "(validation checks without improvement), e.g. {patience: 20}")
            _unknown(stopping, EARLY_STOPPING_KEYS, "finetune.early_stopping")
        for task in tasks.values():
            missing = sorted(set(task.overrides) - set(backbones))
            if missing:
                raise ValueError(f"matrix file: finetune.tasks.{task.name}.overrides names backbones {missing}, "
                                 f"not among {sorted(backbones)}")
    pretrain = dict(raw.get("pretrain") or {})
    _unknown(pretrain, PRETRAIN_KEYS, "pretrain")
    _check_corruption(pretrain.get("corruption"))
    if any(spec is not None for spec in objectives.values()):
        _require(pretrain, "data", "pretrain")
    pretrain.setdefault("args", [])
    if not isinstance(pretrain.setdefault("keep", False), bool):
        raise ValueError(f"matrix file: pretrain.keep must be true or false, got {pretrain['keep']!r}")
    if finetune is not None:
        pairing = finetune.setdefault("pretrain_seeds", "same")
        if pretrain.get("seeds") is not None and pairing == "same":
            missing = sorted({int(s) for g in finetune["grids"] for s in g.get("seeds", finetune["seeds"])}
                             - {int(s) for s in pretrain["seeds"]})
            if missing:
                raise ValueError(f"matrix file: finetune.pretrain_seeds is 'same' but fine-tuning seeds {missing} "
                                 f"are not among pretrain.seeds {pretrain['seeds']}; add them or give "
                                 "finetune.pretrain_seeds as a list")
        elif pairing != "same" and not isinstance(pairing, list):
            raise ValueError(f"matrix file: finetune.pretrain_seeds must be 'same' or a list of pretrain.seeds, "
                             f"got {pairing!r}")
        elif isinstance(pairing, list) and not set(map(int, pairing)) <= set(map(int, pretrain.get("seeds") or [])):
            raise ValueError(f"matrix file: finetune.pretrain_seeds {pairing} must be among pretrain.seeds "
                             f"{pretrain.get('seeds')}")
    order = str(raw.get("order", "matrix"))
    if order not in ORDERS:
        raise ValueError(f"matrix file: order must be one of {list(ORDERS)}, got {order!r}")
    compare = []
    for name, spec in (raw.get("compare") or {}).items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in COMPARE_AXES:
            raise ValueError(f"matrix file: compare.{name} must be {{backbone: [ours, reference]}} or "
                             f"{{objective: [ours, reference]}}")
        axis, pair = next(iter(spec.items()))
        known = backbones if axis == "backbone" else objectives
        if len(pair) != 2 or any(p not in known for p in pair):
            raise ValueError(f"matrix file: compare.{name}.{axis} must name two of {sorted(known)}, got {pair}")
        compare.append(Comparison(str(name), axis, str(pair[0]), str(pair[1])))
    references = raw.get("references", list(DEFAULT_REFERENCES))  # the default's may be absent (then unused)
    if "references" in raw and (not isinstance(references, list) or not references
                                or any(r not in objectives for r in references)):
        raise ValueError(f"matrix file: references must be a list of the matrix's objectives {sorted(objectives)}, "
                         f"got {references!r}")
    common_args = [str(a) for a in raw.get("common_args", [])]
    for name, task in tasks.items():
        _check_not_overridden(task.args, [("common_args", common_args), ("finetune.args", finetune["args"])],
                              f"finetune.tasks.{name}.args",
                              f"move it to finetune.tasks.{name}.final_args (placed last) or drop the other")
    for name, spec in objectives.items():
        if spec is not None and pretrain is not None:
            _check_not_overridden(spec["args"], [("common_args", common_args), ("pretrain.args", pretrain["args"])],
                                  f"objectives.{name}.args",
                                  f"move it to objectives.{name}.pretrain_args (placed last) or drop the other")
    report = tuple(raw.get("report", DEFAULT_SECTIONS))
    bad = [s for s in report if s not in SECTIONS]
    if bad:
        raise ValueError(f"matrix file: report sections {bad} not in {list(SECTIONS)}")
    report_name = raw.get("report_name", DEFAULT_REPORT_NAME)
    if not isinstance(report_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", report_name) \
            or report_name.endswith(".md"):
        raise ValueError(f"matrix file: report_name must be a file name without '.md' (letters, digits, _ . -), "
                         f"got {report_name!r}")
    report_with = raw.get("report_with")
    if report_with is not None:
        if not isinstance(report_with, list) or not all(isinstance(p, str) for p in report_with):
            raise ValueError(f"matrix file {path}: report_with must be a list of matrix files (paths relative to "
                             f"{path.parent}), got {report_with!r}")
        report_with = tuple(path.parent / p for p in report_with)
        missing = [str(p) for p in report_with if not p.is_file()]
        if missing:
            raise ValueError(f"matrix file {path}: report_with names {missing}, which do not exist (paths are "
                             f"relative to the matrix file's folder {path.parent})")
    return Matrix(
        name=str(raw.get("name", path.stem)),
        output=Path(raw.get("output", f"runs/bench/{path.stem}")),
        backbones=backbones,
        objectives=objectives,
        pretrain=pretrain,
        finetune=finetune,
        common_args=common_args,
        source=path,
        cells=Path(raw["cells"]) if raw.get("cells") else None,
        pythonpath=[Path(p) for p in raw.get("pythonpath", [])],
        tasks=tasks,
        compare=compare,
        curves=tuple(str(c) for c in raw.get("curves", DEFAULT_CURVES)),
        report=tuple(s for s in SECTIONS if s in report),
        order=order,
        references=tuple(str(r) for r in references),
        report_name=report_name,
        report_with=report_with,
    )


def report_scope(matrix: Matrix) -> set[str] | None:
    """The cell ids whose rows ``matrix``'s report shows: its own cells and those of its ``report_with``
    matrices; ``None`` (every row of ``results.csv``) when the matrix has no ``report_with`` key.

    Raises ``ValueError`` when a ``report_with`` matrix writes to another output (its rows are not in this
    ``results.csv``).
    """
    if matrix.report_with is None:
        return None
    scope = {cell.id for cell in expand(matrix)}
    for path in matrix.report_with:
        other = load_matrix(path)
        if other.output != matrix.output:
            raise ValueError(f"matrix file {matrix.source}: report_with names {path}, whose output {other.output} "
                             f"is not this matrix's {matrix.output}; its rows are not in this results.csv")
        scope |= {cell.id for cell in expand(other)}
    return scope


def _format(value: Any) -> str:
    """A YAML value as one command-line word (``[32, 32]``, ``5.0``, ``true``)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _backbone_args(spec: dict[str, Any], extra: dict[str, Any] | None = None) -> list[str]:
    if "config" in spec:
        args, init_args = ["--model.backbone", str(spec["config"])], spec["overrides"]
    else:
        args, init_args = ["--model.backbone.class_path", str(spec["class_path"])], spec["init_args"]
    for key, value in {**init_args, **(extra or {})}.items():
        args += [f"--model.backbone.init_args.{key}", _format(value)]
    return args


def _check_corruption(corruption: Any) -> None:
    """One-line errors for a malformed ``pretrain.corruption``."""
    if corruption is None:
        return
    from atomzoo.datamodules.artifacts import KINDS

    if not isinstance(corruption, dict):
        raise ValueError("matrix file: pretrain.corruption must be a mapping, e.g. {kinds: [displacement], rates: [0.0, 0.3]}")
    _unknown(corruption, CORRUPTION_KEYS, "pretrain.corruption")
    if "kind" in corruption and "kinds" in corruption:
        raise ValueError("matrix file: pretrain.corruption takes 'kind' or 'kinds', not both")
    kinds = corruption.get("kinds", [corruption.get("kind", DEFAULT_KIND)])
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"matrix file: pretrain.corruption kinds {bad or kinds} not among {list(KINDS)}")


def conditions(matrix: Matrix) -> list[tuple[str, float]]:
    """The pretraining data conditions of ``matrix``: ``(kind, rate)`` pairs, clean (``("", 0.0)``) once
    if any rate is 0, then every kind x nonzero rate. ``kind`` is ``""`` for a matrix with a single
    ``kind`` (its cells' ids carry the rate only)."""
    corruption = matrix.pretrain.get("corruption") or {}
    rates = [float(r) for r in corruption.get("rates", [0.0])]
    kinds = [str(k) for k in corruption["kinds"]] if "kinds" in corruption else [""]
    found = [("", 0.0)] if 0.0 in rates else []
    return found + [(kind, rate) for kind in kinds for rate in rates if rate > 0]


def _rate_tag(rate: float, kind: str = "") -> str:
    return f"c{rate:g}" + (f"-{kind}" if kind and rate > 0 else "")


def _pretrain_cells(matrix: Matrix) -> list[Cell]:
    corruption = matrix.pretrain.get("corruption") or {}
    seeds = matrix.pretrain.get("seeds")
    cells = []
    for backbone, spec in matrix.backbones.items():
        for objective, objective_spec in matrix.objectives.items():
            if objective_spec is None:
                continue
            for (kind, rate), seed in itertools.product(conditions(matrix),
                                                        [None] if seeds is None else [int(s) for s in seeds]):
                args = ["-c", str(matrix.pretrain["data"]), "-c", str(objective_spec["config"]), *_backbone_args(spec),
                        *objective_spec["args"]]
                if rate > 0:
                    args += ["--data.corruption", kind or str(corruption.get("kind", DEFAULT_KIND)),
                             "--data.corruption_rate", str(rate),
                             "--data.corruption_scale", str(corruption.get("scale", 0.5))]
                args += [*matrix.common_args, *map(str, matrix.pretrain["args"]), *objective_spec["pretrain_args"]]
                if seed is not None:
                    args += ["--seed_everything", str(seed)]
                cells.append(Cell(_pretrain_id(backbone, objective, rate, seed, kind), "pretrain", backbone, objective,
                                  args, seed=seed or 0, corruption_rate=rate, pretrain_seed=seed, corruption=kind))
    return cells


def _pretrain_id(backbone: str, objective: str, rate: float, seed: int | None, kind: str = "") -> str:
    return f"pretrain/{backbone}/{objective}/{_rate_tag(rate, kind)}" + ("" if seed is None else f"/p{seed}")


def _early_stopping_args(stopping: dict[str, Any] | None, task: Task) -> list[str]:
    """``zoo fit`` arguments adding Lightning's EarlyStopping on the task's validation MAE (none if
    ``stopping`` is None). The monitored metric: ``stopping["monitor"]`` (``{task}`` is replaced by the
    task's name), else the task's ``metric`` with ``test/`` -> ``val/``, else ``val/<task>_mae_meV``."""
    if stopping is None:
        return []
    if "monitor" in stopping:
        monitor = str(stopping["monitor"]).replace("{task}", task.name)
    elif task.metric:
        monitor = "val/" + task.metric.removeprefix("test/")
    else:
        monitor = f"val/{task.name}_mae_meV"
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor", monitor,
            "--trainer.callbacks.mode", "min", "--trainer.callbacks.patience", str(int(stopping["patience"])),
            "--trainer.callbacks.min_delta", _format(float(stopping.get("min_delta", 0.0)))]


def _finetune_cell(matrix: Matrix, backbone: str, objective: str, rate: float, task: Task, budget: int, mode: str,
                   seed: int, pretrain_seed: int | None = None, kind: str = "") -> Cell:
    ft = matrix.finetune
    args = ["-c", str(task.data or ft["data"]), "-c", str(ft["objective"]),
            *_backbone_args(matrix.backbones[backbone], task.overrides.get(backbone)), *task.args,
            "--data.train_size", str(budget), "--seed_everything", str(seed), "--test_after_fit", "true"]
    if mode == "linear_probe":  # frozen backbone, one Linear per target
        args += ["--model.freeze_backbone", "true", "--model.head_hidden", "0", "--model.aux_denoising_weight", "0"]
    args += [*matrix.common_args, *map(str, ft["args"])]
    if mode == "linear_probe":
        args += [*map(str, ft["probe_args"])]
    args += task.final_args
    args += _early_stopping_args(ft.get("early_stopping"), task)
    scratch = matrix.objectives[objective] is None
    pretrain_seed = None if scratch else pretrain_seed
    depends = None if scratch else _pretrain_id(backbone, objective, rate, pretrain_seed, kind)
    tag = "" if pretrain_seed is None else f"p{pretrain_seed}/"
    cell_id = f"finetune/{backbone}/{objective}/{_rate_tag(rate, kind)}/{tag}{task.name}/n{budget}/{mode}/s{seed}"
    return Cell(cell_id, "finetune", backbone, objective, args, task.name, int(budget), mode, int(seed), rate, depends,
                pretrain_seed, kind)


def expand(matrix: Matrix) -> list[Cell]:
    """All cells of the matrix, each once: pretraining cells first, then fine-tuning cells in matrix order
    (``order: seeds``: replicate by replicate instead, see :func:`_by_seeds`)."""
    cells = _pretrain_cells(matrix)
    if matrix.finetune is not None:
        ft = matrix.finetune
        found: dict[str, Cell] = {}
        for grid in ft["grids"]:
            backbones = [str(v) for v in grid.get("backbones", matrix.backbones)]
            objectives = [str(v) for v in grid.get("objectives", matrix.objectives)]
            tasks = [str(v) for v in grid.get("tasks", matrix.tasks)]
            budgets, modes, seeds = (grid.get(k, ft[k]) for k in ("label_budgets", "modes", "seeds"))
            for backbone, objective in itertools.product(backbones, objectives):
                scratch = matrix.objectives[objective] is None
                for (kind, rate), task, budget, mode, seed in itertools.product(
                        [("", 0.0)] if scratch else conditions(matrix), tasks, budgets, modes, seeds):
                    for pretrain_seed in _pretrain_seeds_of(matrix, int(seed), scratch):
                        cell = _finetune_cell(matrix, backbone, objective, rate, matrix.tasks[task], budget, mode,
                                              seed, pretrain_seed, kind)
                        found.setdefault(cell.id, cell)
        cells += found.values()
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError("matrix file: names of backbones/objectives/targets must be unique")
    return _by_seeds(matrix, cells) if matrix.order == "seeds" else cells


def _pretrain_seeds_of(matrix: Matrix, seed: int, scratch: bool) -> list[int | None]:
    """The pretraining seeds a fine-tuning cell of ``seed`` starts from (``[None]``: no pretrain.seeds, or scratch)."""
    seeds = matrix.pretrain.get("seeds")
    if seeds is None or scratch:
        return [None]
    pairing = matrix.finetune["pretrain_seeds"] if matrix.finetune else "same"
    return [seed] if pairing == "same" else [int(s) for s in pairing]


def _by_seeds(matrix: Matrix, cells: list[Cell]) -> list[Cell]:
    """``order: seeds``: replicate by replicate (a fine-tuning cell's replicate is its pretraining seed,
    else its seed); within one, objective by objective in matrix order (scratch where the matrix lists
    it), each objective's pretraining before its fine-tuning; otherwise matrix order (a stable sort)."""
    objectives = list(matrix.objectives)

    def key(cell: Cell) -> tuple[int, int, int]:
        replicate = cell.pretrain_seed if cell.pretrain_seed is not None else cell.seed
        return replicate, objectives.index(cell.objective), cell.phase != "pretrain"

    return sorted(cells, key=key)


def select(cells: list[Cell], pattern: str | None) -> list[Cell]:
    """Cells whose id matches the regular expression ``pattern`` (all if ``None``).

    Raises:
        ValueError: ``pattern`` is not a regular expression (the message names ``--only``)."""
    if not pattern:
        return cells
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"--only {pattern!r} is not a regular expression ({err}); it is searched in cell ids "
                         f"such as {cells[0].id if cells else 'pretrain/painn/denoising/c0'} (--list shows them all)"
                         ) from err
    return [c for c in cells if regex.search(c.id)]
