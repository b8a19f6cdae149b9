"""Per-molecule conditioning of a backbone's layers: DiT-style adaptive layer norm (adaLN).

Self-conditioned denoising (SCD; Perez & Gomez-Bombarelli, arXiv 2603.17196; reference code
TyJPerez/SelfConditionedDenoisingAtoms, ``models/modules/conditioning.py``) feeds a per-molecule
embedding ``c`` into every layer of the backbone. A backbone built with ``condition_dim > 0`` holds
one :class:`LayerConditioning` as ``self.conditioning`` (declared on ``atomzoo.backbones.Backbone``,
``None`` without a condition; ``atomzoo.backbones.contract.check_conditioning`` checks the promises
below); it has two parts:

* :class:`ConditionInput` (the reference's ``DropCond``): a learned mask token ``[C]`` and a layer
  norm. ``condition=None`` means "no condition": every molecule gets the mask token, which then goes
  through the same layer norm and the same per-layer adaLN as a real condition. A conditioned
  backbone therefore has ONE network -- the clean pass of SCD, molecules whose condition was dropped
  and fine-tuning / inference (``backbone(data)``) all run it with the mask token.
* one :class:`AdaptiveLayerNorm` per layer (the reference's ``adaLN2``). For a layer with input
  scalars ``x`` ``[N, F]``::

      h = LN(x)                                    (affine layer norm)
      shift, scale, gate = MLP([c[batch], h])
      x_mod = tanh(beta * h) * (1 + scale) / beta + shift     (beta learnable, init 0.2)
      g     = tanh(alpha * gate)                              (alpha learnable, init 0.2)

  The backbone computes the layer's messages from ``x_mod`` (in place of ``x``) and adds
  ``g * u`` instead of its scalar update ``u``: ``x <- x + g * u``. Vector (L >= 1) features are
  never modulated or gated, so equivariance is untouched (``c``, ``h``, ``g`` are invariant).

  ``MLP = Linear(C + F, F) -> SiLU -> LayerNorm(F) -> Linear(F, 3F)``; its last layer is
  Xavier-uniform initialised with zero bias, as in the reference (NOT zero-initialised: a zero last
  layer makes ``scale = shift = 0`` and ``gate = 0`` for every condition, so the condition -- and
  the projection head that produces it -- gets no gradient at the start; that made our earlier SCD
  plain denoising). ``tanh(beta h)/beta`` is the reference's soft clip of the normalised input
  (``adaDyT2``); for ``|h|`` of order 1 it is close to ``h``.

Where each backbone applies it (the "normalised input" of a layer):

* SchNet: input of the interaction block (``in_proj`` of the cfconv reads ``x_mod``); the block's
  output ``u`` is gated.
* PaiNN: input scalars of the message block (``phi(x_mod)``) and of the update block
  (``x_mod + ds_message``); the block's total scalar update ``ds_message + ds_update`` is gated,
  the vector update is not.
* MACE: the ``0e`` channels of the layer's input irreps (read by the interaction's ``linear_up``
  and skip tensor product); the ``0e`` channels of the product block's output (the message part,
  without the self-connection ``sc``) are gated, ``sc`` is added ungated.
* ET: its own per-layer ``AdaLN`` on the attention's pre-norm (``atomzoo.backbones.et``), with this
  module's :class:`ConditionInput` (``condition_modules(0, ...)``: mask token and condition norm only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ConditionInput(nn.Module):
    """Mask token and layer norm of the per-molecule condition (reference: ``DropCond``).

    Args:
        condition_dim: size C of the condition.

    ``forward(condition, num_graphs)``: ``condition`` ``[G, C]`` or ``None`` (mask token for every
    molecule) -> ``LN(condition)`` ``[G, C]``. :meth:`drop` replaces chosen rows by the mask token
    (condition dropout; the objective decides which rows).
    """

    def __init__(self, condition_dim: int) -> None:
        super().__init__()
        if condition_dim <= 0:
            raise ValueError(f"condition_dim must be positive, got {condition_dim}")
        self.condition_dim = int(condition_dim)
        # reference: xavier_uniform_ on a [1, C] parameter, i.e. U(-a, a) with a = sqrt(6 / (1 + C))
        bound = math.sqrt(6.0 / (1 + self.condition_dim))
        self.mask_token = nn.Parameter(torch.empty(self.condition_dim).uniform_(-bound, bound))
        self.norm = nn.LayerNorm(self.condition_dim)

    def drop(self, condition: Tensor, drop: Tensor | None) -> Tensor:
        """``condition`` ``[G, C]`` with the rows where ``drop`` ``[G]`` (bool) is True replaced by the mask token."""
        if drop is None:
            return condition
        token = self.mask_token.to(condition.dtype).expand_as(condition)
        return torch.where(drop.to(condition.device).unsqueeze(-1), token, condition)

    def forward(self, condition: Tensor | None, num_graphs: int) -> Tensor:
        if condition is None:
            condition = self.mask_token.unsqueeze(0).expand(num_graphs, -1)
        elif condition.shape != (num_graphs, self.condition_dim):
            raise ValueError(
                f"condition must have shape [num_graphs={num_graphs}, condition_dim={self.condition_dim}], "
                f"got {tuple(condition.shape)}"
            )
        return self.norm(condition)


class SoftClipModulation(nn.Module):
    """``tanh(beta * h) * (1 + scale) / beta + shift`` with learnable ``beta`` (init 0.2; reference ``adaDyT2``).

    ``|beta|`` is clamped at 1e-5 from below. Shapes: all ``[N, F]``.
    """

    def __init__(self, beta_init: float = 0.2) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        beta = self.beta.abs().clamp_min(1e-5)
        return torch.tanh(beta * h) * (1.0 + scale) / beta + shift


class AdaptiveLayerNorm(nn.Module):
    """adaLN of one layer's scalar input and gate of its scalar update (module docstring).

    Args:
        width: scalar feature size F of the layer input.
        condition_dim: size C of the (normalised) per-molecule condition.
        hidden: hidden size of the modulation MLP (default F).
        alpha_init: initial ``alpha`` of the gate ``tanh(alpha * gate)`` and ``beta`` of the soft clip.

    ``forward(x, condition, batch)``: ``x`` ``[N, F]``, ``condition`` ``[G, C]`` (already through
    :class:`ConditionInput`), ``batch`` ``[N]`` long in ``[0, G)`` -> ``(x_mod [N, F], gate [N, F])``.
    Raises ``ValueError`` if ``x`` is not ``[N, F]``.
    """

    def __init__(self, width: int, condition_dim: int, hidden: int | None = None, alpha_init: float = 0.2) -> None:
        super().__init__()
        if width <= 0 or condition_dim <= 0:
            raise ValueError(f"width and condition_dim must be positive, got {width}, {condition_dim}")
        hidden = width if hidden is None else int(hidden)
        self.width = int(width)
        self.condition_dim = int(condition_dim)
        self.x_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(condition_dim + width, hidden), nn.SiLU(), nn.LayerNorm(hidden), nn.Linear(hidden, 3 * width)
        )
        self.modulate = SoftClipModulation(alpha_init)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        nn.init.xavier_uniform_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def modulation(self, h: Tensor, condition: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(shift, scale, gate)``, each ``[N, F]``, from ``[condition[batch], h]`` (``h = LN(x)``).

        Unlike the SCD reference code, ``h`` is not detached here: with a detached input the forces of
        a conditioned backbone (``-dE/dpos`` by autograd) would not be the exact gradient of its
        energy, which breaks force training and MD with an SCD-pretrained backbone."""
        inputs = torch.cat([condition[batch].to(h.dtype), h], dim=-1)
        shift, scale, gate = self.mlp(inputs).chunk(3, dim=-1)
        return shift, scale, gate

    def forward(self, x: Tensor, condition: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.size(-1) != self.width:
            raise ValueError(f"x must be [N, {self.width}], got {tuple(x.shape)}")
        h = self.x_norm(x)
        shift, scale, gate = self.modulation(h, condition, batch)
        return self.modulate(h, scale, shift), torch.tanh(self.alpha * gate)


class LayerConditioning(nn.Module):
    """Everything a conditioned backbone holds: :class:`ConditionInput` + one :class:`AdaptiveLayerNorm` per layer.

    Backbones store it as ``self.conditioning`` (so its weights are ``backbone.conditioning.*``: they
    travel with ``init_from`` and the safetensors export). ``prepare(condition, num_graphs)`` ->
    normalised ``[G, C]`` (mask token for ``None``); ``layers[i](x, c, batch)`` -> ``(x_mod, gate)``.
    """

    def __init__(self, num_layers: int, width: int, condition_dim: int) -> None:
        super().__init__()
        self.input = ConditionInput(condition_dim)
        self.layers = nn.ModuleList(AdaptiveLayerNorm(width, condition_dim) for _ in range(num_layers))

    @property
    def mask_token(self) -> nn.Parameter:
        return self.input.mask_token

    def drop(self, condition: Tensor, drop: Tensor | None) -> Tensor:
        """Condition dropout: see :meth:`ConditionInput.drop`."""
        return self.input.drop(condition, drop)

    def prepare(self, condition: Tensor | None, num_graphs: int) -> Tensor:
        return self.input(condition, num_graphs)

    def __getitem__(self, i: int) -> AdaptiveLayerNorm:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)


def condition_modules(num_layers: int, width: int, condition_dim: int) -> LayerConditioning | None:
    """A :class:`LayerConditioning` for ``num_layers`` layers of scalar width ``width``, or ``None``
    when ``condition_dim == 0`` (the backbone then has exactly the parameters of the plain network).
    Raises ``ValueError`` for ``condition_dim < 0``."""
    if condition_dim < 0:
        raise ValueError(f"condition_dim must be >= 0, got {condition_dim}")
    if condition_dim == 0:
        return None
    return LayerConditioning(num_layers, width, condition_dim)


__all__ = ["AdaptiveLayerNorm", "ConditionInput", "LayerConditioning", "SoftClipModulation", "condition_modules"]
