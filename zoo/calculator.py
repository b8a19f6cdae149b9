"""An ASE calculator on a trained atomzoo force model: geometry optimisation, MD, vibrations in ASE.

    from ase.io import read
    from ase.optimize import BFGS
    from atomzoo.calculator import AtomzooCalculator

    atoms = read("ethanol.xyz")
    atoms.calc = AtomzooCalculator("ethanol.safetensors")      # or a zoo fit checkpoint (.ckpt)
    BFGS(atoms).run(fmax=0.01)

Properties (ASE units): ``energy`` and ``free_energy`` (eV; the same number, the model has no
electronic entropy), ``forces`` ``[N, 3]`` (eV/A) as ``-dE/dpos`` by autograd, and ``energies``
``[N]`` (eV), the per-atom contributions ``e_i = ref(z_i) + mu + sigma * o_i`` of the sum-pooled energy
head (:mod:`atomzoo.objectives.regression`), which add up to ``energy``, and, for fully periodic
structures (``atoms.pbc`` all true), ``stress`` in ASE's Voigt order ``(xx, yy, zz, yz, xz, xy)`` and
sign convention (eV/A^3; ``sigma = (1/V) dE/d(strain)``, the same as
``Calculator.calculate_numerical_stress``; positive: tensile, the structure would shrink), by
autograd on a strain of positions and cell (:func:`atomzoo.objectives.forces.energy_forces_stress`)
from the same pass as the forces. Asking for the stress of a molecule, a slab or a wire raises
``PropertyNotImplementedError`` (ASE's convention for a property a structure does not have). Models
trained in other energy units (kcal/mol, Hartree, kJ/mol, meV) are converted to eV with
:mod:`atomzoo.units`.

The calculator only reads the model: every number comes from
:meth:`atomzoo.inference.AtomzooModel.predict_batch`, i.e. the objective's one prediction path
(:meth:`~atomzoo.objectives.regression.Regression.predict_properties`).

Neighbour list: the backbone's radius graph is built with ``cutoff + skin`` and reused while no atom
moved more than ``skin / 2`` since the build (Verlet list). The list travels with the batch as
``candidate_edge_index``; the backbone's graph keeps only the pairs closer than ``cutoff``
(:func:`atomzoo.nn.graph.build_graph`), so results equal a fresh build exactly (same edges, same
order). ``neighbor_list_builds`` counts the builds.

Inputs are checked first (:func:`atomzoo.inference.check_atoms`): no atoms, NaN positions, unknown
elements, atoms closer than 0.1 A and degenerate periodic cells raise
:class:`atomzoo.inference.InputError`. Periodic structures (``atoms.pbc``) are computed with their
periodic images (every built-in backbone builds them); their neighbour list is rebuilt on every call
(the skin reuse above is for molecules).

References: ASE calculator interface (``ase.calculators.calculator.Calculator``), Larsen et al.,
J. Phys.: Condens. Matter 29, 273002 (2017); Verlet neighbour lists, Allen & Tildesley, *Computer
Simulation of Liquids* (2017), sec. 5.3.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from atomzoo.nn.batch import atoms_to_batch
from atomzoo.nn.graph import radius_graph
from atomzoo.units import conversion_factor

from .inference import AtomzooModel, load


class AtomzooCalculator(Calculator):
    """ASE calculator on an atomzoo Regression model that predicts ``energy`` (and forces).

    Args:
        model: an :class:`~atomzoo.inference.AtomzooModel` or a path :func:`atomzoo.load` reads
            (``.ckpt`` of a ``zoo fit`` run, or a ``.safetensors`` export with its card).
        device: torch device (``"cpu"``, ``"cuda"``).
        dtype: ``"float32"`` (as trained) or ``"float64"`` (weights and positions in double
            precision: smoother energy surfaces for tight optimisations and finite differences).
        skin: Verlet skin in Angstrom for reusing the neighbour list (0: rebuild every call).
        **kwargs: passed to ``ase.calculators.calculator.Calculator``.

    Raises:
        ValueError: the model has no ``energy`` target, or its energy unit is not convertible to eV.
        atomzoo.inference.InputError: at ``calculate`` time, for a structure the model cannot predict.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model: AtomzooModel | str, device: str = "cpu", dtype: str = "float32", skin: float = 0.5,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
        if not isinstance(model, AtomzooModel):
            model = load(model, device=device, dtype=dtype)
        else:
            model = model.to(device)
            if dtype == "float64":
                model = model.double()
        if "energy" not in model.targets:
            raise ValueError(f"AtomzooCalculator needs a model with target 'energy'; this one predicts {model.targets}")
        self.model = model
        unit = model.units[model.targets.index("energy")] or "eV"
        try:
            self.to_eV = conversion_factor(unit, "energy")
        except ValueError as err:
            raise ValueError(f"model energy unit: {err}") from None
        if skin < 0:
            raise ValueError(f"skin={skin}: must be >= 0 Angstrom")
        self.skin = float(skin)
        self.neighbor_list_builds = 0
        self._nl_key = None  # (atomic numbers, positions at build) of the cached list
        self._nl_candidates = None

    # ----- neighbour list with skin -------------------------------------------------------------
    def _needs_rebuild(self, z: np.ndarray, pos: np.ndarray) -> bool:
        if self._nl_key is None or self.skin == 0:
            return True
        z_ref, pos_ref = self._nl_key
        if z.shape != z_ref.shape or not np.array_equal(z, z_ref):
            return True
        return float(np.sqrt(((pos - pos_ref) ** 2).sum(-1)).max()) > self.skin / 2

    def _attach_neighbor_list(self, atoms, batch) -> None:
        """Give ``batch`` the ``cutoff + skin`` candidate pairs (``candidate_edge_index``), rebuilt when
        an atom moved more than ``skin / 2``; periodic structures get none (searched on every call)."""
        if bool(np.asarray(atoms.pbc).any()):
            self._nl_key = None
            self.neighbor_list_builds += 1
            return
        z, pos = np.asarray(atoms.numbers), np.asarray(atoms.positions, dtype=np.float64)
        if self._needs_rebuild(z, pos):
            self._nl_candidates = radius_graph(batch.pos, batch.batch, self.model.cutoff + self.skin, None)
            self._nl_key = (z.copy(), pos.copy())
            self.neighbor_list_builds += 1
        batch.candidate_edge_index = self._nl_candidates

    # ----- ASE interface --------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self.model.check(atoms, "AtomzooCalculator input")
        periodic = bool(np.asarray(atoms.pbc).all())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress needs a fully periodic structure; this one has pbc={np.asarray(atoms.pbc).tolist()} "
                "(a molecule, slab or wire has no stress)"
            )
        batch = atoms_to_batch([atoms], self.model.dtype, self.model.device)
        self._attach_neighbor_list(atoms, batch)
        out = self.model.predict_batch(batch, forces=True, atomic_energies=self.model.has_atomic_energies,
                                       stress=periodic)  # fmt: skip
        self.results["energy"] = float(out["energy"][0]) * self.to_eV
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = out["forces"].double().cpu().numpy() * self.to_eV
        if "atomic_energies" in out:
            self.results["energies"] = out["atomic_energies"].cpu().numpy() * self.to_eV
        if periodic:
            sigma = out["stress"][0].double().cpu().numpy() * self.to_eV
            self.results["stress"] = full_3x3_to_voigt_6_stress(sigma)

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name == "energies" and not self.model.has_atomic_energies:
            raise ValueError("per-atom energies need a sum-pooled energy head; this model averages its energy")
        return super().get_property(name, atoms, allow_calculation)


__all__ = ["AtomzooCalculator"]
