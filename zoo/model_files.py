"""Model files: the one reader of checkpoints and exports, and the one class-path resolver.

A trained model is stored in one of three kinds of file (:attr:`ModelFile.kind`):

``"checkpoint"``
    A Lightning checkpoint (``.ckpt``: ``zoo fit``, ``Trainer.save_checkpoint``). It is unpickled
    (``torch.load(weights_only=False)``): read only checkpoints you trust.
``"full-model"``
    ``python -m atomzoo.export CKPT OUT``: ``OUT.safetensors`` holds the objective's whole
    ``state_dict``, its header (key :data:`META_KEY`) the JSON that rebuilds the module, and
    ``OUT.card.json`` is its model card (:mod:`atomzoo.cards`). Never unpickled.
``"backbone"``
    ``python -m atomzoo.export CKPT OUT --backbone-only``: the ``backbone.*`` tensors without the
    prefix (the keys of ``backbone.state_dict()``), the backbone's class path and constructor
    arguments in the header, and a card. Backbone exports written before the card existed (no
    card; the metadata in the header key ``"atomzoo"`` and/or a ``OUT.json`` sidecar) still load.

:func:`read` reads any of them ONCE into a :class:`ModelFile` -- weights, hyperparameters,
objective and backbone class paths, the provenance record, units, card -- and caches it per
(resolved path, modification time, size): the four readers of one ``zoo fit --model.init_from X``
(the backbone defaults, the backbone weights, the auxiliary noise head, the provenance check)
unpickle ``X`` once. This module is the only place in atomzoo that calls ``torch.load`` or opens a
safetensors model file.

Class paths. :func:`resolve_class` is the one resolver of ``"package.module.Class"`` strings (the
CLI, :func:`atomzoo.load`, the objectives and the benchmarks use it). Files and configs written
before the ``atomzoo`` namespace (version 0.1: ``backbones.SchNet``, ``objectives.Regression``,
``zoo.graph.Graph``, ...) name classes by their old module paths; :data:`RENAMED` translates them
(:func:`translate_class_path`), with a ``FutureWarning`` that names the new path, in checkpoints'
hyperparameters, exports' metadata and -- through the ``zoo`` CLI's config loader -- config files.
Nothing is aliased on import: an old top-level name that resolves to another installed package (a
project of one's own called ``zoo``, say) is left to it. Constructor arguments a backbone renamed
(``Backbone.renamed_arguments``) are translated in model files too (:func:`rename_arguments`), so a
file written before the rename loads; a config file with an old argument name is refused instead,
with a message naming the new one.

Layering: this module sits on the storage floor beside :mod:`atomzoo.cards`. It imports nothing from
:mod:`atomzoo.objectives` or :mod:`atomzoo.datamodules` (objectives import it) and only
:mod:`atomzoo.backbones.base` (the backbone contract: optional tensors, renamed arguments), inside
the functions that need it; the classes a file names are imported when a model is built.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cards import BACKBONE_FORMAT, FULL_FORMAT, ModelFileError, card_path, read_card, verify_weights

#: safetensors header key that holds the JSON description of an export
META_KEY = "atomzoo"
#: checkpoint key of the provenance record (:mod:`atomzoo.objectives.provenance`)
PROVENANCE_KEY = "atomzoo_provenance"
#: prefix of the backbone's entries in an objective's ``state_dict``
BACKBONE_PREFIX = "backbone."
#: prefix of a backbone export's tensors of the SOURCE model's own output head (a converted mace-torch
#: model's readouts: ``atomzoo.backbones.mace.MACEReadout``); never part of ``backbone_weights``
SOURCE_HEAD_PREFIX = "source_head."

CHECKPOINT = "checkpoint"
FULL_MODEL = "full-model"
BACKBONE = "backbone"
#: the card's ``model_format`` -> :attr:`ModelFile.kind`
_KIND_OF_FORMAT = {FULL_FORMAT: FULL_MODEL, BACKBONE_FORMAT: BACKBONE}

#: module paths of atomzoo 0.1 -> their atomzoo module (submodules follow their package; longest prefix wins)
RENAMED = {
    "backbones": "atomzoo.backbones",
    "objectives": "atomzoo.objectives",
    "datamodules": "atomzoo.datamodules",
    "zoo.graph": "atomzoo.nn.graph",
    "zoo.radial": "atomzoo.nn.radial",
    "zoo.conditioning": "atomzoo.nn.conditioning",
    "zoo.cli": "atomzoo.cli",
    "zoo.bench": "atomzoo.runner",  # the experiment runner (atomzoo.bench before 0.3)
    "zoo": "atomzoo",
}


# ----- class paths -------------------------------------------------------------------------------
def _owned_by_another_package(top: str) -> bool:
    """True when the top-level module ``top`` imports from somewhere other than atomzoo's own folders
    (an unrelated project of that name): its class paths are then left alone."""
    spec = importlib.machinery.PathFinder.find_spec(top)
    if spec is None:
        return False
    target = importlib.util.find_spec(RENAMED[top])
    ours = {Path(p).resolve() for p in (target.submodule_search_locations or [])} if target else set()
    found = {Path(p).resolve() for p in (spec.submodule_search_locations or [])}
    return not (found and found <= ours)


def translate_class_path(class_path: str) -> str:
    """``"backbones.SchNet"`` -> ``"atomzoo.backbones.SchNet"`` (:data:`RENAMED`); any other path unchanged.

    An old name whose top-level package is installed by another project (not atomzoo's folders)
    is left unchanged, so that project's classes keep their names. No warning (see
    :func:`translate_class_paths` and :func:`resolve_class`, which warn).
    """
    module, _, name = str(class_path).rpartition(".")
    for prefix in sorted(RENAMED, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            if _owned_by_another_package(prefix.partition(".")[0]):
                return class_path
            return f"{RENAMED[prefix]}{module[len(prefix):]}.{name}"
    return class_path


def translate_class_paths(config: Any) -> tuple[Any, dict[str, str]]:
    """A copy of a (nested) config with every old ``class_path`` / ``_class_path`` value translated.

    Returns ``(config, renamed)``: the copy (dicts and lists copied, other values shared; the input is
    not modified) and ``{old: new}`` for each translated path (empty: nothing was old).
    """
    renamed: dict[str, str] = {}

    def rewrite(entries: dict) -> dict:
        for key in ("class_path", "_class_path"):
            if isinstance(entries.get(key), str):
                new = translate_class_path(entries[key])
                if new != entries[key]:
                    renamed[entries[key]] = new
                entries[key] = new
        return entries

    return _rewrite_dicts(config, rewrite), renamed


def rename_arguments(config: Any) -> tuple[Any, dict[str, str]]:
    """A copy of a (nested) config of a MODEL FILE with renamed constructor arguments given their new names.

    Every ``{"class_path": C, "init_args": {...}}`` whose class declares ``renamed_arguments``
    (:attr:`atomzoo.backbones.base.Backbone.renamed_arguments`, e.g. SchNet's ``max_z`` ->
    ``max_atomic_number``) gets them renamed (:func:`atomzoo.backbones.base.rename_init_args`;
    values unchanged). Returns ``(config, renamed)`` with ``renamed`` ``{"SchNet.max_z":
    "SchNet.max_atomic_number"}``. Config files are not translated: there an old argument name is
    refused with a message naming the new one.
    """
    from atomzoo.backbones.base import rename_init_args

    renamed: dict[str, str] = {}

    def rewrite(entries: dict) -> dict:
        if isinstance(entries.get("class_path"), str) and isinstance(entries.get("init_args"), dict):
            try:
                cls = resolve_class(entries["class_path"])
            except ModelFileError:
                return entries  # reported when the model is built
            for old, new in (getattr(cls, "renamed_arguments", None) or {}).items():
                if old in entries["init_args"]:
                    renamed[f"{cls.__name__}.{old}"] = f"{cls.__name__}.{new}"
            entries["init_args"] = rename_init_args(cls, entries["init_args"])
        return entries

    return _rewrite_dicts(config, rewrite), renamed


def _rewrite_dicts(value: Any, rewrite) -> Any:
    """A copy of nested dicts and lists (other values shared) with ``rewrite`` applied to every copied
    dict, innermost first."""
    if isinstance(value, dict):
        return rewrite({key: _rewrite_dicts(item, rewrite) for key, item in value.items()})
    if isinstance(value, list):
        return [_rewrite_dicts(item, rewrite) for item in value]
    return value


def _translate_file_config(config: Any) -> tuple[Any, dict[str, str]]:
    """Class paths (:func:`translate_class_paths`) then argument names (:func:`rename_arguments`)."""
    config, renamed = translate_class_paths(config)
    config, arguments = rename_arguments(config)
    return config, {**renamed, **arguments}


def warn_renamed(renamed: Mapping[str, str], where: str, fix: str) -> None:
    """One ``FutureWarning`` naming each old name of ``where`` and its new name (nothing if empty)."""
    if renamed:
        names = ", ".join(f"{old!r} is now {new!r}" for old, new in renamed.items())
        # the location is this line, so Python shows each message once per process (the message names the file)
        warnings.warn(f"{where} uses old names: {names}; {fix}. The old names will be removed", FutureWarning,
                      stacklevel=1)  # fmt: skip


def resolve_class(class_path: str) -> type:
    """The class (or function) a config's, checkpoint's or export's ``class_path`` names.

    Old paths (:data:`RENAMED`) are translated with a ``FutureWarning`` naming the new path.

    Raises:
        ModelFileError: ``class_path`` is not ``"module.Name"``, or the module / name cannot be imported.
    """
    if not isinstance(class_path, str) or "." not in class_path.strip("."):
        raise ModelFileError(f"{class_path!r} is not a class path: give 'package.module.Class'")
    new = translate_class_path(class_path)
    warn_renamed({class_path: new} if new != class_path else {}, "a class path", "update it")
    module, _, name = new.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ModelFileError(
            f"cannot import {class_path!r} ({type(err).__name__}: {err}); check the spelling, or install the "
            "package that defines it"
        ) from err


def class_path_of(obj) -> str:
    """``"package.module.Class"`` of a class or of an instance's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def backbone_init_args(backbone: nn.Module) -> tuple[dict, bool]:
    """Best-effort constructor arguments of a backbone instance from its same-named attributes.

    Returns ``(init_args, complete)``; ``complete`` is False when some argument was not found (or is
    not JSON: a module, an object).
    """
    args, complete = {}, True
    for name, param in inspect.signature(type(backbone).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(backbone, name, inspect.Parameter.empty)
        if isinstance(value, Tensor):
            value = value.tolist()
        if value is inspect.Parameter.empty or isinstance(value, nn.Module) or not _jsonable(value):
            complete = False
            continue
        args[name] = value
    return args, complete


# ----- the record --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    """Everything a model file holds, read once (:func:`read`). Shared between callers: treat its
    dicts as read-only (copy before changing them).

    Attributes:
        path: the file (resolved).
        kind: ``"checkpoint"``, ``"full-model"`` or ``"backbone"`` (see the module docstring).
        state_dict: every tensor of the file (checkpoints: the objective's ``state_dict``; backbone
            exports: the backbone's).
        hyperparameters: the objective's constructor arguments, class paths translated (checkpoints:
            ``hyper_parameters`` incl. ``_class_path``; full exports: the objective's ``init_args``;
            backbone exports: ``{}``).
        objective: class path of the objective (``None`` when not recorded: Python-built models,
            backbone exports of such).
        backbone: ``{"class_path", "init_args", "init_args_complete"}`` (``class_path`` ``None`` and
            ``init_args_complete`` False when not recorded).
        provenance: the checkpoint's record of the data and settings it was trained with
            (``checkpoint["atomzoo_provenance"]``), ``None`` for exports and for checkpoints written
            before the record existed.
        target_units, force_unit: units of the targets and forces (Regression files), else ``None``.
        stress_unit: unit of the stress (``"eV/A^3"``; Regression files trained on stress), else ``None``.
        card: the model card (exports written with one), else ``None``.
        header: the export's header description (:data:`META_KEY`, class paths translated), else ``None``.
        checkpoint: the unpickled checkpoint with ``hyper_parameters`` translated (checkpoints), for the
            keys no attribute covers (Lightning's loops, optimizer states); else ``None``.
        renamed: ``{old: new}`` names translated on reading: class paths of atomzoo 0.1 and renamed
            constructor arguments (``"SchNet.max_z": "SchNet.max_atomic_number"``).
    """

    path: Path
    kind: str
    state_dict: dict[str, Tensor]
    hyperparameters: dict[str, Any]
    objective: str | None
    backbone: dict[str, Any]
    provenance: dict[str, Any] | None = None
    target_units: list[str] | None = None
    force_unit: str | None = None
    stress_unit: str | None = None
    card: dict[str, Any] | None = None
    header: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def backbone_weights(self) -> dict[str, Tensor]:
        """The backbone's tensors under the keys of ``backbone.state_dict()`` (JEPA: the context
        backbone, not the EMA target)."""
        if self.kind == BACKBONE:
            return {k: v for k, v in self.state_dict.items() if not k.startswith(SOURCE_HEAD_PREFIX)}
        n = len(BACKBONE_PREFIX)
        return {k[n:]: v for k, v in self.state_dict.items() if k.startswith(BACKBONE_PREFIX)}

    @property
    def source_head_weights(self) -> dict[str, Tensor]:
        """A backbone export's tensors of its source model's own head (:data:`SOURCE_HEAD_PREFIX`, prefix
        removed; described by the header's ``source_head``); empty for every other file."""
        n = len(SOURCE_HEAD_PREFIX)
        return {k[n:]: v for k, v in self.state_dict.items() if self.kind == BACKBONE and k.startswith(SOURCE_HEAD_PREFIX)}

    @property
    def elements(self) -> list[int] | None:
        """Atomic numbers of the training split (the provenance record, or an export's card); ``None`` if unknown."""
        if self.provenance is not None and self.provenance.get("elements") is not None:
            return [int(z) for z in self.provenance["elements"]]
        if self.card is not None and self.card.get("elements") is not None:
            return [int(z) for z in self.card["elements"]]
        return None

    @property
    def training_range(self) -> dict | None:
        """The training split's shortest distance per element pair (:mod:`atomzoo.nn.training_range`'s
        record) from the provenance record or an export's card; ``None`` if the file predates it."""
        for source in (self.provenance, self.card):
            if source is not None and source.get("training_range") is not None:
                return source["training_range"]
        return None


def read(path: str | Path, verify: bool = True) -> ModelFile:
    """Read a checkpoint (``.ckpt``, or any other name: unpickled) or an export (``.safetensors``) once.

    Args:
        path: the file, or the name of a pretrained model (:func:`atomzoo.pretrained.resolve`).
        verify: check an export's SHA-256 against its card (leave on).

    Returns: the :class:`ModelFile`; a second call for the same unchanged file returns the same record
    (cached per resolved path, modification time and size; the two files read last are kept, and
    :func:`clear_cache` frees them). A file with old names (:data:`RENAMED`, renamed constructor
    arguments) gives a ``FutureWarning`` naming the new ones (Python shows it once per file and process).

    Raises:
        FileNotFoundError: ``path`` does not exist (:class:`atomzoo.pretrained.ModelNotFound` for a name).
        ModelFileError: a directory; not a PyTorch checkpoint / safetensors file; not an atomzoo model
            (no ``state_dict`` or no ``backbone.*`` weights; no card and no atomzoo metadata); an
            export's card missing, of an unknown format, or not matching the weights' hash.
    """
    from .pretrained import resolve  # a model name (``atomzoo.pretrained``) -> its file

    path = resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a zoo fit checkpoint (.ckpt) or a python -m "
                                "atomzoo.export file (.safetensors)")  # fmt: skip
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory: give a model file, e.g. {path / 'checkpoints' / 'last.ckpt'} "
                             "or an exported .safetensors")  # fmt: skip
    resolved = path.resolve()
    stat = resolved.stat()
    model = _read_cached(resolved, stat.st_mtime_ns, stat.st_size, bool(verify))
    warn_renamed(model.renamed, str(path), "loading it with the new names; save or export it again to update the file")
    return model


