"""Self-conditioned denoising, SCD (Perez & Gomez-Bombarelli, arXiv 2603.17196; methods.md).

Each training step runs the SAME backbone twice:

1. Clean pass: clean positions plus tiny regularisation noise (``clean_sigma`` = 0.005 A), no
   condition. Per-atom scalars -> :class:`~atomzoo.objectives.heads.PooledProjection` (per-atom
   LN-Linear-SiLU-LN, sum-pool, LN-Linear-SiLU-LN-Linear) -> molecular embedding ``c`` ``[G, D]``.
2. Noisy pass: positions plus Gaussian noise (``sigma`` = 0.04 A, mean-centred per molecule),
   conditioned on ``c``; an equivariant head predicts the per-atom noise.

Condition path: with probability ``condition_dropout`` (0.2) per molecule, ``c`` is replaced by a
learned mask token ``[D]``; the result is layer-normed. If the backbone supports per-layer
conditioning (``backbone.condition_dim > 0``: adaLN in every layer, :mod:`atomzoo.nn.conditioning`), a
linear map takes it to ``condition_dim`` and it is passed as ``backbone(data, condition=...)``.
Otherwise (``condition_dim == 0``) the objective conditions *at the head*: FiLM of the noisy
pass's per-atom scalars, ``h -> h * (1 + scale(c)) + shift(c)`` (zero-initialised: identity at init),
before the noise head -- said once in the logs (rank zero). Scalars only are modulated, so the head
stays equivariant.

Gradients flow through both passes (``c`` is not detached; no EMA teacher). With
``freeze_element_embedding`` (default True, as in the paper) the backbone's element embedding
(``backbone.element_embedding_parameters()``) is frozen during pretraining.

Loss: MSE between the prediction and the noise standardised by a running per-component
(x, y, z) mean / std, accumulated over all training batches seen so far (exact pooled moments,
Chan et al. merge; buffers, so saved in checkpoints). Initial values mean 0, std ``sigma`` (the
std of centred noise is ``sigma * sqrt((n-1)/n)``, the running estimate picks that up). The
statistics are per process (not synchronised across DDP ranks; they converge to the same values).

Fine-tuning an SCD-pretrained backbone: a single pass without condition is exactly the
unconditioned network (``condition=None``), so use ``atomzoo.objectives.Regression`` with ``init_from``.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from atomzoo.backbones.base import Backbone, num_graphs, with_positions

from .base import Objective
from .denoising import gaussian_noise, sample_sigma
from .diagnostics import log_collapse_diagnostics
from atomzoo.nn.init import xavier_linear_

from .heads import NoiseHead, PooledProjection


class RunningMoments(nn.Module):
    """Exact running per-component mean / std of everything passed to :meth:`update` (buffers).

    Shapes: ``update(x)`` with ``x`` ``[..., C]``; ``mean``, ``std`` ``[C]``.
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
        n = x.size(0)
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = (x - batch_mean).square().sum(0)
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
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class FiLM(nn.Module):
    """Per-molecule feature-wise modulation of per-atom scalars, zero-initialised (identity at init).

    Shapes: ``scalars`` ``[N, F]``, ``condition`` ``[G, C]``, ``batch`` ``[N]`` -> ``[N, F]``.
    """

    def __init__(self, width: int, condition_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(condition_dim, 2 * width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, scalars: Tensor, condition: Tensor, batch: Tensor) -> Tensor:
        scale, shift = self.proj(condition).chunk(2, dim=-1)
        return scalars * (1.0 + scale[batch]) + shift[batch]


class SelfConditionedDenoising(Objective):
    """SCD on any backbone (module docstring for the recipe).

    Args:
        backbone: any backbone; per-layer conditioning is used when ``backbone.condition_dim > 0``
            (e.g. ``--model.backbone.init_args.condition_dim 64``), else FiLM at the head.
        sigma: noise of the noisy pass in Angstrom (0.04), or a list (one value per molecule).
        clean_sigma: regularisation noise of the clean pass in Angstrom (0.005).
        embedding_dim: size D of the molecular embedding ``c`` (default the backbone width).
        projection_hidden: hidden size of the projection head (default the backbone width).
        condition_dropout: probability per molecule of replacing ``c`` by the mask token (0.2).
        freeze_element_embedding: freeze the backbone's element embedding (paper: True).
        head, head_hidden: the noise head (see :class:`~atomzoo.objectives.heads.NoiseHead`).
        diagnostics_every_n_steps: log ``train/emb_std`` / ``train/emb_erank`` of ``c``.
        Other arguments: see :class:`~atomzoo.objectives.base.Objective`.

    Logs ``train/loss``, ``val/loss`` (dimensionless MSE; validation uses the full condition, no
    dropout, seeded noise), ``val/loss_masked`` (mask token only: the plain-denoising baseline;
    the gap to ``val/loss`` is what the condition buys), and the collapse diagnostics.
    """

    def __init__(
        self,
        backbone: Backbone,
        sigma: float | list[float] = 0.04,
        clean_sigma: float = 0.005,
        embedding_dim: int | None = None,
        projection_hidden: int | None = None,
        condition_dropout: float = 0.2,
        freeze_element_embedding: bool = True,
        head: str = "auto",
        head_hidden: int | None = None,
        diagnostics_every_n_steps: int = 50,
        weight_decay: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(backbone, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}")
        if clean_sigma < 0:
            raise ValueError(f"clean_sigma must be >= 0 (Angstrom), got {clean_sigma}")
        self.sigma = sigma if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
        sample_sigma(self.sigma, 1, "cpu")  # validates
        self.clean_sigma = float(clean_sigma)
        self.condition_dropout = float(condition_dropout)
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.projection = PooledProjection(backbone.width, projection_hidden, embedding_dim)
        dim = self.projection.out_dim
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.condition_norm = nn.LayerNorm(dim)
        self.condition_in_backbone = backbone.supports_condition
        if self.condition_in_backbone:
            self.condition_proj = xavier_linear_(nn.Linear(dim, backbone.condition_dim))  # DiT / torchmd-net init
            self.film = None
        else:
            self.condition_proj = None
            self.film = FiLM(backbone.width, dim)
        self.head = NoiseHead(backbone, head, head_hidden)
        self.target_stats = RunningMoments(3, init_std=float(sample_sigma(self.sigma, 1, "cpu").mean()))
        self.freeze_element_embedding = freeze_element_embedding
        if freeze_element_embedding:
            for p in backbone.element_embedding_parameters():
                p.requires_grad_(False)
        self._announced = False

    # ----- the two passes -------------------------------------------------------------------------
    def embed(self, data) -> Tensor:
        """Clean pass: molecular embedding ``c`` ``[G, D]`` of ``data`` (positions used as given)."""
        out = self.backbone(data)
        return self.projection(out.scalars, data.batch, num_graphs(data))

    def condition_from(self, c: Tensor, drop: Tensor | None = None) -> Tensor:
        """``[G, D]`` -> the normalised condition; rows where ``drop`` is True get the mask token."""
        if drop is not None:
            c = torch.where(drop.unsqueeze(-1), self.mask_token.to(c.dtype).expand_as(c), c)
        return self.condition_norm(c)

    def denoise(self, noisy, condition: Tensor) -> Tensor:
        """Noisy pass conditioned on ``condition`` ``[G, D]`` -> predicted standardised noise ``[N, 3]``."""
        if self.condition_in_backbone:
            out = self.backbone(noisy, condition=self.condition_proj(condition))
            scalars = out.scalars
        else:
            out = self.backbone(noisy)
            scalars = self.film(out.scalars, condition, noisy.batch)
        return self.head(scalars, out.vectors, out.graph)

    def compute_loss(self, data, drop_probability: float, generator=None, update_stats: bool = False):
        """``(loss, c)``: one SCD step on clean molecules ``data``; ``drop_probability`` = 1 uses only the mask token."""
        g = num_graphs(data)
        device = data.pos.device
        if self.clean_sigma > 0:
            clean_noise = gaussian_noise(data.pos, data.batch, torch.full((g,), self.clean_sigma, device=device), generator=generator)
            clean = with_positions(data, data.pos + clean_noise)
        else:
            clean = data
        c = self.embed(clean)
        if drop_probability >= 1.0:
            drop = torch.ones(g, dtype=torch.bool, device=device)
        elif drop_probability <= 0.0:
            drop = None
        else:
            drop = (torch.rand(g, generator=generator) < drop_probability).to(device)
        sig = sample_sigma(self.sigma, g, device, generator)
        noise = gaussian_noise(data.pos, data.batch, sig, center=True, generator=generator)
        if update_stats:
            self.target_stats.update(noise)
        pred = self.denoise(with_positions(data, data.pos + noise), self.condition_from(c, drop))
        target = self.target_stats.standardize(noise)
        return (pred - target).pow(2).mean(), c

    # ----- steps ----------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if not self.condition_in_backbone and not self._announced:
            rank_zero_info(
                f"SelfConditionedDenoising: {type(self.backbone).__name__} has condition_dim=0, so the molecular "
                "embedding conditions the noise head (FiLM of the per-atom scalars) instead of every backbone layer; "
                "set the backbone's condition_dim for per-layer conditioning"
            )
            self._announced = True

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, c = self.compute_loss(batch, self.condition_dropout, update_stats=True)
        self.log("train/loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        log_collapse_diagnostics(self, c, self.diagnostics_every_n_steps)
        return loss

    def _eval(self, batch, batch_idx: int, stage: str) -> None:
        loss, _ = self.compute_loss(batch, 0.0, torch.Generator().manual_seed(batch_idx))
        masked, _ = self.compute_loss(batch, 1.0, torch.Generator().manual_seed(batch_idx))
        self.log(f"{stage}/loss", loss, batch_size=batch.num_graphs, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/loss_masked", masked, batch_size=batch.num_graphs, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval(batch, batch_idx, "test")


__all__ = ["FiLM", "RunningMoments", "SelfConditionedDenoising"]
