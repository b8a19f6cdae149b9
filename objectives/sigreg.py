"""SIGReg: the Sketched Isotropic Gaussian Regulariser (LeJEPA, arXiv 2511.08544), as in methods.md.

For embeddings ``Z`` ``[N, D]`` (one row per molecule) draw ``M`` random unit directions ``a_m``
(columns of a ``[D, M]`` Gaussian matrix, normalised), project ``h_m = Z a_m`` and compare each
1-D slice with N(0, 1) by the Epps-Pulley statistic

    T_m = N * int |phi_hat_m(t) - exp(-t^2/2)|^2 w(t) dt,      w(t) = exp(-t^2/2),
    |phi_hat_m(t) - exp(-t^2/2)|^2 = (mean_n cos(t h_mn) - exp(-t^2/2))^2 + (mean_n sin(t h_mn))^2.

The integrand is even in t: the integral over the real line is twice the integral over [0, 3],
done with the trapezoid rule on 17 knots. SIGReg = mean_m T_m (dimensionless).

Scale: for N samples of exactly N(0, I) the expected value is
``int (1 - exp(-t^2)) exp(-t^2/2) dt = sqrt(2 pi) (1 - 1/sqrt 3) ~= 1.06`` (finite-sample noise,
independent of N), while any fixed departure from N(0, I) grows like N: a collapsed batch of 4096
gives thousands.

Directions are drawn from a generator seeded with ``step`` (pass the global step), so they are
fresh every step and identical on every DDP rank. Everything is computed in float32 with autocast
off (bf16 gave NaNs / spikes in the paper's experience).

Distributed (``torch.distributed`` initialised, world size W > 1): each rank sums cos / sin over its
own rows and the sums (``[M, K]`` each) and the row count are all-reduced with the autograd-aware
``torch.distributed.nn.functional.all_reduce``, so the statistic is that of the *global* batch
(N = global batch size) and identical on every rank. Gradient convention: the backward of that
all-reduce sums the (identical) upstream gradients of the W ranks, so the gradient on a rank's own
rows is W times the single-process gradient of the global statistic; DDP then *averages* parameter
gradients over ranks, which gives exactly the single-process gradient. (A plain, non-autograd
``torch.distributed.all_reduce`` would instead give 1/W of it -- the bug methods.md warns about.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _reduce_sum(t: Tensor) -> Tensor:
    """Sum over DDP ranks with autograd support (identity when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def random_directions(dim: int, num_slices: int, step: int, device=None) -> Tensor:
    """``[dim, num_slices]`` float32 unit columns, deterministic in ``step`` (same on every rank)."""
    generator = torch.Generator(device="cpu").manual_seed(int(step) * 1_000_003 + 12345)
    a = torch.randn(dim, num_slices, generator=generator, dtype=torch.float32)
    return (a / a.norm(dim=0, keepdim=True)).to(device)


def sigreg(z: Tensor, num_slices: int = 1024, step: int = 0, num_knots: int = 17, t_max: float = 3.0) -> Tensor:
    """SIGReg of embeddings ``z`` ``[N, D]`` (scalar, float32); see the module docstring."""
    if z.dim() != 2:
        raise ValueError(f"SIGReg needs embeddings of shape [N, D], got {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        directions = random_directions(z.size(1), num_slices, step, z.device)  # [D, M]
        t = torch.linspace(0.0, t_max, num_knots, device=z.device, dtype=torch.float32)  # [K]
        dt = t_max / (num_knots - 1)
        weights = torch.full_like(t, 2.0 * dt)  # trapezoid on [0, t_max], doubled (even integrand)
        weights[0] = weights[-1] = dt
        gauss = torch.exp(-0.5 * t.square())  # characteristic function of N(0,1), also w(t)
        h = z @ directions  # [N, M]
        th = h.unsqueeze(-1) * t  # [N, M, K]
        cos_sum = _reduce_sum(torch.cos(th).sum(0))  # [M, K]
        sin_sum = _reduce_sum(torch.sin(th).sum(0))
        n = _reduce_sum(torch.tensor(float(z.size(0)), device=z.device))
        cos_mean, sin_mean = cos_sum / n, sin_sum / n
        error = (cos_mean - gauss).square() + sin_mean.square()  # [M, K]
        statistic = n * (error * gauss * weights).sum(-1)  # [M]
        return statistic.mean()


class SIGReg(nn.Module):
    """Module form of :func:`sigreg`: ``SIGReg(num_slices)(z, step)`` -> scalar."""

    def __init__(self, num_slices: int = 1024, num_knots: int = 17, t_max: float = 3.0) -> None:
        super().__init__()
        self.num_slices, self.num_knots, self.t_max = int(num_slices), int(num_knots), float(t_max)

    def forward(self, z: Tensor, step: int = 0) -> Tensor:
        return sigreg(z, self.num_slices, step, self.num_knots, self.t_max)


__all__ = ["SIGReg", "random_directions", "sigreg"]
