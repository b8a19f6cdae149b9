"""What a model's numbers depend on, recorded in its checkpoint and checked against the current run.

A checkpoint restores weights *and* state computed from the data it was trained on: normalisation
statistics, atom references, pooling, the element set its embeddings learnt, the units its outputs
are in. Restoring that state into a run whose data or configuration differ (other targets, other
units, another cutoff) silently produces wrong numbers. So every objective records, at ``setup``,

    targets, target_units, force_unit      what the outputs are and in which unit
    data_units                             the store's unit conversion (positions, energy, forces, factors)
    atomref                                per-target atom references of the dataset (or None)
    label_stats                            mean / std of each target over the training split
    elements                               atomic numbers present in the training split
    training_range                         shortest distance per element pair in the training split
                                           (:mod:`atomzoo.nn.training_range`; not compared, read by
                                           prediction to warn about extrapolation)
    cutoff, backbone                       the backbone's interaction radius (Angstrom) and class
    model                                  objective options that shape the restored state
                                           (atomref, standardize, pooling, forces)

in ``checkpoint["atomzoo_provenance"]`` and compares it on restore:

* ``fit --ckpt_path`` (resume): every entry must match.
* ``test`` / ``validate`` / ``predict`` with a checkpoint: everything but ``label_stats`` (evaluating a
  model on other data is legitimate); elements the model never saw in training give a warning
  naming them.
* ``init_from`` (fine-tuning from any objective's checkpoint; targets differ by design): only what
  the backbone depends on -- ``cutoff``, the positions' unit; new elements give a warning.

A mismatch raises :class:`ProvenanceMismatch` naming the setting, both values and how to start
fresh. Checkpoints written before this record exist load with a warning that nothing was checked.

Hooks (three one-line calls): ``Objective.setup`` -> :func:`on_setup` (with the DataModule's
:class:`~atomzoo.nn.statistics.DataSummary`: the record is built from it alone, the DataModule is
never asked anything else), ``on_save_checkpoint`` -> :func:`on_save_checkpoint`,
``on_load_checkpoint`` -> :func:`on_load_checkpoint`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from atomzoo import model_files

KEY = model_files.PROVENANCE_KEY
#: entries compared per kind of restore
RESUME = ("targets", "target_units", "force_unit", "data_units", "atomref", "model", "cutoff", "backbone", "elements",
          "label_stats")  # fmt: skip
EVALUATE = ("targets", "target_units", "force_unit", "data_units", "atomref", "model", "cutoff", "backbone")
#: prediction on new structures: the file's own units are converted on reading (the model always sees
#: Angstrom and answers in its training units), so only the model itself must match
PREDICT = ("model", "cutoff", "backbone")
MODEL_OPTIONS = ("atomref", "standardize", "pooling", "forces")


class ProvenanceMismatch(ValueError):
    """A checkpoint's recorded data/configuration differs from the current run's."""


def record(module, summary) -> dict[str, Any] | None:
    """The provenance of ``module`` trained/evaluated on the data ``summary`` describes (the
    :class:`~atomzoo.nn.statistics.DataSummary` its DataModule handed over), or ``None`` without a
    summary (raw dataloaders: nothing to record)."""
    if summary is None:
        return None
    infos = summary.targets
    stats = {info.name: list(summary.label_stats[info.name]) for info in infos}
    hparams = dict(getattr(module, "hparams", {}) or {})
    backbone = getattr(module, "backbone", None)
    return _plain({
        "dataset": summary.dataset,
        "targets": [info.name for info in infos],
        "target_units": [info.unit for info in infos],
        "force_unit": summary.force_unit,
        "data_units": dict(summary.data_units),
        "atomref": {info.name: list(info.atomref) if info.atomref is not None else None for info in infos},
        "label_stats": stats,
        "elements": list(summary.elements),
        "training_range": getattr(summary, "training_range", None),
        "cutoff": float(backbone.cutoff) if backbone is not None and hasattr(backbone, "cutoff") else None,
        "backbone": f"{type(backbone).__module__}.{type(backbone).__qualname__}" if backbone is not None else None,
        "model": {k: hparams[k] for k in MODEL_OPTIONS if k in hparams},
    })


def _plain(value):
    """``value`` with numpy scalars / arrays turned into Python numbers / lists, recursively: the record
    goes into checkpoints, which Lightning's ``zoo test`` / ``--test_after_fit`` reopen with
    ``torch.load(weights_only=True)``, and that refuses numpy objects."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=1e-12, equal_nan=True))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def differences(saved: dict, current: dict, keys) -> list[str]:
    """``"name: checkpoint <a>, now <b>"`` for each entry of ``keys`` that differs."""
    out = []
    for key in keys:
        if key not in saved or key not in current:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict) and key != "model":
            for sub in sorted(set(a) | set(b)):
                if not _same(a.get(sub), b.get(sub)):
                    out.append(f"{key}[{sub!r}]: checkpoint {_short(a.get(sub))}, now {_short(b.get(sub))}")
        elif not _same(a, b):
            out.append(f"{key}: checkpoint {_short(a)}, now {_short(b)}")
    return out


def _warn_unseen(saved: dict, data_elements, source: str, what: str) -> None:
    from ase.data import chemical_symbols

    new = sorted(set(int(z) for z in data_elements) - set(saved.get("elements", [])))
    if new:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in new)
        warnings.warn(f"{source}: {what} never saw elements {names} in training; its numbers for them are untrained",
                      stacklevel=3)  # fmt: skip


