"""Model cards: a small JSON file next to every export that says what the weights are and proves which.

``<name>.safetensors`` gets ``<name>.card.json``::

    {"card_format": "atomzoo-model-card/1",
     "model_format": "atomzoo-full-model/1" | "atomzoo-backbone/1",
     "weights": "<name>.safetensors", "sha256": "<hex digest of the weights file>",
     "objective": "atomzoo.objectives.regression.Regression", "backbone": {class_path, init_args},
     "targets": [{"name": "energy", "unit": "eV"}], "force_unit": "eV/A" | null,
     "stress_unit": "eV/A^3" | null,
     "elements": [1, 6, 8] | null, "periodic": true, "cutoff_A": 5.0,
     "training_range": {"radius_A": 10.0, "elements": [1, 6, 8], "shortest_distance_A": {"H-H": 1.51, ...}} | null,
     "training_data": {class_path, init_args} | null, "config": {... the run's config.yaml ...} | null,
     "test_metrics": {"test/energy_mae_meV": ...} | null, "source_checkpoint": "...",
     "versions": {"atomzoo": ..., "torch": ..., "lightning": ..., "ase": ..., "python": ...},
     "created_utc": "..."}

``stress_unit``: the unit of the predicted stress (ASE's sign: ``sigma = (1/V) dE/d(strain)``), ``null``
for a model not trained on stress. ``periodic``: the backbone builds periodic images
(``Backbone.periodic``), so periodic structures are predicted with them. ``elements``: the atomic
numbers of the training split, from the checkpoint's provenance record (``null`` for a checkpoint
written before the record existed: no element check).
``training_range``: the training split's shortest distance of each element pair
(:mod:`atomzoo.nn.training_range`); predicting a structure with a pair closer than that warns that the
prediction is an extrapolation (``null`` for checkpoints written before it was recorded: no warning).
``config``, ``training_data`` and ``test_metrics`` are read from the run directory of the checkpoint
(``config.yaml`` and ``test_metrics.json`` that ``zoo fit``/``zoo test`` write next to
``checkpoints/``); they are ``null`` when that directory is not there -- a card never guesses, and
writing one never opens a dataset.

:func:`verify_weights` recomputes the SHA-256 of the weights and refuses a file that does not match
its card (:class:`ModelFileError`), so a corrupted or swapped file is never loaded silently.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from pathlib import Path

CARD_FORMAT = "atomzoo-model-card/1"
FULL_FORMAT = "atomzoo-full-model/1"
BACKBONE_FORMAT = "atomzoo-backbone/1"
KNOWN_MODEL_FORMATS = (FULL_FORMAT, BACKBONE_FORMAT)


class ModelFileError(ValueError):
    """A model file cannot be used: not an atomzoo file, a missing card or one that does not match the
    weights' hash, an unknown format, the wrong kind of file for the task, or a class it names that
    cannot be imported. The message names the file and the fix."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(weights: str | Path) -> Path:
    """``model.safetensors`` -> ``model.card.json``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".card.json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define what the weights mean."""
    import ase
    import lightning
    import numpy
    import torch

    import atomzoo

    return {"atomzoo": atomzoo.__version__, "torch": torch.__version__, "lightning": lightning.__version__,
            "ase": ase.__version__, "numpy": numpy.__version__, "python": platform.python_version()}  # fmt: skip


def run_directory_info(checkpoint: str | Path) -> dict:
    """``{"config", "training_data", "test_metrics", "run_dir"}`` from the run directory of a ``zoo`` checkpoint.

    The LightningCLI layout is ``<run_dir>/checkpoints/<name>.ckpt`` with ``<run_dir>/config.yaml``
    and (after ``zoo test`` or ``--test_after_fit``) ``<run_dir>/test_metrics.json``. Entries that are
    not found are ``None``.
    """
    import yaml

    checkpoint = Path(checkpoint).resolve()
    info = {"config": None, "training_data": None, "test_metrics": None, "run_dir": None}
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        config_file = run_dir / "config.yaml"
        if config_file.is_file():
            info["run_dir"] = str(run_dir)
            config = yaml.safe_load(config_file.read_text())
            info["config"] = config
            data = (config or {}).get("data")
            if isinstance(data, dict):
                info["training_data"] = data
            metrics = run_dir / "test_metrics.json"
            if metrics.is_file():
                info["test_metrics"] = json.loads(metrics.read_text())
            break
    return info


def write_card(weights: str | Path, fields: dict) -> Path:
    """Write ``<weights stem>.card.json`` with ``fields`` plus format, file name, SHA-256, versions, time."""
    weights = Path(weights)
    card = {
        "card_format": CARD_FORMAT,
        **fields,
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "versions": library_versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = card_path(weights)
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return path


def read_card(weights: str | Path) -> dict:
    """The card of ``weights``; :class:`ModelFileError` if it is missing or not a card."""
    path = card_path(weights)
    if not path.is_file():
        raise ModelFileError(
            f"{weights}: no model card {path.name} next to it; the card holds the weights' SHA-256 and what "
            "they mean. Copy it along with the weights, or re-export with `python -m atomzoo.export`"
        )
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: not valid JSON ({err})") from err
    if card.get("card_format") != CARD_FORMAT:
        raise ModelFileError(
            f"{path}: unknown card format {card.get('card_format')!r} (this atomzoo reads {CARD_FORMAT!r})"
        )
    if card.get("model_format") not in KNOWN_MODEL_FORMATS:
        raise ModelFileError(
            f"{path}: unknown model format {card.get('model_format')!r}; known: {', '.join(KNOWN_MODEL_FORMATS)}"
        )
    return card


def verify_weights(weights: str | Path, card: dict) -> None:
    """Raise :class:`ModelFileError` unless ``weights`` hashes to the card's ``sha256``."""
    actual = sha256_file(weights)
    if actual != card.get("sha256"):
        raise ModelFileError(
            f"{weights}: SHA-256 {actual[:16]}... does not match its card {card_path(weights).name} "
            f"({str(card.get('sha256'))[:16]}...): the file was modified, truncated or swapped. "
            "Re-download or re-export it"
        )


__all__ = ["BACKBONE_FORMAT", "CARD_FORMAT", "FULL_FORMAT", "ModelFileError", "card_path", "library_versions",
           "read_card", "run_directory_info", "sha256_file", "verify_weights", "write_card"]  # fmt: skip
