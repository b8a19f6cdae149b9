"""The ``zoo`` command: a LightningCLI over any objective (model) and any DataModule (data).

    zoo fit -c configs/data/qm9.yaml -c configs/objectives/regression.yaml \\
        --model.backbone configs/backbones/schnet.yaml --trainer.max_epochs 10
    zoo test -c <same configs> --ckpt_path runs/.../checkpoints/last.ckpt

Composition: the model is any ``atomzoo.objectives.Objective`` subclass, the data any
``atomzoo.datamodules.AtomsDataModule`` subclass (both chosen by ``class_path``), the backbone any
``atomzoo.backbones.Backbone`` subclass given to the objective. ``--data.targets`` is linked to the
objective's ``targets`` so the dataset says *what* to learn and the objective says *how*; likewise
the DataModule's ``forces`` attribute (MD17, rMD17, ASE files with forces) to the objective's ``forces``.

Defaults: TensorBoard logs and checkpoints under ``runs/<name>/version_<k>/``, best (by
``val/loss``) and last checkpoints, a ``last-step.ckpt`` every 500 optimizer steps (so a killed run
resumes mid-epoch with ``--ckpt_path last``), learning-rate monitor, a progress bar for the whole run
with its time left (:class:`atomzoo.progress.RunProgressBar`), ``seed_everything: 0``.
``--test_after_fit true`` evaluates the best checkpoint on the test split right after ``fit``;
``--checkpoint_monitor val/<metric>`` chooses that best checkpoint by another validation metric than
``val/loss`` (e.g. the force MAE when the loss weighs energy and forces).
Notices on stderr, one line each: the first run of a dataset builds its store (``zoo: building the
QM9 store at ...``), ``--model.init_from`` says how many backbone tensors it loaded (``init_from: loaded
...``, logged by the objective), where the checkpoints and the test metrics were written; warnings
of Lightning a user cannot act on are filtered (see below), so a plain run prints none.

Predictions to a file (:mod:`atomzoo.prediction_writer`): the model comes from the checkpoint's
hyperparameters, the data from any DataModule config; ASE files are predicted whole, labels optional::

    zoo predict --ckpt_path runs/.../last.ckpt -c configs/data/ase_file.yaml --data.init_args.path my.xyz --out preds.csv
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

import yaml
from atomzoo import model_files
from atomzoo.datamodules.base import AtomsDataModule
from atomzoo.objectives.base import Objective, drop_linked_options
from jsonargparse import Namespace, get_loader, set_loader
from lightning.pytorch.cli import LightningCLI

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "zoo"},
    },
    "callbacks": [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "monitor": "val/loss",
                "mode": "min",
                "save_top_k": 1,
                "filename": "best-{epoch}-{step}",
                "auto_insert_metric_name": False,
            },
        },
        {  # "last.ckpt" after each validation, improved or not (Lightning's save_last follows the top-k saves
            # of a monitored checkpoint, i.e. improvements only); no monitor: one file, replaced each time
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "filename": "last",
                "save_top_k": 1,
                "enable_version_counter": False,
            },
        },
        {  # crash insurance: "last-step.ckpt" every 500 optimizer steps; `--ckpt_path last` picks the newest
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "filename": "last-step",
                "every_n_train_steps": 500,
                "save_top_k": 1,
                "enable_version_counter": False,
            },
        },
        {
            "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
            "init_args": {"logging_interval": "step"},
        },
        # one training bar for the whole run with its time left, validations and the test after fit included
        {"class_path": "atomzoo.progress.RunProgressBar"},
    ],
}


#: jsonargparse parser mode of the ``zoo`` command: YAML with old class paths translated (:func:`_load_config`)
CONFIG_MODE = "atomzoo-yaml"
_load_yaml = get_loader("yaml")


def _load_config(text: str, path: str = ""):
    """jsonargparse's YAML loader, then old class paths (``class_path: backbones.SchNet``, atomzoo 0.1)
    translated by :func:`atomzoo.model_files.translate_class_paths`, with a ``FutureWarning`` naming
    each new path. Every value the ``zoo`` command parses passes through here: ``-c`` files (``path``),
    ``--model.backbone file.yaml``, inline YAML/JSON."""
    try:
        loaded = _load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        hint = " (YAML indents with spaces, not tabs)" if "\t" in text else ""
        raise yaml.YAMLError(f"config {path or '(inline value)'}{where}: {err.problem or err.context}{hint}") from err
    value, renamed = model_files.translate_class_paths(loaded)
    model_files.warn_renamed(renamed, f"config {path}" if path else "a config", "update its class_path entries")
    return value


set_loader(CONFIG_MODE, _load_config, exceptions=(yaml.YAMLError,))

# Messages of Lightning a user of `zoo` cannot act on (issue 32, item 6): a deprecation inside
# Lightning's own pytree helper (lightning 2.6 with torch >= 2.10; nothing in atomzoo's code or the
# user's options causes it) and the advertisement for Lightning's cloud logger printed on every run.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud logging")
)


#: measured duration of a store's first build, by DataModule (docs/results.md: QM9, all 130,831 molecules)
FIRST_BUILD = {"QM9DataModule": "7 s"}


def _class_or_none(class_path: str):
    try:
        return model_files.resolve_class(class_path)
    except model_files.ModelFileError:
        return None


def _data_has_forces(datamodule: AtomsDataModule) -> bool:
    """The DataModule's declared ``forces`` (an attribute of every AtomsDataModule, False by default)."""
    return bool(datamodule.forces)


