"""Drop-path (stochastic depth) on per-atom residual updates, as the SCD code applies it.

Huang et al., "Deep Networks with Stochastic Depth" (arXiv 1603.09382) drop whole residual
branches at random during training. SCD (Perez & Gomez-Bombarelli, arXiv 2603.17196; code
TyJPerez/SelfConditionedDenoisingAtoms, ``JointDropPath``) applies it inside every message-passing
layer, *per atom*: each atom's scalar update (and, jointly, its vector update) of a layer is
zeroed with probability ``p`` and the survivors are scaled by ``1 / (1 - p)``, so the expectation is
unchanged. Off in evaluation mode and at ``p = 0`` (then the input is returned as is).

Hook for backbones: hold one ``self.drop_path = DropPath()`` and pass each layer's residual update
through it before adding it, ``x = x + self.drop_path(dx)`` or ``s, v = s + ds, v + dv`` with
``ds, dv = self.drop_path(ds, dv)``. A backbone holding one declares the capability
(``Backbone.supports_drop_path``); the rate is set from outside, by an objective, with
``Backbone.set_drop_path`` (:func:`set_drop_path` on every :class:`DropPath` inside; scheduled with
:func:`drop_path_rate`). It is not a parameter and not saved in the state dict, so adding the hook
changes no checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DropPath(nn.Module):
    """Per-atom stochastic depth of a residual update (scalars and optional vectors jointly).

    Args:
        p: drop probability in ``[0, 1)``.

    Shapes: ``x`` ``[N, F]`` (first dim = atoms), optional ``v`` ``[N, 3, Fv]``; returns ``x`` or
    ``(x, v)`` with the same atoms dropped in both.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = check_rate(p)

    def forward(self, x: Tensor, v: Tensor | None = None):
        if self.p == 0.0 or not self.training:
            return x if v is None else (x, v)
        keep = 1.0 - self.p
        mask = torch.floor(keep + torch.rand((x.size(0),) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device))
        x = x / keep * mask
        if v is None:
            return x
        return x, v / keep * mask.view(-1, *([1] * (v.dim() - 1))).to(v.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def check_rate(p: float) -> float:
    """``float(p)`` if ``0 <= p < 1``; else ``ValueError`` naming ``--model.drop_path``."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop-path rate {p} must be in [0, 1) (--model.drop_path)")
    return p


def drop_path_modules(module: nn.Module) -> list[DropPath]:
    """Every :class:`DropPath` inside ``module`` (empty if the backbone has no drop-path hook)."""
    return [m for m in module.modules() if isinstance(m, DropPath)]


def set_drop_path(module: nn.Module, p: float) -> int:
    """Set the rate of every :class:`DropPath` in ``module``; returns how many there are."""
    p = check_rate(p)
    found = drop_path_modules(module)
    for m in found:
        m.p = p
    return len(found)


def drop_path_rate(step: int, start: float, end: float, steps: int) -> float:
    """SCD's fine-tuning schedule: linear from ``start`` at step 0 to ``end`` at ``steps``, then ``end``.

    (SCD: 0.15 -> 0.1 over the learning-rate warmup + 2000 optimizer steps.)
    """
    if steps <= 0 or step >= steps:
        return float(end)
    return float(start) + (float(end) - float(start)) * step / steps


__all__ = ["DropPath", "check_rate", "drop_path_modules", "drop_path_rate", "set_drop_path"]
