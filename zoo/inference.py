"""Trained models as ready-to-use predictors: ``atomzoo.load(path)`` and ``model.predict(atoms)``.

:func:`load` reads a Lightning checkpoint of a :class:`~atomzoo.objectives.Regression` run (``zoo fit``)
or a full-model export (``python -m atomzoo.export``: ``.safetensors`` + ``.card.json``) and returns an
:class:`AtomzooModel`: backbone + heads + normalisation buffers (mean, std, atom references), in eval
mode, with the targets' units and the elements it was trained on.

    import atomzoo
    from ase.io import read
    model = atomzoo.load("ethanol.safetensors")
    out = model.predict(read("my.xyz"))          # {"energy": eV, "forces": [N, 3] eV/A}
    atoms.calc = AtomzooCalculator(model)        # ASE calculator: from atomzoo.calculator import AtomzooCalculator

Inputs are checked before any number is produced (:func:`check_atoms`): structures with no atoms,
non-finite positions, elements the model never saw, atoms closer than ``MIN_DISTANCE`` (0.1 A) and
periodic cells for a backbone that cannot build periodic images (``Backbone.periodic`` False) raise
:class:`InputError` naming the structure and the problem.

Files are read by :mod:`atomzoo.model_files`. Checkpoints are unpickled: load only checkpoints you
trust. Exports are safetensors and never unpickled; their SHA-256 is checked against the card.
Loading never opens a dataset: the elements a model accepts come from its checkpoint's provenance
record or its export's card.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cards import ModelFileError, run_directory_info
from .nn.batch import atoms_to_batch
from .nn.training_range import TrainingRange
from .model_files import CHECKPOINT, ModelFile, build_objective, model_spec, read

#: atoms closer than this (Angstrom) are refused as unphysical (overlapping atoms, unit mistakes)
MIN_DISTANCE = 0.1


class InputError(ValueError):
    """A structure given to a model cannot be predicted (empty, NaN, unknown element, overlap, periodic)."""


# ----- input checks -----------------------------------------------------------------------------
def check_atoms(atoms, elements: Sequence[int] | None, where: str = "structure", periodic_ok: bool = False) -> None:
    """Raise :class:`InputError` for anything the model cannot predict meaningfully.

    Args:
        atoms: an ``ase.Atoms``.
        elements: atomic numbers the model was trained on (``None``: not checked).
        where: how the structure is named in the message (e.g. ``"my.xyz, structure 3"``).
        periodic_ok: the model's backbone builds periodic images (``Backbone.periodic``; every
            built-in one does). Periodic structures are then predicted with their images.

    Raises:
        InputError: no atoms; NaN/inf positions; an element not in ``elements``; two atoms (or an atom
            and an image, minimum-image convention) closer than :data:`MIN_DISTANCE` Angstrom; a
            periodic direction when ``periodic_ok`` is False, or whose lattice vectors are degenerate.
    """
    n = len(atoms)
    if n == 0:
        raise InputError(f"{where}: the structure has no atoms")
    pos = np.asarray(atoms.positions, dtype=np.float64)
    if not np.isfinite(pos).all():
        atom = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        raise InputError(f"{where}: position of atom {atom} is NaN or infinite")
    periodic = np.asarray(atoms.pbc, dtype=bool)
    if periodic.any():
        if not periodic_ok:
            raise InputError(
                f"{where}: periodic boundary conditions pbc={periodic.tolist()}, but this model's backbone builds "
                "molecular graphs only (Backbone.periodic is False). If the cell is only a box, set atoms.pbc = False"
            )
        vectors = np.asarray(atoms.cell, dtype=np.float64)[periodic]
        if np.linalg.matrix_rank(vectors, tol=1e-6) < len(vectors) or np.linalg.norm(vectors, axis=1).min() < MIN_DISTANCE:
            raise InputError(
                f"{where}: periodic (pbc={periodic.tolist()}) but the lattice vectors of the periodic directions "
                f"{vectors.tolist()} are degenerate or shorter than {MIN_DISTANCE} A; give the cell in Angstrom"
            )
    z = np.asarray(atoms.numbers)
    if elements is not None:
        unknown = sorted(set(int(v) for v in z) - set(int(e) for e in elements))
        if unknown:
            from ase.data import chemical_symbols

            names = [chemical_symbols[v] if 0 <= v < len(chemical_symbols) else str(v) for v in unknown]
            known = [chemical_symbols[e] for e in elements]
            raise InputError(f"{where}: element(s) {names} not in the training data (model knows {known})")
    if n > 1:
        if periodic.any():
            dist = np.asarray(atoms.get_all_distances(mic=True), dtype=np.float64)
        else:
            diff = pos[:, None, :] - pos[None, :, :]
            dist = np.sqrt((diff * diff).sum(-1))
        np.fill_diagonal(dist, np.inf)
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        if dist[i, j] < MIN_DISTANCE:
            raise InputError(
                f"{where}: atoms {min(i, j)} and {max(i, j)} are {dist[i, j]:.3g} A apart (< {MIN_DISTANCE} A); "
                "positions must be in Angstrom and atoms must not overlap"
            )


# ----- the model ---------------------------------------------------------------------------------
class AtomzooModel(nn.Module):
    """A trained regression model ready for prediction (what :func:`load` returns).

    Attributes:
        objective: the :class:`~atomzoo.objectives.Regression` module (backbone, heads, buffers), eval mode.
        targets, units: predicted properties and their units (e.g. ``["energy"]``, ``["eV"]``).
        force_unit: unit of the forces (``"eV/A"``) when the model predicts forces, else ``None``.
        stress_unit: unit of the stress (``"eV/A^3"``, ASE's sign) when the model was trained on stress, else ``None``.
        elements: atomic numbers of the training data (``None`` if unknown: then not checked).
        card: the model card (exports) or the equivalent information of a checkpoint.
        training_range: the training data's shortest distance per element pair
            (:class:`~atomzoo.nn.training_range.TrainingRange`; ``None`` for files written before it
            was recorded: then nothing is said about extrapolation).
    """

    def __init__(self, objective, card: dict, elements: Sequence[int] | None) -> None:
        super().__init__()
        self.objective = objective.eval()
        self.card = card
        self.targets = list(objective.targets)
        self.units = list(objective.units)
        self.forces = bool(objective.forces)
        self.force_unit = objective.force_unit if self.forces else None
        self.stress_unit = objective.stress_unit if getattr(objective, "stress", False) else None
        self.elements = sorted(int(e) for e in elements) if elements is not None else None
        self.training_range = TrainingRange.from_record((card or {}).get("training_range"))

    @property
    def cutoff(self) -> float:
        """The backbone's interaction radius in Angstrom."""
        return float(self.objective.backbone.cutoff)

    @property
    def device(self) -> torch.device:
        return next(self.objective.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.objective.parameters()).dtype

    def check(self, atoms, where: str = "structure", warn_range: bool = True) -> None:
        """:func:`check_atoms` against this model's training elements (periodic structures when the
        backbone builds periodic images); with ``warn_range``, also :meth:`warn_outside_training_range`."""
        check_atoms(atoms, self.elements, where, periodic_ok=self.periodic)
        if warn_range:
            self.warn_outside_training_range([atoms], lambda _: where)

    def warn_outside_training_range(self, atoms_list, name="structure {}".format) -> None:
        """One :class:`~atomzoo.nn.training_range.ExtrapolationWarning` naming the structures of
        ``atoms_list`` with a pair (within the cutoff) closer than the shortest of its elements in
        training, with the numbers (nothing when the model has no recorded range).
        ``name(k)``: how structure ``k`` is called in the message."""
        if self.training_range is None:
            return
        batch = atoms_to_batch(atoms_list, torch.float64)
        findings = self.training_range.outside(batch.z, batch.pos, batch.batch, self.cutoff,
                                               getattr(batch, "cell", None), getattr(batch, "pbc", None))  # fmt: skip
        self.training_range.warn(findings, name, stacklevel=4)

    @property
    def periodic(self) -> bool:
        """The backbone builds periodic images (``Backbone.periodic``): periodic structures can be predicted."""
        return bool(getattr(self.objective.backbone, "periodic", False))

    @property
    def has_atomic_energies(self) -> bool:
        """The energy is sum-pooled, so it splits into per-atom energies (``predict_batch(atomic_energies=True)``)."""
        return self.objective.has_atomic_energies

    def predict_batch(self, batch, forces: bool | None = None, atomic_energies: bool = False,
                      stress: bool | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Predictions of a PyG batch: ``{target: [num_graphs] float64}``, plus ``"forces"`` ``[N, 3]``
        (``forces``; default: when the model was trained on forces), ``"atomic_energies"`` ``[N]``
        float64 (``atomic_energies``; sum-pooled energy only) and ``"stress"`` ``[num_graphs, 3, 3]``
        (``stress``; default: when the model was trained on stress; energy unit per A^3, ASE's sign,
        NaN rows for structures that are not fully periodic).

        Reads the objective's one prediction path,
        :meth:`~atomzoo.objectives.regression.Regression.predict_properties` (what ``zoo predict`` writes).
        """
        out = self.objective.predict_properties(batch, forces=self.forces if forces is None else forces,
                                                atomic_energies=atomic_energies, stress=stress)  # fmt: skip
        result = {name: out["targets"][:, k] for k, name in enumerate(self.targets)}
        for key in ("forces", "atomic_energies", "stress"):
            if key in out:
                result[key] = out[key]
        return result

    def predict(self, atoms_or_list, batch_size: int = 64):
        """Predict every target (and forces) for one ``ase.Atoms`` or a list of them.

        Returns:
            for one structure a dict ``{target: float, "forces": ndarray [N, 3]}`` (units:
            :attr:`units`, :attr:`force_unit`; energies in eV for the zoo's datasets), plus, for a
            fully periodic structure and a force model, ``"stress"`` ndarray ``[6]`` in ASE's Voigt
            order ``(xx, yy, zz, yz, xz, xy)`` and sign (energy unit per A^3, eV/A^3); for a list,
            a list of such dicts in input order.

        Raises:
            InputError: see :func:`check_atoms`.
        """
        from ase import Atoms
        from ase.stress import full_3x3_to_voigt_6_stress

        single = isinstance(atoms_or_list, Atoms)
        atoms_list = [atoms_or_list] if single else list(atoms_or_list)
        for k, atoms in enumerate(atoms_list):
            if not isinstance(atoms, Atoms):
                raise TypeError(f"predict takes ase.Atoms or a list of them; item {k} is {type(atoms).__name__}")
            self.check(atoms, "structure" if single else f"structure {k}", warn_range=False)
        self.warn_outside_training_range(atoms_list, (lambda _: "the structure") if single else "structure {}".format)
        results = []
        for start in range(0, len(atoms_list), batch_size):
            chunk = atoms_list[start : start + batch_size]
            batch = atoms_to_batch(chunk, self.dtype, self.device)
            periodic = [bool(np.asarray(a.pbc).all()) for a in chunk]
            out = self.predict_batch(batch, stress=self.forces and any(periodic))
            for g in range(len(chunk)):
                row = {name: float(out[name][g]) for name in self.targets}
                if "forces" in out:
                    row["forces"] = out["forces"][batch.batch == g].double().cpu().numpy()
                if "stress" in out and periodic[g]:
                    row["stress"] = full_3x3_to_voigt_6_stress(out["stress"][g].double().cpu().numpy())
                results.append(row)
        return results[0] if single else results



def load(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
         elements: Sequence[int] | None = None, verify: bool = True) -> AtomzooModel:  # fmt: skip
    """Load a trained model from a Lightning checkpoint (``.ckpt``) or a full-model export (``.safetensors``).

    Args:
        path: checkpoint of a ``zoo fit`` Regression run, ``python -m atomzoo.export`` output, or the name
            of a pretrained full model (``atomzoo.pretrained.list()``).
        device: ``"cpu"``, ``"cuda"``, ...
        dtype: ``"float32"`` or ``"float64"`` (weights and positions; targets are pooled in float64 anyway).
        elements: override the atomic numbers the model accepts (default: the checkpoint's provenance
            record, or the export's card; ``None`` there: not checked, with a warning).
        verify: check the export's SHA-256 against its card (exports only; leave on).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFileError: unknown format, a backbone-only export, a missing card, a hash mismatch, or a
            checkpoint of a pretraining objective.
    """
    from .pretrained import resolve

    path = resolve(path)  # a pretrained model's name (atomzoo.pretrained) -> its file
    if not path.exists():
        raise FileNotFoundError(f"atomzoo.load: {path} does not exist")
    if path.is_file() and path.suffix not in (".ckpt", ".safetensors"):
        raise ModelFileError(
            f"{path}: unknown model file type {path.suffix!r}; atomzoo.load reads .ckpt (zoo fit) or .safetensors "
            "(python -m atomzoo.export)"
        )
    model_file = read(path, verify=verify)
    objective = build_objective(model_file)
    card = _checkpoint_card(model_file, objective) if model_file.kind == CHECKPOINT else model_file.card
    if elements is None:
        elements = model_file.elements
        if elements is None:
            warnings.warn(f"{path} does not record the elements it was trained on (written before atomzoo recorded "
                          "them, or not by a Trainer run on an atomzoo DataModule): unknown elements will not be "
                          "refused; pass elements=[...] to check them", stacklevel=2)  # fmt: skip
    model = AtomzooModel(objective, card, elements)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if torch_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype!r}: choose 'float32' or 'float64'")
    model = model.to(device=device)
    if torch_dtype == torch.float64:  # float32 stays as trained: its float64 buffers (mean, std, atomrefs) are kept
        model = model.double()
    return model


def _checkpoint_card(model_file: ModelFile, objective) -> dict:
    """The card's information for a checkpoint: its model description, run directory and elements."""
    run = run_directory_info(model_file.path)
    return {"model_format": "lightning-checkpoint", **model_spec(model_file),
            "source_checkpoint": str(model_file.path), "training_data": run["training_data"], "config": run["config"],
            "test_metrics": run["test_metrics"], "elements": model_file.elements,
            "training_range": model_file.training_range,
            "periodic": bool(getattr(objective.backbone, "periodic", False))}  # fmt: skip


__all__ = ["MIN_DISTANCE", "AtomzooModel", "InputError", "check_atoms", "load"]