def _data_has_stress(datamodule: AtomsDataModule) -> bool:
    """The DataModule's declared ``stress`` (ASE files read with ``stress_key``; False by default)."""
    return bool(getattr(datamodule, "stress", False))


#: objective options whose value shapes the state a checkpoint restores
CHECKED_MODEL_OPTIONS = ("atomref", "standardize", "pooling", "loss", "head_hidden")


def _model_settings(config, subcommand: str | None) -> dict:
    """Flat ``{option: value}`` of the model's backbone and of :data:`CHECKED_MODEL_OPTIONS`."""
    model = config.get(subcommand, {}).get("model") if subcommand else None
    if model is None:
        return {}
    model = model.as_dict() if hasattr(model, "as_dict") else dict(model)
    init = model.get("init_args") or {}
    out = {f"init_args.{k}": init[k] for k in CHECKED_MODEL_OPTIONS if k in init}
    backbone = init.get("backbone")
    if isinstance(backbone, dict):
        out["init_args.backbone.class_path"] = backbone.get("class_path")
        for key, value in (backbone.get("init_args") or {}).items():
            out[f"init_args.backbone.init_args.{key}"] = value
    return out


def _configure_prediction_output(subcommand: str | None, config) -> None:
    """``--out``: add :class:`atomzoo.prediction_writer.PredictionWriter`, don't keep predictions in memory,
    and let an ASE file without energies/forces be predicted (``allow_missing_labels``)."""
    out = config.get("out") if config is not None else None
    if not out:
        return
    if subcommand != "predict":
        raise ValueError(f"--out {out} is an option of `zoo predict`, not of `zoo {subcommand}`")
    config["trainer"]["callbacks"] = list(config["trainer"].get("callbacks") or []) + [
        Namespace(class_path="atomzoo.prediction_writer.PredictionWriter", init_args=Namespace(out=str(out)))
    ]
    config["return_predictions"] = False
    data = config.get("data")
    if data is not None and str(data.get("class_path", "")).endswith("ASEFileDataModule"):
        if data["init_args"].get("allow_missing_labels") is None:
            data["init_args"]["allow_missing_labels"] = True


def _apply_backbone_defaults(config) -> None:
    """Give the backbone the options its objective needs and its config leaves unset
    (:meth:`atomzoo.objectives.base.Objective.backbone_defaults`; SCD: ``condition_dim``), with a notice."""
    import inspect

    model = config.get("model") if config is not None else None
    if model is None or not model.get("class_path"):
        return
    objective = _class_or_none(model["class_path"])
    backbone = (model.get("init_args") or {}).get("backbone")
    if not (isinstance(objective, type) and issubclass(objective, Objective)) or backbone is None:
        return
    if not hasattr(backbone, "get") or not backbone.get("class_path"):
        return
    backbone_cls = _class_or_none(backbone["class_path"])
    if backbone_cls is None:
        return
    as_dict = lambda ns: dict(ns.as_dict() if hasattr(ns, "as_dict") else (ns or {}))
    model_args, backbone_args = as_dict(model.get("init_args")), as_dict(backbone.get("init_args"))
    model_args.pop("backbone", None)
    accepted = inspect.signature(backbone_cls.__init__).parameters
    for key, value in objective.backbone_defaults(model_args, backbone_args).items():
        if key not in accepted:
            continue  # the objective's own check explains what the backbone lacks
        if backbone.get("init_args") is None:
            backbone["init_args"] = Namespace()
        backbone["init_args"][key] = value
        print(f"zoo: --model.backbone.init_args.{key} is unset in the backbone config; {objective.__name__} "
              f"uses {value} (see its backbone_defaults; set the option to override)", file=sys.stderr)