def check(saved: dict | None, current: dict | None, stage: str, source: str, data_elements=None) -> None:
    """Compare a checkpoint's record with the current run's; raise :class:`ProvenanceMismatch` on a difference.

    ``stage``: ``"fit"`` (resume), ``"validate"``/``"test"`` (evaluate), ``"predict"`` (new structures:
    only the model's own settings), ``"init_from"``. ``data_elements``: atomic numbers of the current
    data (all splits, ``DataSummary.data_elements``); outside ``fit`` those the checkpoint never saw in
    training are warned about.
    """
    if current is None:
        return
    if saved is None:
        warnings.warn(f"{source} has no record of the data and settings it was trained with (written before atomzoo "
                      "recorded them); targets, units and normalisation could not be checked", stacklevel=3)  # fmt: skip
        return
    if stage == "init_from":
        diffs = differences(saved, current, ("cutoff",))
        if not _same((saved.get("data_units") or {}).get("positions", "A"), current["data_units"].get("positions", "A")):
            diffs.append(f"data_units['positions']: checkpoint {saved['data_units'].get('positions')!r}, "
                         f"now {current['data_units'].get('positions')!r}")  # fmt: skip
        fix = ("use the pretraining run's backbone settings (--model.backbone.init_args.cutoff ...) and data in the "
               "same length unit")  # fmt: skip
    else:
        diffs = differences(saved, current, RESUME if stage == "fit" else PREDICT if stage == "predict" else EVALUATE)
        fix = (
            "to train on the current data and settings from scratch drop --ckpt_path; to start from the checkpoint's "
            f"backbone only (new heads and statistics) use --model.init_args.init_from {source}"
            if stage == "fit"
            else "evaluate with the data and settings the model was trained with (see the run's config.yaml)"
        )
    if diffs:
        raise ProvenanceMismatch(
            f"{source} was trained with other data or settings than this `{stage}` run uses: " + "; ".join(diffs)
            + f". Its restored state (heads, normalisation, atom references) belongs to those settings; {fix}"
        )
    if stage != "fit" and data_elements is not None:
        _warn_unseen(saved, data_elements, source, "the model" if stage != "init_from" else "the pretrained backbone")


# ----- hooks -------------------------------------------------------------------------------------
def on_setup(module, stage: str, summary) -> None:
    """Record the current run's provenance on ``module`` from the DataModule's ``summary`` (a
    :class:`~atomzoo.nn.statistics.DataSummary`, ``None`` without an AtomsDataModule: nothing
    recorded); check an ``init_from`` checkpoint's record."""
    if summary is None:
        return
    module._atomzoo_data_elements = summary.data_elements  # what restores warn about (on_load_checkpoint)
    module._atomzoo_provenance = record(module, summary)
    init_from = getattr(module, "init_from", None)
    if init_from and stage == "fit" and not getattr(module, "_atomzoo_init_checked", False):
        module._atomzoo_init_checked = True
        saved = model_files.read(init_from).provenance  # exports carry none; the read is shared with init_from
        if saved is not None:
            check(saved, module._atomzoo_provenance, "init_from", f"init_from={init_from}", summary.data_elements)


def training_range(module):
    """The :class:`~atomzoo.nn.training_range.TrainingRange` of the checkpoint ``module`` was restored from
    (``None``: not restored from one, or one written before the range was recorded)."""
    from atomzoo.nn.training_range import TrainingRange

    saved = getattr(module, "_atomzoo_restored_provenance", None) or {}
    return TrainingRange.from_record(saved.get("training_range"))


def on_predict_batch(module, batch) -> None:
    """``zoo predict``: note the structures of ``batch`` (their store rows, ``batch.idx``) with a pair
    closer than the training range of the restored checkpoint; :func:`on_predict_end` warns once."""
    found = getattr(module, "_atomzoo_extrapolations", None)
    if found is None:
        found = module._atomzoo_extrapolations = (training_range(module), [])
    known, findings = found
    if known is None or not hasattr(batch, "pos"):
        return
    cutoff = float(getattr(module.backbone, "cutoff", known.radius))
    findings.extend(known.outside(batch.z, batch.pos, batch.batch, cutoff, getattr(batch, "cell", None),
                                  getattr(batch, "pbc", None), structure_ids=batch.idx))  # fmt: skip


def on_predict_end(module) -> None:
    """Warn once about every structure :func:`on_predict_batch` noted (then forget them)."""
    found = getattr(module, "_atomzoo_extrapolations", None)
    module._atomzoo_extrapolations = None
    if found is not None and found[0] is not None and found[1]:
        found[0].warn(sorted(found[1], key=lambda f: f.structure), stacklevel=2)


def on_save_checkpoint(module, checkpoint: dict) -> None:
    """Write the recorded provenance into ``checkpoint``."""
    current = getattr(module, "_atomzoo_provenance", None)
    if current is None:
        current = getattr(module, "_atomzoo_restored_provenance", None)  # e.g. re-saved after loading
    if current is not None:
        checkpoint[KEY] = current


def on_load_checkpoint(module, checkpoint: dict) -> None:
    """Keep the checkpoint's record; inside a Trainer run compare it with the current data and settings."""
    saved = checkpoint.get(KEY)
    module._atomzoo_restored_provenance = saved
    trainer = getattr(module, "_trainer", None)
    current = getattr(module, "_atomzoo_provenance", None)
    if trainer is None or current is None:
        return  # load_from_checkpoint outside a run: nothing to compare with
    stage = getattr(getattr(trainer.state, "fn", None), "value", "fit")
    source = str(getattr(trainer, "ckpt_path", None) or "the checkpoint")
    check(saved, current, stage, source, getattr(module, "_atomzoo_data_elements", None))