def read_checkpoint(path: str | Path, purpose: str) -> ModelFile:
    """:func:`read` a file that must be a Lightning checkpoint (``purpose`` names who needs it, for the message).

    Raises:
        ModelFileError: it is an export (``.safetensors``), besides :func:`read`'s errors.
    """
    model = read(path)
    if model.kind != CHECKPOINT:
        raise ModelFileError(
            f"{path} is a {model.kind} export, not a Lightning checkpoint: {purpose} needs the .ckpt that zoo fit "
            "wrote (runs/<name>/version_<k>/checkpoints/last.ckpt); exports load with atomzoo.load or "
            "--model.init_args.init_from"
        )
    return model


def clear_cache() -> None:
    """Forget every file :func:`read` has cached (a file rewritten with the same size within the
    file system's time resolution would otherwise be served from the cache)."""
    _read_cached.cache_clear()


def load_checkpoint_dict(path: str | Path):
    """Unpickle a PyTorch checkpoint of another code (e.g. TorchMD-NET's) as it is, no atomzoo record.

    Unpickling runs code from the file: load only files you trust.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFileError: not a PyTorch checkpoint, or it needs a package that is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return _unpickle(path)


#: the parts of a Lightning checkpoint that only resuming training needs (what :func:`write_weights_only` drops)
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks")


def write_weights_only(source: str | Path, destination: str | Path) -> Path:
    """Copy a Lightning checkpoint without what only resuming needs (:data:`TRAINING_STATE_KEYS`: the
    optimiser moments, scheduler, loop and callback states), written atomically.

    The copy keeps the objective's whole ``state_dict`` (backbone, heads, an EMA target), its
    hyperparameters, provenance record and units, so it is still a ``"checkpoint"`` :func:`read`
    accepts -- ``--model.init_from``, :func:`atomzoo.load`, ``python -m atomzoo.export`` -- at about
    a third of the size (Adam keeps two moments per weight); training cannot resume from it. The
    benchmark runner keeps such copies of pretraining runs (``pretrain.keep`` in a matrix file).

    Raises:
        FileNotFoundError, ModelFileError: ``source`` is not an atomzoo Lightning checkpoint (:func:`read_checkpoint`).
    """
    checkpoint = read_checkpoint(source, "a weights-only copy").checkpoint  # the checks (and messages) of every reader
    slim = {key: value for key, value in checkpoint.items() if key not in TRAINING_STATE_KEYS}
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    torch.save(slim, partial)
    partial.replace(destination)  # never a half-written file under the final name
    return destination


def _unpickle(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ImportError, AttributeError, ValueError) as err:
        reason = (str(err).splitlines() or [""])[0]
        raise ModelFileError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {reason}); give a checkpoint "
            "that zoo fit wrote (.ckpt), or an exported .safetensors"
        ) from err


@functools.lru_cache(maxsize=2)
def _read_cached(path: Path, mtime_ns: int, size: int, verify: bool) -> ModelFile:
    if path.suffix == ".safetensors":
        return _read_export(path, verify)
    return _read_checkpoint(path)


def _read_checkpoint(path: Path) -> ModelFile:
    checkpoint = _unpickle(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ModelFileError(
            f"{path}: not a Lightning checkpoint (no 'state_dict'); give the .ckpt that zoo fit wrote "
            "(runs/<name>/version_<k>/checkpoints/last.ckpt)"
        )
    state = checkpoint["state_dict"]
    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        raise ModelFileError(f"{path}: no 'backbone.*' weights: not a checkpoint of an atomzoo objective")
    hparams, renamed = _translate_file_config(dict(checkpoint.get("hyper_parameters") or {}))
    if "hyper_parameters" in checkpoint:
        checkpoint = {**checkpoint, "hyper_parameters": hparams}
    return ModelFile(
        path=path, kind=CHECKPOINT, state_dict=state, hyperparameters=hparams,
        objective=hparams.get("_class_path"), backbone=_backbone_of_hyperparameters(hparams),
        provenance=checkpoint.get(PROVENANCE_KEY), target_units=checkpoint.get("target_units"),
        force_unit=checkpoint.get("force_unit"), stress_unit=checkpoint.get("stress_unit"), checkpoint=checkpoint,
        renamed=renamed,
    )  # fmt: skip


def _backbone_of_hyperparameters(hparams: dict) -> dict:
    """Backbone spec of a checkpoint: its config (CLI runs, by class_path / init_args) or, for a
    backbone instance built in Python, its class and best-effort constructor arguments."""
    backbone = hparams.get("backbone")
    if isinstance(backbone, dict) and "class_path" in backbone:
        return {"class_path": backbone["class_path"], "init_args": dict(backbone.get("init_args") or {}),
                "init_args_complete": True}  # fmt: skip
    if isinstance(backbone, nn.Module):
        args, complete = backbone_init_args(backbone)
        return {"class_path": class_path_of(backbone), "init_args": args, "init_args_complete": complete}
    return {"class_path": None, "init_args": {}, "init_args_complete": False}


def _read_export(path: Path, verify: bool) -> ModelFile:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"{path}: not a safetensors file ({err}); export checkpoints with `python -m "
                             "atomzoo.export CKPT OUT`") from err  # fmt: skip
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: the header's {META_KEY!r} entry is not valid JSON ({err})") from err
    sidecar = path.with_suffix(".json")  # backbone exports before the card (atomzoo <= 0.2)
    if not meta and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
    card = None
    if card_path(path).is_file() or meta.get("model_format"):
        card = read_card(path)  # a current export: its card is required
        if verify:
            verify_weights(path, card)
        kind = _KIND_OF_FORMAT[card["model_format"]]
    elif meta.get("class_path"):
        kind = BACKBONE
    else:
        raise ModelFileError(
            f"{path}: not an atomzoo model file (no model card {card_path(path).name} and no {META_KEY!r} metadata); "
            "export checkpoints with `python -m atomzoo.export CKPT OUT`"
        )
    tensors = load_file(str(path))  # after the hash check: never parse weights that do not match their card
    meta, renamed = _translate_file_config(meta)
    if kind == FULL_MODEL:
        if meta.get("model_format") != FULL_FORMAT:
            raise ModelFileError(f"{path}: header format {meta.get('model_format')!r} is not {FULL_FORMAT!r}")
        return ModelFile(
            path=path, kind=kind, state_dict=tensors, hyperparameters=dict(meta["objective"].get("init_args") or {}),
            objective=meta["objective"]["class_path"], backbone={**meta["backbone"], "init_args_complete": True},
            target_units=list(meta.get("units") or []) or None, force_unit=meta.get("force_unit"),
            stress_unit=meta.get("stress_unit"), card=card, header=meta, renamed=renamed,
        )  # fmt: skip
    if isinstance(meta.get("backbone"), dict):  # this version's backbone export
        backbone = dict(meta["backbone"])
    elif meta.get("class_path"):  # older ones: the backbone's fields at the top level
        backbone = {k: meta.get(k) for k in ("class_path", "init_args", "init_args_complete")}
    else:  # a card only
        backbone = {**(card or {}).get("backbone", {}), "init_args_complete": False}
    backbone = {"class_path": backbone.get("class_path"), "init_args": dict(backbone.get("init_args") or {}),
                "init_args_complete": bool(backbone.get("init_args_complete", False))}  # fmt: skip
    objective = meta.get("objective")
    return ModelFile(
        path=path, kind=kind, state_dict=tensors, hyperparameters={},
        objective=objective if isinstance(objective, str) else None, backbone=backbone, card=card, header=meta,
        renamed=renamed,
    )  # fmt: skip


# ----- models from the record --------------------------------------------------------------------
def model_spec(model: ModelFile) -> dict:
    """The JSON description that rebuilds a regression model without unpickling (a full export's header).

    Returns ``{"objective": {"class_path", "init_args"}, "backbone": {"class_path", "init_args"},
    "targets", "units", "force_unit", "forces", "stress_unit", "cutoff_A"}`` (``stress_unit`` ``None`` for a
    model not trained on stress).

    Raises:
        ModelFileError: a backbone-only export or a checkpoint of a pretraining objective (no property
            heads: nothing to predict with), or the backbone's constructor arguments are not recorded.
    """
    if model.kind == BACKBONE:
        raise ModelFileError(
            f"{model.path} is a backbone-only export (no heads or normalisation): it cannot predict. Fine-tune it "
            "(--model.init_args.init_from) or export the full model with `python -m atomzoo.export CKPT OUT`"
        )
    if model.kind == FULL_MODEL:
        return {k: v for k, v in model.header.items() if k != "model_format"}
    hparams = dict(model.hyperparameters)
    objective_path = hparams.pop("_class_path", None) or "atomzoo.objectives.regression.Regression"
    hparams.pop("_instantiator", None)
    objective_cls = resolve_class(objective_path)
    # asked of the class, not by importing Regression: objectives import this module
    if not (isinstance(objective_cls, type) and callable(getattr(objective_cls, "predict_properties", None))):
        raise ModelFileError(
            f"{model.path}: a {objective_path} checkpoint has no property heads (it is a pretraining objective); "
            "atomzoo.load needs a Regression run. For its backbone alone use python -m atomzoo.export --backbone-only "
            "and fine-tune with --model.init_args.init_from"
        )
    backbone = model.backbone
    if not backbone.get("class_path") or not backbone.get("init_args_complete", False):
        raise ModelFileError(
            f"{model.path}: the backbone's class or constructor arguments are not recorded ({backbone})"
        )
    hparams.pop("backbone", None)
    hparams["init_from"] = None  # weights come from this file, not from the pretraining source
    init_args = {k: v for k, v in hparams.items() if _jsonable(v)}
    targets = list(init_args.get("targets") or [])
    return {
        "objective": {"class_path": class_path_of(objective_cls), "init_args": init_args},
        "backbone": {"class_path": backbone["class_path"], "init_args": backbone.get("init_args", {})},
        "targets": targets,
        "units": list(model.target_units or ["" for _ in targets]),
        "force_unit": model.force_unit if init_args.get("forces") else None,
        "forces": bool(init_args.get("forces", False)),
        "stress_unit": (model.stress_unit or "eV/A^3") if init_args.get("stress") else None,
        "cutoff_A": float(backbone.get("init_args", {}).get("cutoff", float("nan"))),
    }


def build_objective(model: ModelFile):
    """The regression objective a checkpoint or full export describes (:func:`model_spec`), with its
    weights loaded strictly, in eval mode.

    Raises:
        ModelFileError: see :func:`model_spec`; the weights do not fit the description; the target
            statistics were never fitted (an untrained model).
    """
    spec = model_spec(model)
    backbone = resolve_class(spec["backbone"]["class_path"])(**spec["backbone"]["init_args"])
    objective = resolve_class(spec["objective"]["class_path"])(backbone=backbone, **spec["objective"]["init_args"])
    missing, unexpected = objective.load_state_dict(model.state_dict, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            f"{model.path}: weights do not fit the described model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    objective.units = list(spec.get("units") or objective.units)
    if spec.get("force_unit"):
        objective.force_unit = spec["force_unit"]
    if spec.get("stress_unit"):
        objective.stress_unit = spec["stress_unit"]
    if not bool(objective.stats_ready):
        raise ModelFileError(
            f"{model.path}: the model's target statistics (mean/std) were never fitted: it was not trained"
        )
    return objective.eval()


def check_backbone_compatible(backbone: nn.Module, weights: Mapping[str, Tensor], spec: dict, source: str) -> None:
    """Raise ``ValueError`` naming both backbones if the class or any tensor name / shape differs.

    ``spec``: the file's ``{"class_path", "init_args"}`` (:attr:`ModelFile.backbone`); ``source``: the
    file, for the message. Tensors the backbone contract marks optional
    (``atomzoo.backbones.base.OPTIONAL_PARAMETERS``, e.g. a mask token newer than the file) may be missing.
    """
    from atomzoo.backbones.base import OPTIONAL_PARAMETERS

    ours = class_path_of(backbone)
    theirs = spec.get("class_path")
    if theirs:
        try:
            their_cls = resolve_class(theirs)
        except ModelFileError:
            their_cls = None
        if their_cls is not type(backbone) and theirs.rpartition(".")[2] != type(backbone).__qualname__:
            raise ValueError(
                f"init_from={source}: the checkpoint's backbone is {theirs} but this model's backbone is {ours}; "
                "use the same backbone class (and the same init_args) as the pretraining run"
            )
    own = backbone.state_dict()
    missing = sorted(k for k in set(own) - set(weights) if k not in OPTIONAL_PARAMETERS)
    # a buffer the backbone has but does not save (MACE's avg_num_neighbors when given as a number) may come
    # with the file: the backbone's own loading decides what to do with it
    buffers = {name for name, _ in backbone.named_buffers()}
    unexpected = sorted(set(weights) - set(own) - buffers)
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]  # fmt: skip
    if missing or unexpected or shapes:
        details = []
        if shapes:
            details.append("shape mismatches: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            details.append(f"missing in checkpoint: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            details.append(f"not in model: {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
        raise ValueError(
            f"init_from={source}: backbone weights do not fit. checkpoint backbone {theirs or 'unknown class'} "
            f"{spec.get('init_args', {})} vs model backbone {ours}. " + " | ".join(details)
        )


def load_into_backbone(backbone: nn.Module, path: str | Path) -> ModelFile:
    """Load the backbone weights of any model file (checkpoint of any objective, full or backbone
    export) into ``backbone`` (strict, after :func:`check_backbone_compatible`); returns the record.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: another backbone class, or tensor names / shapes that differ.
    """
    from .pretrained import resolve

    if not resolve(path).exists():
        raise FileNotFoundError(
            f"init_from: {path} does not exist (to reload a fine-tuned checkpoint without it, pass init_from=None)"
        )
    model = read(path)
    weights = _with_file_buffers(backbone, model.backbone_weights, model.backbone)
    check_backbone_compatible(backbone, weights, model.backbone, str(path))
    backbone.load_state_dict(weights, strict=True)
    return model


def _with_file_buffers(backbone: nn.Module, weights: Mapping[str, Tensor], spec: dict) -> dict[str, Tensor]:
    """``weights`` plus the buffers the file implies through its constructor arguments and does not hold
    (the backbone's optional ``file_buffers(init_args)``, e.g. MACE's ``avg_num_neighbors``)."""
    implied = getattr(backbone, "file_buffers", None)
    extra = implied(spec.get("init_args") or {}) if callable(implied) else {}
    return {**{k: v for k, v in extra.items() if k not in weights}, **weights}


def build_backbone(path: str | Path) -> nn.Module:
    """Instantiate the backbone a model file describes (its class path and constructor arguments) and
    load its weights.

    Raises:
        ModelFileError: the class cannot be imported, or the file does not record every constructor
            argument (build the backbone yourself and call :func:`load_into_backbone`).
    """
    model = read(path)
    spec = model.backbone
    if not spec.get("class_path"):
        raise ModelFileError(
            f"{path}: the backbone's class is not recorded; build it yourself and use load_into_backbone"
        )
    cls = resolve_class(spec["class_path"])
    if not spec.get("init_args_complete", False):
        raise ModelFileError(f"{path}: init_args are incomplete ({spec.get('init_args')}); build the backbone "
                             "yourself and use load_into_backbone")  # fmt: skip
    backbone = cls(**spec.get("init_args", {}))
    weights = model.backbone_weights
    check_backbone_compatible(backbone, weights, spec, str(path))
    backbone.load_state_dict(weights, strict=True)
    return backbone


__all__ = ["BACKBONE", "BACKBONE_PREFIX", "CHECKPOINT", "FULL_MODEL", "META_KEY", "PROVENANCE_KEY", "RENAMED",
           "ModelFile", "ModelFileError", "backbone_init_args", "build_backbone", "build_objective",
           "check_backbone_compatible", "class_path_of", "clear_cache", "load_checkpoint_dict", "load_into_backbone",
           "model_spec", "read", "read_checkpoint", "rename_arguments", "resolve_class", "translate_class_path",
           "translate_class_paths", "warn_renamed"]  # fmt: skip
