"""Noise for self-supervision, shared by every objective: noise levels, Gaussian position noise, atom
masking, and the running moments that standardise a noise target. One validation for all.

(Damaged *datasets* for robustness studies are another thing: :mod:`atomzoo.datamodules.artifacts`.)

* :func:`check_sigma` -- the one check of a noise level option (float or list, Angstrom).
* :func:`sample_sigma` -- one noise level per molecule.
* :func:`gaussian_noise` -- ``sigma[batch] * N(0, I)``, optionally mean-centred per molecule.
* :func:`mask_atoms` -- choose atoms to mask (the backbone embeds them with its mask embedding).
* :class:`RunningMoments` -- exact running per-component mean / std, synchronised across DDP ranks.

Every sampler takes an optional ``torch.Generator`` (CPU) so that evaluation can be seeded; with
``None`` the global RNG is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

Sigma = float | list[float]


def check_sigma(sigma, name: str = "sigma", allow_zero: bool = False) -> Sigma:
    """Validate a noise level option and return it normalised (``float`` or ``list[float]``).

    Args:
        sigma: a number (Angstrom) or a non-empty list of numbers (one drawn per molecule).
        name: the option's name, used in the error message (e.g. ``"clean_sigma"``).
        allow_zero: whether 0 is a valid level (e.g. JEPA's noise when masking alone corrupts).
    Raises:
        ValueError: empty list, a non-number, a negative value, or 0 when ``allow_zero`` is False.
    """
    values = [sigma] if isinstance(sigma, (int, float)) else list(sigma) if sigma is not None else []
    try:
        values = [float(s) for s in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers (Angstrom), got {sigma!r}") from None
    bound = "non-negative" if allow_zero else "positive"
    if not values or any(s < 0 or (s == 0 and not allow_zero) for s in values):
        raise ValueError(f"{name} must be {bound} (Angstrom; a number or a non-empty list), got {sigma!r} (--model.{name})")
    return values[0] if isinstance(sigma, (int, float)) else values


def sample_sigma(sigma: Sigma, count: int, device, generator: torch.Generator | None = None) -> Tensor:
    """Per-molecule noise levels ``[count]`` (float32, Angstrom): the constant ``sigma``, or one value
    drawn uniformly from the list ``sigma`` for each molecule. ``sigma`` must have passed :func:`check_sigma`."""
    if isinstance(sigma, (int, float)):
        return torch.full((count,), float(sigma), device=device)
    values = torch.as_tensor([float(s) for s in sigma], dtype=torch.float32)
    choice = torch.randint(values.numel(), (count,), generator=generator)
    return values[choice].to(device)


def gaussian_noise(
    pos: Tensor, batch: Tensor, sigma_per_graph: Tensor, center: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Noise ``[N, 3]`` (Angstrom, dtype of ``pos``): ``sigma[batch] * N(0, I)``; ``center`` subtracts
    each molecule's mean (no rigid translation). ``batch`` ``[N]``, ``sigma_per_graph`` ``[G]``."""
    eps = torch.randn(pos.shape, generator=generator, dtype=pos.dtype) if generator is not None else torch.randn_like(pos)
    noise = eps.to(pos.device) * sigma_per_graph[batch].to(pos.dtype).unsqueeze(-1)
    if center:
        mean = scatter(noise, batch, dim=0, dim_size=sigma_per_graph.numel(), reduce="mean")
        noise = noise - mean[batch]
    return noise


def mask_atoms(num_atoms: int, ratio: float, device=None, generator: torch.Generator | None = None) -> Tensor:
    """``[num_atoms]`` bool: each atom masked independently with probability ``ratio`` (drawn on the CPU
    from ``generator`` when given, so evaluation is reproducible). The objective stores it as
    ``data.atom_mask``; backbones with ``supports_mask`` then embed masked atoms with their learned
    mask embedding (the true element stays in ``data.z`` and must not reach the output)."""
    if ratio <= 0:
        return torch.zeros(num_atoms, dtype=torch.bool, device=device)
    return (torch.rand(num_atoms, generator=generator) < ratio).to(device)


def _all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over DDP ranks (no autograd; identity when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class RunningMoments(nn.Module):
    """Exact running per-component mean / std of everything passed to :meth:`update` (float64 buffers,
    so saved in checkpoints), over ALL DDP ranks.

    ``update(x)`` with ``x`` ``[..., C]`` merges the moments of the batch into the running ones (Chan
    et al.'s pairwise merge). Under ``torch.distributed`` the batch moments are those of the union of
    every rank's batch (two all-reduces: count + sum, then the sum of squared deviations from the
    global batch mean), so every rank holds identical statistics -- the loss is standardised the same
    way everywhere. Every rank must call ``update`` the same number of times (it is a collective).

    ``mean``, ``std`` ``[C]``; ``std`` is the unbiased estimate (``init_std`` until two values were seen).
    """

    def __init__(self, channels: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(channels, dtype=torch.float64))
        self.init_std = float(init_std)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, self.mean.numel()).double()
        stats = _all_reduce_sum(torch.cat([x.new_tensor([x.size(0)]), x.sum(0)]))
        n = stats[0]
        if n == 0:
            return
        batch_mean = stats[1:] / n
        batch_m2 = _all_reduce_sum((x - batch_mean).square().sum(0))
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta.square() * self.count * n / total
        self.count.fill_(total)

    @property
    def std(self) -> Tensor:
        if self.count < 2:
            return torch.full_like(self.mean, self.init_std)
        return (self.m2 / (self.count - 1)).sqrt().clamp_min(1e-12)

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` in the dtype of ``x``."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


__all__ = ["RunningMoments", "check_sigma", "gaussian_noise", "mask_atoms", "sample_sigma"]
