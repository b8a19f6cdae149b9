"""Radial basis expansions and smooth cutoff envelopes. Distances are in Angstrom."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cosine_cutoff(distance: Tensor, cutoff: float) -> Tensor:
    """Behler's cosine envelope ``0.5 (cos(pi d / rc) + 1)`` for ``d < rc``, else 0. Shape as input."""
    envelope = 0.5 * (torch.cos(distance * math.pi / cutoff) + 1.0)
    return envelope * (distance < cutoff).to(distance.dtype)


class GaussianRBF(nn.Module):
    """``exp(-gamma (d - mu_k)^2)`` on ``num_basis`` centres evenly spaced in ``[start, stop]``.

    ``gamma = 0.5 / spacing^2`` (SchNet's choice). Input ``[E]``, output ``[E, num_basis]``.
    """

    def __init__(self, num_basis: int = 50, start: float = 0.0, stop: float = 10.0) -> None:
        super().__init__()
        if num_basis < 2:
            raise ValueError(f"num_basis must be >= 2, got {num_basis}")
        centres = torch.linspace(start, stop, num_basis)
        self.register_buffer("centres", centres)
        self.gamma = 0.5 / float(centres[1] - centres[0]) ** 2

    def forward(self, distance: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (distance.unsqueeze(-1) - self.centres) ** 2)


class SincRBF(nn.Module):
    """``sin(k pi d / rc) / d`` for ``k = 1..num_basis`` (PaiNN / DimeNet's sinc basis).

    Input ``[E]`` (distances > 0), output ``[E, num_basis]``.
    """

    def __init__(self, num_basis: int = 20, cutoff: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.arange(1, num_basis + 1) * math.pi / cutoff)

    def forward(self, distance: Tensor) -> Tensor:
        d = distance.unsqueeze(-1)
        return torch.sin(self.frequencies * d) / d.clamp_min(1e-9)


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - log 2`` (zero at zero), SchNet's activation."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x) - math.log(2.0)
