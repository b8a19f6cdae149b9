"""Published checkpoints of other codes -> atomzoo backbone exports (issue 28, item 3).

    python -m atomzoo.convert mace mace-mp-0-medium.model ~/atomzoo-models/mace-mp-0-medium.safetensors
    python -m atomzoo.convert scd last.ckpt ~/atomzoo-models/ct-scd-pcq.safetensors [--elements Z ...]

Each writes ``OUT.safetensors`` + ``OUT.card.json`` in the format of ``python -m atomzoo.export
--backbone-only`` (:mod:`atomzoo.export`; read by :mod:`atomzoo.model_files`, never unpickled again,
SHA-256 in the card), so the result is a model like any other: ``zoo fit --model.init_from OUT``,
:func:`atomzoo.model_files.build_backbone`, a name in ``$ATOMZOO_MODELS`` (``zoo models``).

* ``mace``: a model mace-torch saved (``torch.save`` of a ``MACE`` / ``ScaleShiftMACE`` module: MACE-MP,
  MACE-OFF, ``mace_run_train``) -> :class:`atomzoo.backbones.MACE` with its hyperparameters and weights,
  plus mace-torch's readouts, E0s and scale/shift as ``source_head.*`` tensors
  (:class:`atomzoo.backbones.mace.MACEReadout`); :func:`mace_potential` reads the whole potential back.
  Before returning, the result's energy and forces on one molecule are compared with mace-torch's own
  calculator (needs mace-torch, the ``[mace]`` extra).
* ``scd``: a checkpoint of SCD's trainer (``Ty-Perez/ct-scd-pcq``, ``ct-scd-amp``: ``last.ckpt``) ->
  :class:`atomzoo.backbones.scd_et.SCDET` (:func:`atomzoo.backbones.scd_et.load_scd_et`).

Unpickling the source runs code from it: convert only files you trust.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .cards import BACKBONE_FORMAT, card_path, write_card
from .export import _out_path, _write
from .model_files import SOURCE_HEAD_PREFIX, ModelFileError, build_backbone, load_checkpoint_dict, read


def write_backbone_export(out, tensors: dict, backbone: dict, source: str, card_fields: dict | None = None,
                          header_fields: dict | None = None) -> Path:  # fmt: skip
    """Write a converted backbone as ``OUT.safetensors`` (header: format, backbone spec, source) + its card.

    ``backbone``: ``{"class_path", "init_args"}`` (every constructor argument); ``card_fields`` are added to
    (and override) the card's defaults. Returns the weights' path."""
    out = _out_path(out)
    _write(out, tensors, {"model_format": BACKBONE_FORMAT, "objective": None, "source": source,
                          "backbone": {**backbone, "init_args_complete": True}, **(header_fields or {})})  # fmt: skip
    write_card(out, {
        "model_format": BACKBONE_FORMAT, "objective": None, "backbone": backbone, "targets": None, "force_unit": None,
        "elements": None, "periodic": True, "cutoff_A": backbone["init_args"].get("cutoff"), "training_data": None,
        "config": None, "test_metrics": None, "source_checkpoint": source, **(card_fields or {}),
    })  # fmt: skip
    return out


# ----- MACE ------------------------------------------------------------------------------------------
def convert_mace(source, out, head: str | None = None, check: bool = True) -> Path:
    """A mace-torch model (module or ``torch.save``-d file) -> atomzoo backbone export with mace-torch's readout.

    Raises:
        atomzoo.backbones.mace.MACEConversionError: a model atomzoo's MACE cannot represent, or ``check``
            found other energies / forces than mace-torch's (relative 1e-6 in float64, 1e-4 in float32).
    """
    from atomzoo.backbones.mace import (MACE, MACE_READOUT, MACEConversionError, convert_mace_readout,
                                        convert_mace_state, import_mace, mace_init_args)  # fmt: skip

    import_mace()  # mace-torch's classes, for unpickling (and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD left as it was)
    model = source if isinstance(source, torch.nn.Module) else load_checkpoint_dict(source)
    if not isinstance(model, torch.nn.Module):
        raise MACEConversionError(f"{source}: not a saved mace-torch model (torch.load gives {type(model).__name__})")
    model = model.eval()
    args = mace_init_args(model)
    backbone = MACE(**args)
    state, kept = convert_mace_state(model, backbone)
    backbone.load_state_dict(state, strict=True)
    config, head_state = convert_mace_readout(model, head)
    text = f"mace-torch {type(model).__name__}" + ("" if isinstance(source, torch.nn.Module) else f" ({source})")
    tensors = {**backbone.state_dict(), **{SOURCE_HEAD_PREFIX + k: v for k, v in head_state.items()}}
    out = write_backbone_export(
        out, tensors, {"class_path": "atomzoo.backbones.MACE", "init_args": args}, text,
        card_fields={"targets": [{"name": "energy", "unit": "eV"}], "force_unit": "eV/A",
                     "elements": args["atomic_numbers"], "converted": {"kept_initial": kept, "readout": config}},
        header_fields={"source_head": {"kind": MACE_READOUT, "config": config}},
    )  # fmt: skip
    if check:
        _check_mace(model, out)
    return out


def mace_potential(path_or_name):
    """The :class:`atomzoo.backbones.mace.MACEPotential` of a converted file or a model's name (SHA-256 checked).

    Raises:
        atomzoo.cards.ModelFileError: the file holds no mace-torch readout (not written by :func:`convert_mace`).
    """
    from atomzoo.backbones.mace import MACE_READOUT, MACEPotential, MACEReadout

    record = read(path_or_name)
    head = (record.header or {}).get("source_head") or {}
    if head.get("kind") != MACE_READOUT:
        raise ModelFileError(f"{path_or_name}: no mace-torch readout in the file; convert a mace-torch model with "
                             "`python -m atomzoo.convert mace MODEL OUT.safetensors`")  # fmt: skip
    readout = MACEReadout(**head["config"])
    readout.load_state_dict(record.source_head_weights, strict=True)
    backbone = build_backbone(path_or_name)
    return MACEPotential(backbone, readout.to(next(backbone.parameters()).dtype)).eval()


def _check_mace(model: torch.nn.Module, out: Path) -> None:
    """The converted file's energy and forces of one molecule of the model's elements against mace-torch's calculator."""
    from ase import Atoms
    from mace.calculators import MACECalculator

    from atomzoo.backbones.mace import MACEConversionError
    from atomzoo.nn.batch import atoms_to_batch

    zs = [int(z) for z in model.atomic_numbers.tolist()]
    n = max(3, len(zs))
    atoms = Atoms(numbers=(zs * n)[:n], positions=[[1.1 * k, 0.3 * (k % 2), 0.2 * (k % 3)] for k in range(n)])
    dtype = next(model.parameters()).dtype
    atoms.calc = MACECalculator(models=model, device="cpu", default_dtype=str(dtype).removeprefix("torch."))
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    ours, our_forces = mace_potential(out).energy_and_forces(atoms_to_batch([atoms], dtype))
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    diff = abs(float(ours[0]) - energy) / max(1.0, abs(energy))
    fdiff = float((our_forces.double() - torch.as_tensor(forces)).abs().max())
    if diff > tol or fdiff > tol * max(1.0, float(abs(forces).max())):
        raise MACEConversionError(f"{out}: converted energy {float(ours[0]):.6f} eV vs mace-torch {energy:.6f} eV "
                                  f"(forces differ by {fdiff:.2e} eV/A): the model is not represented")  # fmt: skip
    print(f"checked: {atoms.get_chemical_formula()} energy {energy:.6f} eV (mace-torch) vs {float(ours[0]):.6f} eV "
          f"(atomzoo), max force difference {fdiff:.1e} eV/A")


