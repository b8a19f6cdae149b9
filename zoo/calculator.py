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
head (:mod:`atomzoo.objectives.regression`), which add up to ``energy``. Models trained in other energy
units (kcal/mol, Hartree, kJ/mol, meV) are converted with :mod:`ase.units`.

Neighbour list: the backbone's radius graph is built with ``cutoff + skin`` and reused while no atom
moved more than ``skin / 2`` since the build (Verlet list); each call keeps only the pairs closer than
``cutoff``, so results equal a fresh build exactly (same edges, same order). ``neighbor_list_builds``
counts the builds.

Inputs are checked first (:func:`atomzoo.inference.check_atoms`): no atoms, NaN positions, unknown
elements, atoms closer than 0.1 A and degenerate periodic cells raise
:class:`atomzoo.inference.InputError`. Periodic structures (``atoms.pbc``) are computed with their
periodic images (every built-in backbone builds them); their neighbour list is rebuilt on every call
(the skin reuse below is for molecules). No stress yet.

References: ASE calculator interface (``ase.calculators.calculator.Calculator``), Larsen et al.,
J. Phys.: Condens. Matter 29, 273002 (2017); Verlet neighbour lists, Allen & Tildesley, *Computer
Simulation of Liquids* (2017), sec. 5.3.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import units
from ase.calculators.calculator import Calculator, all_changes

from atomzoo.nn.graph import Graph, radius_graph

from .inference import AtomzooModel, atoms_to_batch, load

#: energy unit of a model -> eV
ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3, "kcal/mol": units.kcal / units.mol, "kJ/mol": units.kJ / units.mol,
                "Hartree": units.Hartree, "Ha": units.Hartree}  # fmt: skip


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

    implemented_properties = ["energy", "free_energy", "forces", "energies"]

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
        self.energy_index = model.targets.index("energy")
        unit = model.units[self.energy_index] or "eV"
        if unit not in ENERGY_UNITS:
            raise ValueError(f"model energy unit {unit!r} cannot be converted to eV; known: {sorted(ENERGY_UNITS)}")
        self.to_eV = ENERGY_UNITS[unit]
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

    def _graph_fn(self, backbone):
        """A replacement for ``backbone.graph`` that filters the cached ``cutoff + skin`` candidates."""
        cutoff, cap = backbone.cutoff, backbone.max_num_neighbors

        def graph(data) -> Graph:
            src, dst = self._nl_candidates
            vec = data.pos[src] - data.pos[dst]
            length = torch.linalg.vector_norm(vec, dim=-1)
            keep = length.detach() < cutoff
            edge_index = self._nl_candidates[:, keep]
            if cap is not None and edge_index.numel():
                worst = int(torch.bincount(edge_index[1]).max())
                if worst > cap:
                    raise RuntimeError(f"an atom has {worst} neighbours within {cutoff} A, more than max_num_neighbors={cap}")
            return Graph(edge_index=edge_index, vec=vec[keep], length=length[keep])

        return graph

    # ----- ASE interface --------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self.model.check(atoms, "AtomzooCalculator input")
        objective = self.model.objective
        backbone = objective.backbone
        batch = atoms_to_batch([atoms], self.model.dtype, self.model.device)
        z, pos_np = np.asarray(atoms.numbers), np.asarray(atoms.positions, dtype=np.float64)
        periodic = bool(np.asarray(atoms.pbc).any())
        if periodic:  # the backbone's own graph, periodic images included, rebuilt every call
            self._nl_key = None
            self.neighbor_list_builds += 1
        elif self._needs_rebuild(z, pos_np):
            self._nl_candidates = radius_graph(batch.pos, batch.batch, backbone.cutoff + self.skin, None)
            self._nl_key = (z.copy(), pos_np.copy())
            self.neighbor_list_builds += 1
        if not periodic:
            backbone.graph = self._graph_fn(backbone)  # instance attribute, removed below
        try:
            with torch.inference_mode(False), torch.enable_grad():
                pos = batch.pos.detach().clone().requires_grad_(True)
                batch.pos = pos
                out = backbone(batch)
                energy = objective.predict_from_features(out.scalars, batch)[:, self.energy_index].sum()
                forces = -torch.autograd.grad(energy, pos)[0]
                per_atom = self._per_atom_energies(out.scalars.detach(), batch)
        finally:
            if not periodic:
                del backbone.graph
        self.results["energy"] = float(energy.detach()) * self.to_eV
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = forces.detach().double().cpu().numpy() * self.to_eV
        if per_atom is not None:
            self.results["energies"] = per_atom * self.to_eV

    def _per_atom_energies(self, scalars: torch.Tensor, batch) -> np.ndarray | None:
        """``[N]`` per-atom energies ``ref(z_i) + mu + sigma * o_i`` (sum pooling only; else ``None``)."""
        k = self.energy_index
        objective = self.model.objective
        if not bool(objective.sum_pooled[k]):
            return None
        with torch.no_grad():
            o = objective.heads[k](scalars)[:, 0].double()
            e = objective.atomref_table[k][batch.z] + objective.mean[k] + objective.std[k] * o
        return e.cpu().numpy()

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name == "energies" and self.model.objective.sum_pooled[self.energy_index].item() is False:
            raise ValueError("per-atom energies need a sum-pooled energy head; this model averages its energy")
        return super().get_property(name, atoms, allow_calculation)


__all__ = ["ENERGY_UNITS", "AtomzooCalculator"]