def _model_from_checkpoint(argv: list[str]) -> list[str]:
    """``zoo predict/test/validate --ckpt_path X`` without a model config: add ``--model <X's hyperparameters>``.

    LightningCLI re-reads the checkpoint's hyperparameters after parsing, but the parser first
    insists on a model; this gives it the same one. Untouched when ``--model`` or a ``-c`` file with
    a ``model`` section is given.
    """
    if not argv or argv[0] not in ("predict", "test", "validate"):
        return argv
    ckpt, configs = None, []
    for k, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if "=" in arg else (argv[k + 1] if k + 1 < len(argv) else None)
        if arg.split("=", 1)[0] == "--ckpt_path":
            ckpt = value
        elif arg.split("=", 1)[0] in ("-c", "--config") and value:
            configs.append(value)
        elif arg.split("=", 1)[0].startswith("--model"):
            return argv
    if not ckpt or not Path(ckpt).is_file():
        return argv
    for config in configs:
        path = Path(config)
        if path.is_file() and "model" in (yaml.safe_load(path.read_text()) or {}):
            return argv
    hparams = dict(model_files.read_checkpoint(ckpt, f"zoo {argv[0]} --ckpt_path").hyperparameters)
    hparams.pop("_instantiator", None)
    drop_linked_options(hparams, Objective)
    class_path = hparams.pop("_class_path", None)
    if not class_path:
        return argv
    return [*argv, "--model", json.dumps({"class_path": class_path, "init_args": hparams}, default=str)]


def _backbone_from_init_from(argv: list[str]) -> list[str]:
    """``zoo fit --model.init_from X`` without a backbone config: add ``--model.backbone <X's backbone>``.

    ``X`` (a model file or a pretrained model's name, :mod:`atomzoo.pretrained`) records its backbone's
    class and constructor arguments; fine-tuning needs exactly those, so they are taken from the file
    (printed in one line). Untouched when ``--model.backbone`` or a ``-c`` file with a backbone is given,
    or when the file does not record every argument."""
    if not argv or argv[0] != "fit":
        return argv
    init_from, configs, first_option = None, [], len(argv)
    for k, arg in enumerate(argv):
        key = arg.split("=", 1)[0]
        value = arg.split("=", 1)[1] if "=" in arg else (argv[k + 1] if k + 1 < len(argv) else None)
        if key in ("--model.init_from", "--model.init_args.init_from"):
            init_from = value
        elif key in ("-c", "--config") and value:
            configs.append(value)
        elif key in ("--model.backbone", "--model.init_args.backbone"):
            return argv
        elif key.startswith(("--model.backbone.", "--model.init_args.backbone.")):
            first_option = min(first_option, k)  # e.g. --model.backbone.init_args.cutoff: after the backbone
    if not init_from or init_from in ("null", "None"):
        return argv
    for config in configs:
        path = Path(config)
        model = (yaml.safe_load(path.read_text()) or {}).get("model") if path.is_file() else None
        if isinstance(model, dict) and ((model.get("init_args") or {}).get("backbone") or model.get("backbone")):
            return argv
    try:
        spec = model_files.read(init_from).backbone
    except (OSError, ValueError):  # reported, in one line, when the objective loads it
        return argv
    if not spec.get("class_path") or not spec.get("init_args_complete"):
        return argv
    backbone = {"class_path": spec["class_path"], "init_args": spec.get("init_args") or {}}
    print(f"zoo: --model.backbone taken from --model.init_from {init_from}: {json.dumps(backbone)}", file=sys.stderr)
    return [*argv[:first_option], "--model.backbone", json.dumps(backbone), *argv[first_option:]]


