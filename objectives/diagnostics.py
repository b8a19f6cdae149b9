"""Collapse diagnostics for self-supervised objectives.

Three numbers of a batch of molecule embeddings ``Z`` ``[G, D]`` -- the encoder output the loss
sees, taken BEFORE any normalisation that would hide its scale (a layer / batch norm after it would
pin every dimension's spread and blind the diagnostics):

* ``emb_std``: the standard deviation of each dimension over the batch, averaged over dimensions
  (in the embedding's units). Near 0: complete collapse (every molecule maps to the same point).
* ``emb_erank``: the effective rank ``exp(H(p))`` with ``p_k = s_k / sum s`` the normalised singular
  values of the centred ``Z`` and ``H`` the Shannon entropy (Roy & Vetterli 2007). Between 1 (all
  variance along one direction: dimensional collapse) and ``min(G, D)``.
* ``emb_sigreg``: the SIGReg statistic of ``Z`` (:func:`atomzoo.objectives.sigreg.sigreg`, 256 fixed
  directions): the Epps-Pulley distance of its 1-D projections from N(0, 1), times ``G``. About 1
  for isotropic unit Gaussian embeddings; a collapsed batch (every slice a point mass) gives at
  least about ``0.4 * G``, so it flags collapse -- and also any drift away from unit scale.

:func:`log_collapse_diagnostics` logs them as ``train/emb_std``, ``train/emb_erank`` and
``train/emb_sigreg`` every ``every_n_steps`` optimizer steps (an SVD of a ``[G, D]`` matrix and a
``[G, 256, 17]`` cosine: negligible at that rate). Every self-supervised objective logs them:
Denoising on the mean-pooled backbone scalars, SCD on the molecular embedding ``c`` (before the
condition's layer norm), JEPA on the context embedding (before the target normalisation).

:func:`collapse_flags` turns the statistics into booleans with documented thresholds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .sigreg import sigreg

#: Directions of the diagnostic SIGReg statistic (fixed seed: comparable across steps).
DIAGNOSTIC_SLICES = 256


@torch.no_grad()
def collapse_statistics(z: Tensor) -> dict[str, Tensor]:
    """``{"emb_std", "emb_erank", "emb_sigreg"}`` (float32 scalars, detached) of ``z`` ``[G, D]``.

    A spread at rounding level (largest singular value below ``1e-4 * sqrt(G) * mean|z|``) counts
    as a single point (``emb_erank`` 1). With fewer than 2 rows: ``emb_std`` 0, ``emb_erank`` 1, ``emb_sigreg`` 0 (nothing to measure).
    Raises ``ValueError`` if ``z`` is not 2-D.
    """
    if z.dim() != 2:
        raise ValueError(f"collapse statistics need embeddings [G, D], got {tuple(z.shape)}")
    z = z.detach().float()
    if z.size(0) < 2:
        return {"emb_std": z.new_zeros(()), "emb_erank": z.new_ones(()), "emb_sigreg": z.new_zeros(())}
    std = z.std(dim=0).mean()
    centred = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    total = s.sum()
    # spread at rounding level relative to the embedding's magnitude: one point, rank 1 (the
    # singular values of rounding noise would otherwise look "isotropic")
    if float(s.max()) <= 1e-4 * math.sqrt(z.size(0)) * max(float(z.abs().mean()), 1e-12):
        erank = z.new_ones(())
    else:
        p = s / total
        erank = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
    return {"emb_std": std, "emb_erank": erank, "emb_sigreg": sigreg(z, DIAGNOSTIC_SLICES, step=0)}


def collapse_flags(stats: dict[str, Tensor], num_rows: int, std_floor: float = 1e-4,
                   erank_floor: float = 1.5, sigreg_fraction: float = 0.25) -> dict[str, bool]:
    """Which diagnostics call a batch collapsed: ``emb_std < std_floor``, ``emb_erank < erank_floor``,
    ``emb_sigreg > sigreg_fraction * num_rows`` (a point mass scores at least about ``0.4 * num_rows``)."""
    return {
        "emb_std": float(stats["emb_std"]) < std_floor,
        "emb_erank": float(stats["emb_erank"]) < erank_floor,
        "emb_sigreg": float(stats["emb_sigreg"]) > sigreg_fraction * num_rows,
    }


def log_collapse_diagnostics(module, z: Tensor, every_n_steps: int, prefix: str = "train/") -> None:
    """Log ``{prefix}emb_std``, ``{prefix}emb_erank`` and ``{prefix}emb_sigreg`` of ``z`` from a
    LightningModule's training step when ``global_step % every_n_steps == 0`` (``<= 0`` disables)."""
    if every_n_steps <= 0 or module.global_step % every_n_steps != 0:
        return
    for name, value in collapse_statistics(z).items():
        module.log(f"{prefix}{name}", value, batch_size=z.size(0))


__all__ = ["collapse_flags", "collapse_statistics", "log_collapse_diagnostics"]
