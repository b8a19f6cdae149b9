"""Adaptive layer normalisation (DiT-style adaLN) for conditioning a backbone's scalar stream.

Self-conditioned denoising (SCD, see ``shared/reference/methods.md``) feeds a per-molecule embedding
``c`` into every layer of the backbone. :class:`AdaptiveScalarNorm` is the one module every
backbone in the zoo uses for that. It acts on a layer's *scalar update* only; vector (L>=1)
features are never modulated, so equivariance is untouched (everything here is rotation invariant).

Formulation. For a layer with input scalars ``x`` ``[N, F]`` and scalar update ``u`` ``[N, F]``
(the unconditioned layer computes ``x + u``), a per-atom MLP of ``[c[batch], LN(x).detach()]``
returns ``shift, scale, gate`` (each ``[N, F]``) and the conditioned layer computes::

    x + u + tanh(alpha * gate) * (LN(u) * (1 + scale) + shift)

with ``alpha`` a learnable scalar (init 0.2) and ``LN`` a layer norm without affine parameters.
The final linear layer of the MLP is zero-initialised, so ``shift = scale = gate = 0`` at init and
the conditioned layer computes exactly ``x + u``.

Why this and not the literal DiT form ``x + tanh(alpha*gate) * f(LN(x)*(1+scale)+shift)``:

* The zoo promises that an untrained condition changes nothing and that a backbone with a
  condition module behaves like the plain network. The DiT/adaLN-Zero gate starts at 0 and so
  *switches the layer off* at init; applied to a pretrained or shared-weight backbone it would
  destroy it. Here the gate multiplies an *additional*, modulated copy of the update, so gate 0
  means "plain layer".
* The modulation is applied to the layer's output (``LN(u)*(1+scale)+shift``) instead of its input,
  so it can be bolted onto any backbone without rewriting the inside of its layers (SchNet's
  cfconv, PaiNN's message/update pair, mace-torch's interaction + product blocks, whose input is an
  irreps tensor). The ingredients of methods.md are all kept: an MLP of ``[c, LN(x).detach()]``,
  shift / scale around a layer norm, a ``tanh(alpha * gate)`` gate on the layer's scalar update
  with ``alpha`` learnable, init 0.2.
* At init only the gate receives gradient (``d/dgate = alpha * LN(u)``); once it moves, scale and
  shift do too -- the same warm-up behaviour as adaLN-Zero.

With ``condition=None`` backbones skip this module entirely (bitwise identical to the
unconditioned network); the module itself also returns ``u`` unchanged for ``None``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdaptiveScalarNorm(nn.Module):
    """Condition-dependent modulation of one layer's scalar update (see module docstring).

    Args:
        width: scalar feature size F (of both the layer input ``x`` and the update ``u``).
        condition_dim: size C of the per-molecule condition.
        hidden: hidden size of the modulation MLP (default F).
        alpha_init: initial value of the learnable gate temperature ``alpha``.
        eps: layer-norm epsilon.

    Shapes: ``x``, ``update`` ``[N, F]``; ``condition`` ``[G, C]``; ``batch`` ``[N]`` long in
    ``[0, G)``; output ``[N, F]`` (the modulated update; the caller adds the residual ``x``).
    """

    def __init__(
        self,
        width: int,
        condition_dim: int,
        hidden: int | None = None,
        alpha_init: float = 0.2,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if width <= 0 or condition_dim <= 0:
            raise ValueError(f"width and condition_dim must be positive, got {width}, {condition_dim}")
        hidden = width if hidden is None else int(hidden)
        self.width = int(width)
        self.condition_dim = int(condition_dim)
        self.eps = float(eps)
        self.mlp = nn.Sequential(nn.Linear(condition_dim + width, hidden), nn.SiLU(), nn.Linear(hidden, 3 * width))
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.reset_modulation()

    def reset_modulation(self) -> None:
        """Zero the final projection: the module becomes the identity on the update."""
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def _norm(self, t: Tensor) -> Tensor:
        return nn.functional.layer_norm(t, (self.width,), eps=self.eps)

    def modulation(self, x: Tensor, condition: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(shift, scale, gate)``, each ``[N, F]``, from ``[condition[batch], LN(x).detach()]``."""
        inputs = torch.cat([condition[batch].to(x.dtype), self._norm(x).detach()], dim=-1)
        shift, scale, gate = self.mlp(inputs).chunk(3, dim=-1)
        return shift, scale, gate

    def forward(self, x: Tensor, update: Tensor, condition: Tensor | None, batch: Tensor) -> Tensor:
        """The modulated scalar update ``u + tanh(alpha*gate) * (LN(u)*(1+scale)+shift)``."""
        if condition is None:
            return update
        if x.shape != update.shape or x.size(-1) != self.width:
            raise ValueError(
                f"x and update must both be [N, {self.width}], got {tuple(x.shape)} and {tuple(update.shape)}"
            )
        shift, scale, gate = self.modulation(x, condition, batch)
        return update + torch.tanh(self.alpha * gate) * (self._norm(update) * (1.0 + scale) + shift)


def condition_modules(num_layers: int, width: int, condition_dim: int) -> nn.ModuleList | None:
    """One :class:`AdaptiveScalarNorm` per layer, or ``None`` when ``condition_dim == 0``.

    Backbones store the result as ``self.conditioning``; with ``None`` the backbone has exactly the
    parameters of the unconditioned network.
    """
    if condition_dim < 0:
        raise ValueError(f"condition_dim must be >= 0, got {condition_dim}")
    if condition_dim == 0:
        return None
    return nn.ModuleList(AdaptiveScalarNorm(width, condition_dim) for _ in range(num_layers))


__all__ = ["AdaptiveScalarNorm", "condition_modules"]
