"""Coordinate denoising pretraining (Zaidi et al., ICLR 2023, arXiv 2206.00133; methods.md).

Every atom position is corrupted with isotropic Gaussian noise, ``pos~ = pos + sigma * eps`` with
``eps ~ N(0, I)`` per atom and component; the backbone sees ``pos~`` and an equivariant per-atom
vector head (:class:`~atomzoo.objectives.heads.NoiseHead`: the backbone's vector features when it has them,
otherwise the edge-direction head) predicts the noise.

Target standardisation (choice documented here): the target is the noise divided by the sigma of
its molecule, ``eps = (pos~ - pos) / sigma`` -- dimensionless, mean 0 and variance exactly 1 per
component for every sigma. methods.md standardises by a running std; with a known sigma the exact
per-molecule std is available, which also makes a *list* of sigmas (one drawn per molecule) weigh
equally. Loss = MSE between prediction and ``eps`` (mean over atoms and components); a model that
predicts 0 scores 1.0 (``(n-1)/n`` with ``center_noise``).

Validation noise is drawn from a generator seeded by the batch index, so ``val/loss`` is comparable
across epochs.

The pieces are reusable: :func:`sample_sigma`, :func:`gaussian_noise` and :class:`AuxDenoising`
(the auxiliary "noisy nodes" loss that :class:`~atomzoo.objectives.regression.Regression` adds during
fine-tuning with ``aux_denoising_weight > 0``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomzoo.backbones.base import Backbone, num_graphs, with_positions

from .base import Objective
from .diagnostics import log_collapse_diagnostics
from .heads import NoiseHead


def sample_sigma(sigma: float | list[float], count: int, device, generator: torch.Generator | None = None) -> Tensor:
    """Per-molecule noise levels ``[count]`` in Angstrom: the constant ``sigma``, or one value drawn
    uniformly from the list ``sigma`` for each molecule."""
    if isinstance(sigma, (int, float)):
        return torch.full((count,), float(sigma), device=device)
    values = torch.as_tensor([float(s) for s in sigma], dtype=torch.float32)
    if values.numel() == 0 or bool((values <= 0).any()):
        raise ValueError(f"sigma list must hold positive values, got {list(sigma)}")
    choice = torch.randint(values.numel(), (count,), generator=generator)
    return values[choice].to(device)


def gaussian_noise(
    pos: Tensor, batch: Tensor, sigma_per_graph: Tensor, center: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Noise ``[N, 3]`` (Angstrom): ``sigma[batch] * N(0, I)``; ``center`` subtracts each molecule's mean."""
    eps = torch.randn(pos.shape, generator=generator, dtype=pos.dtype) if generator is not None else torch.randn_like(pos)
    noise = eps.to(pos.device) * sigma_per_graph[batch].to(pos.dtype).unsqueeze(-1)
    if center:
        mean = scatter(noise, batch, dim=0, dim_size=sigma_per_graph.numel(), reduce="mean")
        noise = noise - mean[batch]
    return noise


def _check_sigma(sigma) -> None:
    values = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
    if not values or any(float(s) <= 0 for s in values):
        raise ValueError(f"sigma must be positive (Angstrom), got {sigma}")


class AuxDenoising(nn.Module):
    """Auxiliary denoising loss for fine-tuning ("noisy nodes"; methods.md: sigma 0.005 A, weight 0.1).

    Holds only the :class:`NoiseHead`; the backbone is passed in. ``loss(backbone, data)`` runs one
    extra backbone pass on ``data`` with positions corrupted by ``sigma`` and returns the MSE between
    the head's prediction and the noise / sigma (dimensionless scalar).
    """

    def __init__(self, backbone: Backbone, sigma: float = 0.005, head: str = "auto") -> None:
        super().__init__()
        _check_sigma(sigma)
        self.sigma = float(sigma)
        self.head = NoiseHead(backbone, head)

    def loss(self, backbone: Backbone, data) -> Tensor:
        g = num_graphs(data)
        sig = sample_sigma(self.sigma, g, data.pos.device)
        noise = gaussian_noise(data.pos, data.batch, sig)
        out = backbone(with_positions(data, data.pos + noise))
        pred = self.head(out.scalars, out.vectors, out.graph)
        return (pred - noise / self.sigma).pow(2).mean()


class Denoising(Objective):
    """Coordinate denoising on any backbone (module docstring for the details).

    Args:
        backbone: any backbone.
        sigma: noise level in Angstrom (default 0.04, methods.md), or a list: one value drawn per
            molecule each step.
        center_noise: subtract each molecule's mean noise (no rigid translation in the corruption).
        head: noise head, ``"auto"`` (vector features if the backbone has them, else edges),
            ``"vector"`` or ``"edge"``.
        head_hidden: hidden size of the head (default the backbone width).
        diagnostics_every_n_steps: log ``train/emb_std`` / ``train/emb_erank`` of the mean-pooled
            backbone scalars every this many steps (0: never).
        Other arguments: see :class:`~atomzoo.objectives.base.Objective` (optimizer, schedule, EMA,
        ``init_from``, ``freeze_backbone``).

    Logs ``train/loss``, ``val/loss`` (dimensionless MSE to the standardised noise).
    """

    def __init__(
        self,
        backbone: Backbone,
        sigma: float | list[float] = 0.04,
        center_noise: bool = False,
        head: str = "auto",
        head_hidden: int | None = None,
        diagnostics_every_n_steps: int = 50,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters()
        _check_sigma(sigma)
        self.sigma = sigma if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
        self.center_noise = center_noise
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.head = NoiseHead(backbone, head, head_hidden)

    def forward(self, data) -> Tensor:
        """Predicted standardised noise ``[N, 3]`` for (already noisy) positions ``data.pos``."""
        out = self.backbone(data)
        return self.head(out.scalars, out.vectors, out.graph)

    def compute_loss(self, data, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(loss, pooled_embedding [G, F])`` for one batch of clean molecules."""
        g = num_graphs(data)
        sig = sample_sigma(self.sigma, g, data.pos.device, generator)
        noise = gaussian_noise(data.pos, data.batch, sig, self.center_noise, generator)
        out = self.backbone(with_positions(data, data.pos + noise))
        pred = self.head(out.scalars, out.vectors, out.graph)
        target = noise / sig[data.batch].unsqueeze(-1)
        pooled = scatter(out.scalars, data.batch, dim=0, dim_size=g, reduce="mean")
        return (pred - target).pow(2).mean(), pooled

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, pooled = self.compute_loss(batch)
        self.log("train/loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        log_collapse_diagnostics(self, pooled, self.diagnostics_every_n_steps)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, _ = self.compute_loss(batch, torch.Generator().manual_seed(batch_idx))
        self.log_mean("val/loss", loss, batch.num_graphs, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, _ = self.compute_loss(batch, torch.Generator().manual_seed(batch_idx))
        self.log_mean("test/loss", loss, batch.num_graphs)


__all__ = ["AuxDenoising", "Denoising", "gaussian_noise", "sample_sigma"]
