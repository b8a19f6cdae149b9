"""Forces as the negative gradient of a predicted energy, by autograd (the nequip / MACE pattern).

One pure function, :func:`energy_and_forces`, used by every objective that needs forces (Regression's
training pass and its one prediction path, ``Regression.predict_properties``, which ``zoo predict``,
``atomzoo.load(...).predict`` and the ASE calculator read): it takes a callable that maps a batch to
energies, and returns the energies together with ``F = -dE/dpos``. Conservative by construction: the forces are
exactly minus the gradient of the returned energy.

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

    if training:
        pos = data.pos if data.pos.requires_grad else data.pos.clone().requires_grad_(True)
        pred = energy_fn(with_positions(data, pos))
        grad = torch.autograd.grad(select(pred).sum(), pos, create_graph=True)[0]
        return pred, -grad
    with torch.inference_mode(False), torch.enable_grad():
        data = data.clone()  # tensors made under inference mode cannot take part in autograd
        pos = data.pos.detach().requires_grad_(True)
        pred = energy_fn(with_positions(data, pos))
        grad = torch.autograd.grad(select(pred).sum(), pos)[0]
    return pred.detach(), -grad.detach()


__all__ = ["energy_and_forces"]
