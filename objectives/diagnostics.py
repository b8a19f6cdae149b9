"""Collapse diagnostics for self-supervised objectives.

Two cheap numbers of a batch of pooled embeddings ``Z`` ``[G, D]`` (one row per molecule):

* ``emb_std``: the standard deviation of each embedding dimension over the batch, averaged over
  dimensions (in the embedding's units). Near 0 means complete collapse (every molecule maps to the
  same point).
* ``emb_erank``: the effective rank ``exp(H(p))`` with ``p_k = s_k / sum s`` the normalised singular
  values of the centred ``Z`` and ``H`` the Shannon entropy (Roy & Vetterli 2007). Between 1 (all
  variance along one direction: dimensional collapse) and ``min(G, D)``.

:func:`log_collapse_diagnostics` logs them as ``train/emb_std`` and ``train/emb_erank`` every
``every_n_steps`` optimizer steps (an SVD of a ``[G, D]`` matrix: negligible at that rate).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def collapse_statistics(z: Tensor) -> dict[str, Tensor]:
    """``{"emb_std": scalar, "emb_erank": scalar}`` of embeddings ``z`` ``[G, D]`` (float32, detached)."""
    z = z.detach().float()
    if z.size(0) < 2:
        return {"emb_std": z.new_zeros(()), "emb_erank": z.new_ones(())}
    std = z.std(dim=0).mean()
    centred = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    total = s.sum()
    if total <= 0:
        return {"emb_std": std, "emb_erank": z.new_ones(())}
    p = s / total
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"emb_std": std, "emb_erank": torch.exp(entropy)}


def log_collapse_diagnostics(module, z: Tensor, every_n_steps: int, prefix: str = "train/") -> None:
    """Log ``{prefix}emb_std`` and ``{prefix}emb_erank`` of ``z`` from a LightningModule's training step
    when ``global_step % every_n_steps == 0`` (``every_n_steps <= 0`` disables)."""
    if every_n_steps <= 0 or module.global_step % every_n_steps != 0:
        return
    stats = collapse_statistics(z)
    for name, value in stats.items():
        module.log(f"{prefix}{name}", value, batch_size=z.size(0))


__all__ = ["collapse_statistics", "log_collapse_diagnostics"]
