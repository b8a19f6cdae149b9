"""Export a trained model for use without Lightning: weights (safetensors) + a model card.

    python -m atomzoo.export runs/zoo/version_0/checkpoints/last.ckpt ethanol.safetensors
    python -m atomzoo.export CKPT schnet_backbone.safetensors --backbone-only

Full model (default; for :func:`atomzoo.load` and :class:`atomzoo.calculator.AtomzooCalculator`):
``ethanol.safetensors`` holds the whole Regression ``state_dict`` -- backbone, heads and the
normalisation buffers (``mean``, ``std``, ``atomref_table``, ``force_rms``, ...) -- and its header
(key ``"atomzoo"``) the JSON that rebuilds the module: objective and backbone class paths with their
constructor arguments, targets, units, force unit. ``ethanol.card.json`` is the model card
(:mod:`atomzoo.cards`): SHA-256 of the weights, config, training data, test metrics, elements,
library versions.

``--backbone-only``: the same file as ``python -m atomzoo.objectives.export`` (backbone tensors +
metadata, loadable by ``init_from``), plus a card. Works for checkpoints of any objective.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .cards import BACKBONE_FORMAT, FULL_FORMAT, card_path, run_directory_info, write_card
from .inference import META_KEY, elements_of_training_data, spec_from_checkpoint


def _out_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def export_model(checkpoint: str | Path, out: str | Path, elements: list[int] | None = None) -> Path:
    """Write the full model of a Regression ``checkpoint`` to ``out`` (``.safetensors``) and its card.

    Args:
        checkpoint: Lightning checkpoint of a ``zoo fit`` Regression run (unpickled: trusted files only).
        out: output path; ``.safetensors`` is appended if missing; the card is ``<stem>.card.json``.
        elements: atomic numbers the model accepts (default: read from the run's training data).

    Returns: the path of the card.

    Raises:
        atomzoo.cards.ModelFileError: not a regression checkpoint (see :func:`atomzoo.inference.spec_from_checkpoint`).
    """
    from atomzoo._legacy import upgrade_class_paths
    from safetensors.torch import save_file

    checkpoint = Path(checkpoint)
    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    upgrade_class_paths(ckpt.get("hyper_parameters"))
    spec = spec_from_checkpoint(ckpt, str(checkpoint))
    # build once to prove the weights fit the description before writing anything
    from .inference import build_objective

    objective = build_objective(spec, ckpt["state_dict"])
    out = _out_path(out)
    header = {"model_format": FULL_FORMAT, **spec}
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(tensors, str(out), metadata={META_KEY: json.dumps(header)})
    run = run_directory_info(checkpoint)
    if elements is None:
        elements = elements_of_training_data(run["training_data"])
    return write_card(out, {
        "model_format": FULL_FORMAT, "objective": spec["objective"]["class_path"], "backbone": spec["backbone"],
        "targets": [{"name": t, "unit": u} for t, u in zip(spec["targets"], spec["units"])],
        "force_unit": spec["force_unit"], "elements": elements,
        "periodic": bool(getattr(objective.backbone, "periodic", False)), "cutoff_A": spec["cutoff_A"],
        "training_data": run["training_data"], "config": run["config"], "test_metrics": run["test_metrics"],
        "source_checkpoint": str(checkpoint),
    })  # fmt: skip


def export_backbone_with_card(checkpoint: str | Path, out: str | Path) -> Path:
    """:func:`atomzoo.objectives.export.export_backbone` plus a model card; returns the card's path."""
    from atomzoo.objectives.export import export_backbone, resolve_class

    out = _out_path(out)
    meta = export_backbone(checkpoint, out)
    run = run_directory_info(checkpoint)
    return write_card(out, {
        "model_format": BACKBONE_FORMAT, "objective": meta.get("objective"),
        "backbone": {"class_path": meta.get("class_path"), "init_args": meta.get("init_args")},
        "targets": None, "force_unit": None, "elements": elements_of_training_data(run["training_data"]),
        "periodic": bool(getattr(resolve_class(meta.get("class_path")), "periodic", False)), "cutoff_A": (meta.get("init_args") or {}).get("cutoff"),
        "training_data": run["training_data"], "config": run["config"], "test_metrics": run["test_metrics"],
        "source_checkpoint": str(checkpoint),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atomzoo.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint (zoo fit)")
    parser.add_argument("out", help="output .safetensors path; the card is written next to it as <stem>.card.json")
    parser.add_argument("--backbone-only", action="store_true", help="export only the backbone (for init_from)")
    parser.add_argument("--elements", type=int, nargs="+", default=None,
                        help="atomic numbers the model accepts (default: from the run's training data)")
    args = parser.parse_args(argv)
    if args.backbone_only:
        export_backbone_with_card(args.checkpoint, args.out)
    else:
        export_model(args.checkpoint, args.out, args.elements)
    print(f"wrote {_out_path(args.out)} and {card_path(_out_path(args.out))}")


if __name__ == "__main__":
    main()

__all__ = ["export_backbone_with_card", "export_model", "main"]
