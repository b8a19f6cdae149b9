"""Export a trained model for use without Lightning: weights (safetensors) + a model card.

    python -m atomzoo.export runs/zoo/version_0/checkpoints/last.ckpt ethanol.safetensors
    python -m atomzoo.export CKPT schnet_backbone.safetensors --backbone-only

Full model (default; Regression checkpoints; for :func:`atomzoo.load` and
:class:`atomzoo.calculator.AtomzooCalculator`): ``ethanol.safetensors`` holds the whole Regression
``state_dict`` -- backbone, heads and the normalisation buffers (``mean``, ``std``, ``atomref_table``,
``force_rms``, ...) -- and its header (key ``"atomzoo"``) the JSON that rebuilds the module:
objective and backbone class paths with their constructor arguments, targets, units, force unit.

Backbone only (``--backbone-only``; checkpoints of any objective; for ``init_from``): the
``backbone.*`` tensors without the prefix (the keys of ``backbone.state_dict()``), and in the header
the backbone's class path and constructor arguments (``init_args_complete`` says whether every one
was recorded: a backbone built in Python has them recovered from its attributes).

Both get ``<stem>.card.json``, the model card (:mod:`atomzoo.cards`): SHA-256 of the weights, config,
training data, test metrics, elements, library versions. The elements are the checkpoint's
provenance record's (the atomic numbers of its training split); a checkpoint written before that
record gives ``null`` (no element check on loading) with a warning, unless ``--elements`` is given.
Reading the files back: :mod:`atomzoo.model_files`.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

from .cards import BACKBONE_FORMAT, FULL_FORMAT, card_path, run_directory_info, write_card
from .model_files import (META_KEY, ModelFile, ModelFileError, build_objective, model_spec, read_checkpoint,
                          resolve_class)


def _out_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _elements(model: ModelFile, given: list[int] | None) -> list[int] | None:
    """``given``, else the training elements of the checkpoint's provenance record; ``None`` (with a
    warning) for a checkpoint written before the record existed."""
    if given is not None:
        return [int(z) for z in given]
    if model.elements is None:
        warnings.warn(
            f"{model.path} has no record of the elements it was trained on (written before atomzoo recorded them, "
            "or not by a Trainer run on an atomzoo DataModule): the card's elements is null, so loading it will not "
            "refuse unknown elements; give them with --elements (e.g. --elements 1 6 7 8 9)",
            stacklevel=3,
        )
    return model.elements


def _write(out: Path, tensors: dict, header: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out),
              metadata={META_KEY: json.dumps(header)})  # fmt: skip
    # safetensors creates the file -rw------- whatever the umask; give it the mode every other file gets
    # (the card's), so that whoever may read the card may read the weights (issue 32, item 9)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)


def export_model(checkpoint: str | Path, out: str | Path, elements: list[int] | None = None) -> Path:
    """Write the full model of a Regression ``checkpoint`` to ``out`` (``.safetensors``) and its card.

    Args:
        checkpoint: Lightning checkpoint of a ``zoo fit`` Regression run (unpickled: trusted files only).
        out: output path; ``.safetensors`` is appended if missing; the card is ``<stem>.card.json``.
        elements: atomic numbers the model accepts (default: the checkpoint's provenance record).

    Returns: the path of the card.

    Raises:
        atomzoo.cards.ModelFileError: not a checkpoint, or not of a regression objective
            (:func:`atomzoo.model_files.model_spec`).
    """
    checkpoint = Path(checkpoint)
    model = read_checkpoint(checkpoint, "python -m atomzoo.export")
    spec = model_spec(model)
    objective = build_objective(model)  # proves the weights fit the description before anything is written
    out = _out_path(out)
    _write(out, model.state_dict, {"model_format": FULL_FORMAT, **spec})
    run = run_directory_info(checkpoint)
    return write_card(out, {
        "model_format": FULL_FORMAT, "objective": spec["objective"]["class_path"], "backbone": spec["backbone"],
        "targets": [{"name": t, "unit": u} for t, u in zip(spec["targets"], spec["units"])],
        "force_unit": spec["force_unit"], "stress_unit": spec.get("stress_unit"), "elements": _elements(model, elements),
        "training_range": model.training_range,
        "periodic": bool(getattr(objective.backbone, "periodic", False)), "cutoff_A": spec["cutoff_A"],
        "training_data": run["training_data"], "config": run["config"], "test_metrics": run["test_metrics"],
        "source_checkpoint": str(checkpoint),
    })  # fmt: skip


def export_backbone(checkpoint: str | Path, out: str | Path, elements: list[int] | None = None) -> Path:
    """Write the backbone weights of a ``checkpoint`` of any objective to ``out`` (``.safetensors``) and its card.

    Args:
        checkpoint: Lightning checkpoint (unpickled: trusted files only).
        out: output path; ``.safetensors`` is appended if missing; the card is ``<stem>.card.json``.
        elements: atomic numbers of the pretraining data (default: the checkpoint's provenance record).

    Returns: the path of the card.

    Raises:
        atomzoo.cards.ModelFileError: not a checkpoint of an atomzoo objective.
    """
    checkpoint = Path(checkpoint)
    model = read_checkpoint(checkpoint, "python -m atomzoo.export --backbone-only")
    backbone = model.backbone
    out = _out_path(out)
    _write(out, model.backbone_weights, {"model_format": BACKBONE_FORMAT, "objective": model.objective,
                                         "backbone": backbone, "source": str(checkpoint)})  # fmt: skip
    try:
        backbone_cls = resolve_class(backbone["class_path"]) if backbone.get("class_path") else None
    except ModelFileError:  # not importable here: the file is still written, its card says non-periodic
        backbone_cls = None
    run = run_directory_info(checkpoint)
    return write_card(out, {
        "model_format": BACKBONE_FORMAT, "objective": model.objective,
        "backbone": {"class_path": backbone["class_path"], "init_args": backbone["init_args"]},
        "targets": None, "force_unit": None, "stress_unit": None, "elements": _elements(model, elements),
        "training_range": model.training_range,
        "periodic": bool(getattr(backbone_cls, "periodic", False)), "cutoff_A": backbone["init_args"].get("cutoff"),
        "training_data": run["training_data"], "config": run["config"], "test_metrics": run["test_metrics"],
        "source_checkpoint": str(checkpoint),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m atomzoo.export CKPT OUT [--backbone-only] [--elements Z ...]``."""
    parser = argparse.ArgumentParser(prog="python -m atomzoo.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint (zoo fit)")
    parser.add_argument("out", help="output .safetensors path; the card is written next to it as <stem>.card.json")
    parser.add_argument("--backbone-only", action="store_true",
                        help="export only the backbone (any objective's checkpoint; for init_from)")  # fmt: skip
    parser.add_argument("--elements", type=int, nargs="+", default=None,
                        help="atomic numbers the model accepts (default: the checkpoint's provenance record)")
    args = parser.parse_args(argv)
    export = export_backbone if args.backbone_only else export_model
    try:
        export(args.checkpoint, args.out, args.elements)
    except (ModelFileError, FileNotFoundError) as err:  # the user's file: one line, not a traceback
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(f"wrote {_out_path(args.out)} and {card_path(_out_path(args.out))}")


if __name__ == "__main__":
    main()

__all__ = ["export_backbone", "export_model", "main"]