# ----- SCD -------------------------------------------------------------------------------------------
def convert_scd(source, out, elements: list[int] | None = None) -> Path:
    """An SCD checkpoint (path, loaded dict or CET / ConditionalET module) -> atomzoo backbone export of
    :class:`~atomzoo.backbones.scd_et.SCDET`. ``elements``: atomic numbers of the pretraining data for the
    card (the checkpoint does not record them; ``None``: fine-tuning checks no elements)."""
    from atomzoo.backbones.scd_et import load_scd_et, read_scd_checkpoint, scd_et_kwargs

    hparams, state_dict = read_scd_checkpoint(source)
    model = load_scd_et({"hyper_parameters": hparams, "state_dict": state_dict})
    text = str(source) if isinstance(source, (str, Path)) else f"a {type(source).__name__}"
    return write_backbone_export(
        out, model.state_dict(), {"class_path": "atomzoo.backbones.scd_et.SCDET", "init_args": scd_et_kwargs(hparams)},
        text, card_fields={"objective": "SCD (TyJPerez/SelfConditionedDenoisingAtoms)",
                           "elements": sorted(int(z) for z in elements) if elements else None},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """``python -m atomzoo.convert {mace,scd} SOURCE OUT.safetensors [options]`` (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m atomzoo.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="code", required=True)
    mace = sub.add_parser("mace", help="a mace-torch model file (MACE-MP, MACE-OFF) -> OUT.safetensors + card")
    mace.add_argument("--head", default=None, help="head of a multi-head model (default: its last)")
    mace.add_argument("--no-check", action="store_true", help="skip the energy/force check against mace-torch")
    scd = sub.add_parser("scd", help="an SCD checkpoint (ct-scd-pcq, ct-scd-amp: last.ckpt) -> OUT.safetensors + card")
    scd.add_argument("--elements", type=int, nargs="+", default=None,
                     help="atomic numbers of the pretraining data, recorded in the card")  # fmt: skip
    for command in (mace, scd):
        command.add_argument("source")
        command.add_argument("out")
    args = parser.parse_args(argv)
    try:
        if args.code == "mace":
            out = convert_mace(args.source, args.out, args.head, check=not args.no_check)
        else:
            out = convert_scd(args.source, args.out, args.elements)
    except (ValueError, TypeError, FileNotFoundError) as err:  # one line: the file or the feature, and the fix
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    print(f"wrote {out} and {card_path(out)}")


if __name__ == "__main__":
    main()

__all__ = ["convert_mace", "convert_scd", "mace_potential", "main", "write_backbone_export"]