def _accepted_options(cls: type) -> list[str]:
    """The constructor arguments the parser accepts for ``cls``: its ``__init__``'s, and, through
    ``**kwargs``, those of its base classes (as jsonargparse resolves them)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def parse_error_line(message: str) -> str:
    """jsonargparse's parse error ``message`` (a union error of many lines) as one line: an option a
    class does not accept is named with its closest accepted ones (``difflib``), e.g.
    ``--data.batchsize: QM9DataModule has no option 'batchsize'; did you mean --data.batch_size?``;
    other messages are joined into one line."""
    key = re.search(r'Parser key "([\w.]+)"', message)
    rejected = re.search(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message)
    if key and rejected:
        class_path, option = rejected.groups()
        cls = _class_or_none(class_path)
        prefix = key.group(1)
        accepted = _accepted_options(cls) if cls is not None else []
        if cls is not None and option not in accepted:  # an accepted name failed for another reason: say that
            close = difflib.get_close_matches(option, accepted, n=3, cutoff=0.6)
            fix = (f"did you mean {' or '.join(f'--{prefix}.{c}' for c in close)}?" if close
                   else f"see `zoo fit --{prefix}.help {cls.__name__}` for its options")  # fmt: skip
            return f"--{prefix}.{option}: {cls.__name__} has no option {option!r}; {fix}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines).removeprefix("Problems parsing config: ")


@contextlib.contextmanager
def _one_line_parse_errors(parser, prefix: str = ""):
    """Inside: a parse error of ``parser`` (or one of its subcommands' parsers) prints one line
    ``zoo: error: <prefix><parse_error_line>`` and exits with status 2, instead of jsonargparse's
    usage, tip and many-line message."""
    from jsonargparse import ArgumentError

    parsers = [parser, *getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}).values()]
    before = [p.exit_on_error for p in parsers]
    for p in parsers:
        p.exit_on_error = False
    try:
        yield
    except ArgumentError as err:
        print(f"zoo: error: {prefix}{parse_error_line(str(err))}", file=sys.stderr)
        raise SystemExit(2) from err
    finally:
        for p, value in zip(parsers, before):
            p.exit_on_error = value


def _retarget_best_checkpoint(trainer: Namespace, monitor: str) -> None:
    """Point the best-checkpoint callback (the ``ModelCheckpoint`` monitoring ``val/loss``, from
    :data:`TRAINER_DEFAULTS`) at ``monitor`` (mode min); ``val/loss`` leaves it as it is.

    Raises:
        ValueError: ``monitor`` is not ``val/...``, or checkpoints are off (nothing to choose a best of).
    """
    if monitor == "val/loss":
        return
    if not monitor.startswith("val/"):
        raise ValueError(f"--checkpoint_monitor {monitor}: the best checkpoint is chosen by a validation metric; "
                         "give a val/... name (e.g. val/forces_mae_meV_per_A)")
    best = [c for c in trainer.get("callbacks") or [] if str(c.get("class_path", "")).endswith("ModelCheckpoint")
            and (c.get("init_args") or {}).get("monitor") == "val/loss"]
    if trainer.get("enable_checkpointing") is False or not best:
        raise ValueError(f"--checkpoint_monitor {monitor}: there is no best checkpoint to choose (checkpointing is "
                         "off or the default ModelCheckpoint was replaced); drop --checkpoint_monitor")
    for callback in best:
        callback["init_args"]["monitor"] = monitor
        callback["init_args"]["mode"] = "min"


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's links and defaults."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
        parser.link_arguments("data.targets", "model.init_args.targets", apply_on="instantiate")
        # datasets with per-atom forces (MD17, rMD17, ASE files with forces) set ``forces = True``:
        # the regression objective then also trains on forces = -dE/dpos
        parser.link_arguments("data", "model.init_args.forces", compute_fn=_data_has_forces, apply_on="instantiate")
        # ASE files read with --data.stress_key set ``stress = True``: the objective trains on the stress too
        parser.link_arguments("data", "model.init_args.stress", compute_fn=_data_has_stress, apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, run the test split with the best checkpoint and print per-target MAE.",
        )
        parser.add_argument(
            "--checkpoint_monitor",
            type=str,
            default="val/loss",
            help="zoo fit: the validation metric the best checkpoint is chosen by (minimum), the one --test_after_fit "
                 "tests, e.g. val/forces_mae_meV_per_A or the metric early stopping watches (default: val/loss).",
        )
        parser.add_argument(
            "--out",
            type=Optional[str],
            default=None,
            help="zoo predict only: write the predictions to this .csv or .npz file (atomzoo.prediction_writer).",
        )

    def init_parser(self, **kwargs):
        """Lightning's parser, reading config values with :func:`_load_config` (old class paths translated)."""
        kwargs.setdefault("parser_mode", CONFIG_MODE)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        """Parse ``args`` (default ``sys.argv[1:]``) completed by :func:`_model_from_checkpoint`.

        Lightning's own method warns "LightningCLI's args parameter is intended to run from within
        Python" whenever ``args`` is given and the process has command-line arguments, i.e. on every
        ``zoo`` command (the console script passes its cleaned ``sys.argv``) and every in-process run
        under pytest; its list branch is this one line, so it is done here without the warning."""
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        with _one_line_parse_errors(parser):
            argv = _model_from_checkpoint(list(sys.argv[1:] if args is None else args))
            self.config = parser.parse_args(_backbone_from_init_from(argv))

    def _parse_ckpt_path(self) -> None:
        """Lightning rebuilds the model from the checkpoint's hyperparameters, silently overriding the
        configuration; refuse when a setting that changes the numbers (the backbone's class and
        arguments, e.g. its cutoff, or the objective's atomref/standardize/pooling/loss) differs."""
        subcommand = self.config.get("subcommand")
        self._check_checkpoint_objective(subcommand)
        before = _model_settings(self.config, subcommand)
        self._apply_checkpoint_hyperparameters()
        after = _model_settings(self.config, subcommand)
        diffs = [f"--model.{k} is {before[k]!r} but the checkpoint's is {after[k]!r}"
                 for k in sorted(set(before) & set(after)) if before[k] != after[k]]  # fmt: skip
        if diffs:
            ckpt = self.config[subcommand].get("ckpt_path")
            raise ValueError(
                f"--ckpt_path {ckpt}: the configuration differs from the model the checkpoint holds: " + "; ".join(diffs)
                + ". The checkpoint's model is rebuilt as it was trained: remove these options (or give the checkpoint's "
                "values, see its run's config.yaml); to train with the new settings start without --ckpt_path "
                "(--model.init_args.init_from keeps the backbone weights)"
            )

    def _check_checkpoint_objective(self, subcommand: str | None) -> None:
        """Refuse a checkpoint of another objective than the configuration's model (e.g. a pretraining
        checkpoint given to ``zoo test`` with the regression config): name both and what to use instead."""
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        model = self.config[subcommand].get("model") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file() or not isinstance(model, Namespace):
            return
        stored = model_files.read_checkpoint(ckpt_path, f"zoo {subcommand} --ckpt_path").objective
        configured = model.get("class_path")
        if not stored or not configured:
            return
        stored_cls, configured_cls = _class_or_none(stored), _class_or_none(configured)
        if stored_cls is None or configured_cls is None or stored_cls is configured_cls:
            return
        raise model_files.ModelFileError(
            f"--ckpt_path {ckpt_path} is a {stored_cls.__name__} checkpoint, but the configuration's model is "
            f"{configured_cls.__name__}: to {subcommand} the checkpoint's own model leave out the model config "
            f"(-c configs/objectives/..., --model); to use its backbone for {configured_cls.__name__}, fine-tune with "
            f"`zoo fit ... --model.init_args.init_from {ckpt_path}`"
        )

    def _apply_checkpoint_hyperparameters(self) -> None:
        """Lightning's ``_parse_ckpt_path``, reading the checkpoint with :mod:`atomzoo.model_files`: the
        model's configuration becomes the checkpoint's hyperparameters, old class paths translated."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # none, or Lightning's "last" / "best" / "hpc"
        hparams = dict(model_files.read_checkpoint(ckpt_path, f"zoo {subcommand} --ckpt_path").hyperparameters)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        drop_linked_options(hparams, Objective)  # a pretraining run's checkpoint records the data's targets
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        with _one_line_parse_errors(self.parser, f"--ckpt_path {ckpt_path}: its hyperparameters do not parse: "):
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        # `--trainer.enable_checkpointing false` / `--trainer.logger false` switch off checkpoints / logs:
        # drop the default callbacks that need them instead of letting Lightning refuse the combination.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        _configure_prediction_output(self.subcommand, config)
        if self.subcommand == "predict":
            # a prediction is not a run: no runs/<name>/version_<k>/ (logger, config.yaml), no checkpoint
            # callbacks (whose restored state warned "dirpath has changed"); --out says where results go
            config["trainer"]["logger"] = False
            config["trainer"]["enable_checkpointing"] = False
            self.save_config_callback = None
        _apply_backbone_defaults(config)
        trainer = config.get("trainer") if config is not None else None
        if self.subcommand == "fit" and trainer is not None:  # the run's compute, across resumed attempts
            callbacks = list(trainer.get("callbacks") or [])
            if not any(str(c.get("class_path", "")).endswith("TrainingClock") for c in callbacks):
                trainer["callbacks"] = callbacks + [Namespace(class_path="atomzoo.training_clock.TrainingClock")]
        if self.subcommand == "fit" and trainer is not None:
            _retarget_best_checkpoint(trainer, config.get("checkpoint_monitor") or "val/loss")
        if trainer is None or not trainer.get("callbacks"):
            return
        unwanted = []
        if trainer.get("enable_progress_bar") is False:
            unwanted.append("RunProgressBar")
        elif self.subcommand == "fit":  # the time left counts the test after fit
            for callback in trainer["callbacks"]:
                if str(callback.get("class_path", "")).endswith("RunProgressBar"):
                    if callback.get("init_args") is None:
                        callback["init_args"] = Namespace()
                    callback["init_args"]["test_after_fit"] = bool(config.get("test_after_fit"))
        if trainer.get("enable_checkpointing") is False:
            unwanted.append("ModelCheckpoint")
        if trainer.get("logger") is False or self.subcommand == "predict":
            unwanted.append("LearningRateMonitor")
        if unwanted:
            trainer["callbacks"] = [
                c for c in trainer["callbacks"] if not str(c.get("class_path", "")).endswith(tuple(unwanted))
            ]

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "predict":
            return super()._run_subcommand(subcommand)
        with warnings.catch_warnings():
            # the checkpoint's ModelCheckpoint/LearningRateMonitor states have no callback to restore
            # into: a prediction has none (see before_instantiate_classes); nothing to add
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
            return super()._run_subcommand(subcommand)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self._announce_store_build()  # (--model.init_from: the objective's constructor logs what it loaded)

    def _announce_store_build(self) -> None:
        """One line when the DataModule's processed store does not exist yet: the first run builds it."""
        try:
            path = Path(self.datamodule.store_path()) if self.datamodule is not None else None
        except Exception:  # noqa: BLE001 -- a path it cannot name yet: setup() raises the real error, with its message
            return
        if path is not None and not path.exists():
            name = type(self.datamodule).__name__
            took = FIRST_BUILD.get(name)
            print(f"zoo: building the {name.removesuffix('DataModule')} store at {path} (first run only"
                  f"{f', ~{took}' if took else ''}; later runs open it)", file=sys.stderr)

    def before_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            # refuse before training, not after hours of it, when there is nothing to test on
            self.datamodule.setup("fit")
            if self.datamodule.splits["test"].size == 0:
                dm = self.datamodule
                raise ValueError(
                    f"--test_after_fit true but the test split is empty (num_train={dm.num_train}, num_val={dm.num_val}, "
                    f"num_test={dm.num_test} of {len(dm.store)} molecules); lower --data.num_train / --data.num_val "
                    "or set --data.num_test, or drop --test_after_fit"
                )

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        folder = Path(checkpoint.dirpath) if checkpoint is not None and checkpoint.dirpath else None
        if folder is not None and folder.is_dir() and self.trainer.is_global_zero:
            best = ""
            if checkpoint.best_model_path and checkpoint.monitor:  # a checkpoint without a monitor has no "best"
                best = f" (best by {checkpoint.monitor}: {Path(checkpoint.best_model_path).name})"
            names = ", ".join(sorted(p.name for p in folder.glob("*.ckpt")))
            print(f"zoo: checkpoints in {folder.resolve()}: {names}{best}", file=sys.stderr, flush=True)
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            # the best checkpoint's path itself: ckpt_path="best" warns about the second (last-step) ModelCheckpoint
            ckpt = (self.trainer.checkpoint_callback.best_model_path or None) if self.trainer.checkpoint_callback else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            self._write_metrics("test_metrics.json")

    def after_test(self) -> None:
        self._write_metrics("test_metrics.json")

    def after_predict(self) -> None:
        from atomzoo.prediction_writer import PredictionWriter

        for callback in self.trainer.callbacks:
            if isinstance(callback, PredictionWriter) and callback.summary():
                print(callback.summary(), flush=True)

    def after_validate(self) -> None:
        self._write_metrics("validate_metrics.json")

    def _write_metrics(self, name: str) -> None:
        """Write the run's final metrics as JSON next to its config (read by the benchmark runner)."""
        log_dir = self.trainer.log_dir if self.trainer.loggers else None  # a collective: ask on every rank
        if not log_dir or not self.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        path = Path(log_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
        os.replace(tmp, path)
        print(f"zoo: {name.split('_')[0]} metrics written to {path.resolve()}", file=sys.stderr, flush=True)


def run(args: list[str] | None = None) -> ZooCLI:
    """Run the CLI on ``args`` (default: ``sys.argv``) and return it (trainer, model, datamodule)."""
    return ZooCLI(
        model_class=Objective,
        datamodule_class=AtomsDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


#: errors a user's input causes (options, files, data): shown as one short line, not a traceback
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError)


def _raised_in_jsonargparse(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "jsonargparse" in tb.tb_frame.f_code.co_filename


def root_cause(err: BaseException) -> BaseException:
    """The exception to show: the outermost user error of ``err``'s chain that jsonargparse did not
    raise itself (it wraps a constructor's error in "Does not validate against any of the Union
    subtypes" with a namespace dump)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None or (isinstance(err, USER_ERRORS) and not _raised_in_jsonargparse(err)):
            return err
        err = nxt
    return err


def _models_dir_option(args: list[str]) -> list[str]:
    """``--models_dir D`` (any subcommand): look model names up in ``D`` first (``$ATOMZOO_MODELS`` is
    prepended with it for this process, :mod:`atomzoo.pretrained`); returns ``args`` without the option."""
    from atomzoo.pretrained import ENV

    out, k = [], 0
    while k < len(args):
        key, _, value = args[k].partition("=")
        if key == "--models_dir":
            if not value:
                k += 1
                value = args[k] if k < len(args) else ""
            if not value or not Path(value).is_dir():
                raise SystemExit(f"zoo: error: --models_dir {value!r} is not a directory")
            os.environ[ENV] = os.pathsep.join(filter(None, [value, os.environ.get(ENV, "")]))
        else:
            out.append(args[k])
        k += 1
    return out


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``zoo`` console script (``zoo models``: :func:`atomzoo.pretrained.main`).

    An error the user's options or files cause (``ValueError``, ``TypeError``, ``KeyError``,
    ``FileNotFoundError``, ... anywhere in the chain, e.g. raised in a constructor and wrapped by
    jsonargparse) ends the output as one line ``zoo: error: <cause>`` with exit status 1; the full
    traceback is printed with ``--debug`` or ``ATOMZOO_DEBUG=1``. Other exceptions (bugs) propagate.
    A run stopped by SIGTERM before it finished exits with status 143 (128 + 15), not 0.
    """
    import sys

    args = list(sys.argv[1:] if args is None else args)
    if args[:1] == ["models"]:  # `zoo models`: the pretrained models found (atomzoo.pretrained), no Trainer
        from atomzoo.pretrained import main as list_models

        return list_models(args[1:])
    args = _models_dir_option(args)
    debug = os.environ.get("ATOMZOO_DEBUG", "") not in ("", "0") or "--debug" in args
    args = [a for a in args if a != "--debug"]
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        run(args)
    except SIGTERMException:
        # Lightning stops its loops on SIGTERM (SLURM, `timeout`, `kill`) with a SystemExit of status 0;
        # a run that did not finish must not look finished to a scheduler or the benchmark runner
        import signal

        print(f"zoo: error: stopped by SIGTERM, not finished (exit status {128 + signal.SIGTERM}); "
              "`zoo fit ... --ckpt_path last` resumes from the last checkpoint", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        cause = root_cause(err)
        if debug or not isinstance(cause, USER_ERRORS):
            raise
        message = str(cause.args[0]) if isinstance(cause, KeyError) and cause.args else str(cause)
        print("(traceback: run again with --debug or ATOMZOO_DEBUG=1)", file=sys.stderr)
        print(f"zoo: error: {message}", file=sys.stderr)
        sys.exit(1)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Lightning leaves the process group alive; gloo's threads torn down at interpreter exit
        # can abort the process ("terminate called without an active exception") after a run
        # that succeeded. Destroy it explicitly.
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
