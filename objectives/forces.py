"""Forces and stress as derivatives of a predicted energy, by autograd (the nequip / MACE pattern).

One pure function, :func:`energy_forces_stress`, used by every objective that needs forces or stress
(Regression's training pass and its one prediction path, ``Regression.predict_properties``, which
``zoo predict``, ``atomzoo.load(...).predict`` and the ASE calculator read): it takes a callable that
maps a batch to energies, and returns the energies together with ``F = -dE/dpos`` and, when asked,
the stress ``sigma = (1/V) dE/d(strain)``. Conservative by construction: forces and stress are exact
derivatives of the returned energy. :func:`energy_and_forces` is the same call without stress.

Stress (the symmetric displacement-gradient route of MACE and nequip; ASE's definition and sign,
``ase.calculators.calculator.Calculator.calculate_numerical_stress``): every structure ``g`` gets a
strain ``eps_g`` ``[3, 3]`` (zero, requiring grad), symmetrised ``s = (eps + eps^T) / 2``; positions
and lattice vectors (rows) become ``pos @ (I + s)`` and ``cell @ (I + s)``, so the periodic images'
edge vectors ``pos[src] + shift @ cell - pos[dst]`` (:func:`atomzoo.nn.graph.build_graph`) are strained
too, and ``sigma_g = (1/V_g) dE_g/d eps_g`` at ``eps = 0`` with ``V_g = |det cell_g|``. Units: energy
unit per cubic Angstrom (eV/A^3 for eV energies); positive components mean the structure pulls
inwards (tensile stress: it would lower its energy by shrinking), as in ASE. Only fully periodic
structures (``pbc`` all true, non-zero volume) have a stress; every other structure of a batch
(molecules, slabs, wires) gets NaN rows and is masked out of losses and metrics
(:func:`has_stress`).

Works in every context Lightning runs a model in:

* training (``training=True``): the gradient is taken with ``create_graph=True``, so a loss on the
  forces back-propagates to the weights (second derivatives);
* evaluation (``training=False``): under ``torch.no_grad()`` *and* under
  ``torch.inference_mode()`` (Lightning's default for validation / test / predict) -- gradients are
  enabled locally and the batch is cloned out of inference mode (tensors created in inference mode
  cannot take part in autograd); both outputs are detached.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from atomzoo.nn.batch import with_positions


def has_stress(data) -> Tensor:
    """``[G]`` bool: the structures of ``data`` that have a stress -- fully periodic (``pbc`` all true)
    with a cell of non-zero volume. All false for a batch without ``pbc`` / ``cell`` (molecules)."""
    from atomzoo.nn.batch import num_graphs

    pbc, cell = getattr(data, "pbc", None), getattr(data, "cell", None)
    if pbc is None or cell is None:
        return torch.zeros(num_graphs(data), dtype=torch.bool, device=data.pos.device)
    volume = torch.linalg.det(cell.detach().reshape(-1, 3, 3).double()).abs()
    return pbc.reshape(-1, 3).bool().all(dim=1) & (volume > 1e-6)


def _strained(data, pos: Tensor, strain: Tensor):
    """A shallow copy of ``data`` with ``pos`` and ``cell`` multiplied by ``I + s``, ``s`` the symmetric
    part of ``strain`` ``[G, 3, 3]`` (one per structure)."""
    sym = 0.5 * (strain + strain.transpose(1, 2))
    out = with_positions(data, pos + torch.einsum("ni,nij->nj", pos, sym[data.batch]))
    cell = getattr(data, "cell", None)
    if cell is not None:
        cell = cell.reshape(-1, 3, 3).to(pos.dtype)
        out.cell = cell + torch.bmm(cell, sym)
    return out


def energy_forces_stress(
    energy_fn: Callable[[object], Tensor],
    data,
    training: bool,
    energy_index: int | None = None,
    stress: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Energies of ``data``, the forces ``F = -dE/dpos`` and (``stress=True``) the stress ``(1/V) dE/d(strain)``.

    Args:
        energy_fn, data, training, energy_index: as in :func:`energy_and_forces`; for the stress
            ``energy_fn`` must also read the lattice vectors from ``data.cell`` (the built-in
            backbones do, through :func:`atomzoo.nn.graph.build_graph`).
        stress: also the stress tensor (module docstring).

    Returns:
        ``(pred, forces, stress)``: ``pred`` and ``forces`` as :func:`energy_and_forces`; ``stress``
        ``[G, 3, 3]`` (energy unit per A^3, e.g. eV/A^3; ASE's sign; dtype of ``pos``), NaN for the
        structures without one (not fully periodic, :func:`has_stress`), or ``None`` when
        ``stress=False``.

    Raises:
        ValueError: ``energy_index`` does not match the shape ``energy_fn`` returns.
        RuntimeError: the energy does not depend on the positions (``energy_fn`` detached them).
    """
    select = _energy_selector(energy_index)

    def derivatives(source, create_graph: bool):
        pos = source.pos
        if not stress:
            pred = energy_fn(with_positions(source, pos))
            (grad,) = torch.autograd.grad(select(pred).sum(), pos, create_graph=create_graph)
            return pred, -grad, None
        from atomzoo.nn.batch import num_graphs

        strain = torch.zeros(num_graphs(source), 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
        pred = energy_fn(_strained(source, pos, strain))
        grad, virial = torch.autograd.grad(select(pred).sum(), (pos, strain), create_graph=create_graph)
        mask = has_stress(source)
        volume = torch.ones(mask.numel(), dtype=pos.dtype, device=pos.device)
        if bool(mask.any()):
            volume = torch.where(mask, torch.linalg.det(source.cell.reshape(-1, 3, 3).to(pos.dtype)).abs(), volume)
        sigma = virial / volume[:, None, None]
        sigma = torch.where(mask[:, None, None], sigma, torch.full_like(sigma, float("nan")))
        return pred, -grad, sigma

    if training:
        pos = data.pos if data.pos.requires_grad else data.pos.clone().requires_grad_(True)
        return derivatives(with_positions(data, pos), create_graph=True)
    with torch.inference_mode(False), torch.enable_grad():
        data = data.clone()  # tensors made under inference mode cannot take part in autograd
        data.pos = data.pos.detach().requires_grad_(True)
        pred, forces, sigma = derivatives(data, create_graph=False)
    return pred.detach(), forces.detach(), None if sigma is None else sigma.detach()


def _energy_selector(energy_index: int | None) -> Callable[[Tensor], Tensor]:
    """The energy column of ``energy_fn``'s output (``ValueError`` when ``energy_index`` does not fit)."""

    def select(pred: Tensor) -> Tensor:
        if energy_index is None:
            if pred.dim() != 1:
                raise ValueError(
                    f"energy_fn returned shape {tuple(pred.shape)}: pass energy_index to pick the energy column"
                )
            return pred
        if pred.dim() != 2 or not -pred.size(1) <= energy_index < pred.size(1):
            raise ValueError(f"energy_index={energy_index} does not fit predictions of shape {tuple(pred.shape)}")
        return pred[:, energy_index]

    return select


def energy_and_forces(
    energy_fn: Callable[[object], Tensor], data, training: bool, energy_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """Energies of ``data`` and the forces ``F = -dE/dpos`` on its atoms.

    Args:
        energy_fn: maps a PyG batch to predictions, ``[G]`` (one energy per molecule) or
            ``[G, T]`` (several targets; ``energy_index`` picks the energy column). It must read the
            positions from ``data.pos`` (it receives a shallow copy of ``data`` whose ``pos``
            requires grad) and must not detach them.
        data: PyG ``Batch``/``Data`` with ``pos`` ``[N, 3]`` in Angstrom (plus whatever ``energy_fn``
            reads: ``z``, ``batch``, ...).
        training: ``True`` keeps the autograd graph (``create_graph=True``) so that a loss on the
            forces trains the weights; ``False`` detaches both outputs and works inside
            ``torch.no_grad()`` / ``torch.inference_mode()``.
        energy_index: column of the energy when ``energy_fn`` returns ``[G, T]``; ``None`` when it
            returns ``[G]``.

    Returns:
        ``(pred, forces)``: ``pred`` exactly as ``energy_fn`` returned it (``[G]`` or ``[G, T]``,
        energy unit ``U``, e.g. eV), ``forces`` ``[N, 3]`` in ``U`` per Angstrom (e.g. eV/A), same
        dtype as ``data.pos``. Sign convention: ``F = -dE/dpos`` (forces point downhill).

    Raises:
        ValueError: ``energy_index`` does not match the shape ``energy_fn`` returns.
        RuntimeError: the energy does not depend on the positions (``energy_fn`` detached them).
    """
    pred, forces, _ = energy_forces_stress(energy_fn, data, training, energy_index, stress=False)
    return pred, forces


__all__ = ["energy_and_forces", "energy_forces_stress", "has_stress"]
