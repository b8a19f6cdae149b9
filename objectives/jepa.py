"""JEPA-style latent prediction for molecules (I-JEPA / BYOL / Graph-JEPA; LeJEPA arXiv 2511.08544).

Two views of each molecule:

* context view: the corrupted structure -- Gaussian position noise (``sigma`` Angstrom, constant or
  one value per molecule drawn from a list) and/or masked atoms (each atom independently with
  probability ``mask_ratio``; a masked atom keeps its position, ``data.atom_mask`` marks it and the
  backbone replaces its element embedding by a learned mask embedding, see docs/backbones.md);
* target view: the clean structure.

Both go through an encoder = backbone + projector -> embedding ``[G, D]`` per molecule. A
:class:`CorruptionConditionedPredictor` maps the context embedding to the target embedding,
conditioned on each molecule's corruption (its sigma and realised masked fraction, each expanded in
a Gaussian radial basis and embedded by an MLP -- not the raw numbers). Loss = MSE(prediction,
target), mean over molecules and dims. Optionally (``atom_loss_weight > 0``) a per-atom predictor
also maps the context view's per-atom scalars to the target view's layer-normed per-atom scalars.

Anti-collapse (``anti_collapse``), one small strategy object each (:class:`EMATarget`,
:class:`SIGRegRegularizer`):

* ``"ema"`` (I-JEPA / BYOL): the target encoder is an exponential moving average of the context
  encoder (backbone + :class:`~atomzoo.objectives.heads.PooledProjection`),
  ``theta_t <- m theta_t + (1 - m) theta``, momentum on a cosine schedule from ``ema_momentum``
  (0.996) to ``ema_momentum_end`` (1.0) over the run's optimizer steps, updated once per OPTIMIZER
  step (not per micro-batch under gradient accumulation). No gradient reaches it. The target
  embedding is layer-normed (no affine) before the loss -- as the per-atom target, and as I-JEPA
  does -- so shrinking the target's scale cannot lower the loss. Saved in checkpoints
  (``target_backbone`` / ``target_projection``); ``init_from`` loads the *context* backbone.
* ``"sigreg"`` (LeJEPA): one encoder for both views, no EMA, no stop-grad; the projector is
  :class:`~atomzoo.objectives.heads.SIGRegProjector` (Linear, BatchNorm, GELU, Linear: nothing
  forces unit variance at its output), run once per step on both views together; loss = pred MSE
  + ``sigreg_weight`` * mean(SIGReg(context emb), SIGReg(target emb)) (:mod:`atomzoo.objectives.sigreg`,
  directions seeded from the global step). Collapse has been reported with SIGReg alone in an
  asymmetric masked-prediction setup (lejepa issue 31): watch the collapse diagnostics.

Logs ``train/loss``, ``train/pred_loss``, ``train/atom_loss`` (if on), ``train/sigreg`` (sigreg),
``train/target_std`` (per-dimension std of the raw target embedding), ``train/ema_momentum`` (ema),
``val/*`` of the same terms (seeded corruption), and the collapse diagnostics of the raw context
embeddings.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomzoo.backbones.base import Backbone
from atomzoo.nn.batch import num_graphs, with_positions
from atomzoo.nn.radial import GaussianRBF

from .base import Objective
from .noise import check_sigma, gaussian_noise, mask_atoms, sample_sigma
from .heads import PooledProjection, SIGRegProjector
from .sigreg import sigreg


class CorruptionConditionedPredictor(nn.Module):
    """Predictor ``[G, D] x [G, 2] -> [G, D]`` conditioned on embedded corruption parameters.

        h = Linear(LN(z)) + MLP([rbf(sigma / sigma_max), rbf(masked fraction)])
        out = Linear(SiLU(Linear(SiLU(h))))

    ``params[:, 0]`` is sigma (Angstrom), ``params[:, 1]`` the masked fraction; each is expanded in
    ``num_rbf`` Gaussians on [0, 1] (sigma divided by ``sigma_max``, the largest configured sigma).

    Args:
        dim: embedding size D; hidden: hidden size (default 2D); sigma_max: Angstrom (> 0);
        num_rbf: Gaussians per parameter.
    """

    def __init__(self, dim: int, hidden: int | None = None, sigma_max: float = 1.0, num_rbf: int = 16) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.sigma_max = float(sigma_max) if sigma_max > 0 else 1.0
        self.rbf = GaussianRBF(num_rbf, 0.0, 1.0)
        self.norm = nn.LayerNorm(dim)
        self.inp = nn.Linear(dim, hidden)
        self.corruption = nn.Sequential(nn.Linear(2 * num_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def embed_corruption(self, params: Tensor) -> Tensor:
        """``[G, 2]`` (sigma A, masked fraction) -> ``[G, hidden]``."""
        params = params.float()
        features = torch.cat([self.rbf(params[:, 0] / self.sigma_max), self.rbf(params[:, 1])], dim=-1)
        return self.corruption(features)

    def forward(self, z: Tensor, params: Tensor) -> Tensor:
        return self.net(self.inp(self.norm(z)) + self.embed_corruption(params).to(z.dtype))


# ----- anti-collapse strategies -------------------------------------------------------------------------
class EMATarget:
    """Anti-collapse by an EMA target encoder (I-JEPA / BYOL). Stateless: the target weights live on
    the objective (``target_backbone``, ``target_projection``) so they are in its state dict."""

    name = "ema"

    def __init__(self, momentum: float = 0.996, momentum_end: float = 1.0) -> None:
        if not 0.0 <= momentum <= momentum_end <= 1.0:
            raise ValueError(
                f"need 0 <= ema_momentum <= ema_momentum_end <= 1, got {momentum}, {momentum_end} (--model.ema_momentum)"
            )
        self.momentum_start, self.momentum_end = float(momentum), float(momentum_end)

    def build(self, jepa: JEPA) -> nn.Module:
        jepa.target_backbone = copy.deepcopy(jepa.backbone)
        jepa.target_projection = copy.deepcopy(jepa.projection)
        for p in [*jepa.target_backbone.parameters(), *jepa.target_projection.parameters()]:
            p.requires_grad_(False)
        return jepa.projection

    def make_projection(self, width: int, hidden: int | None, out_dim: int | None) -> nn.Module:
        return PooledProjection(width, hidden, out_dim)

    def encode(self, jepa: JEPA, context, clean) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z_ctx, h_ctx = jepa.encode(context)
        with torch.no_grad():
            out = jepa.target_backbone(clean)
            z_tgt = jepa.target_projection(out.scalars, clean.batch, num_graphs(clean))
        return z_ctx, h_ctx, z_tgt, out.scalars

    @staticmethod
    def prediction_target(z_tgt: Tensor) -> Tensor:
        """Layer norm without affine parameters: the loss cannot be lowered by shrinking the target."""
        return nn.functional.layer_norm(z_tgt, z_tgt.shape[-1:])

    def regularizer(self, jepa: JEPA, z_ctx: Tensor, z_tgt: Tensor) -> dict[str, Tensor]:
        return {}

    def momentum(self, jepa: JEPA) -> float:
        """Cosine schedule ``m_end - (m_end - m_0)(1 + cos(pi k / K)) / 2`` at optimizer step k of K = run length."""
        progress = min(1.0, jepa.global_step / max(1, jepa.run_length()))
        return self.momentum_end - (self.momentum_end - self.momentum_start) * 0.5 * (1 + math.cos(math.pi * progress))

    def after_optimizer_step(self, jepa: JEPA) -> None:
        m = self.momentum(jepa)
        jepa.update_target(m)
        jepa.log("train/ema_momentum", m)


class SIGRegRegularizer:
    """Anti-collapse by SIGReg on both views' embeddings (LeJEPA); one encoder, no stop-gradient."""

    name = "sigreg"

    def __init__(self, weight: float = 0.1, slices: int = 1024) -> None:
        if weight < 0 or slices < 1:
            raise ValueError(f"need sigreg_weight >= 0 and sigreg_slices >= 1, got {weight}, {slices}")
        self.weight, self.slices = float(weight), int(slices)

    def build(self, jepa: JEPA) -> None:
        jepa.target_backbone = None
        jepa.target_projection = None

    def make_projection(self, width: int, hidden: int | None, out_dim: int | None) -> nn.Module:
        return SIGRegProjector(width, hidden, out_dim)

    def encode(self, jepa: JEPA, context, clean) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out_ctx, out_tgt = jepa.backbone(context), jepa.backbone(clean)
        g = num_graphs(clean)
        pooled = torch.cat([SIGRegProjector.pool(out_ctx.scalars, context.batch, g),
                            SIGRegProjector.pool(out_tgt.scalars, clean.batch, g)])
        z = jepa.projection(pooled)  # one BatchNorm pass (and running-stat update) on both views
        return z[:g], out_ctx.scalars, z[g:], out_tgt.scalars

    @staticmethod
    def prediction_target(z_tgt: Tensor) -> Tensor:
        return z_tgt

    def regularizer(self, jepa: JEPA, z_ctx: Tensor, z_tgt: Tensor) -> dict[str, Tensor]:
        step = int(jepa.global_step) if jepa._trainer is not None else 0
        value = 0.5 * (sigreg(z_ctx, self.slices, step) + sigreg(z_tgt, self.slices, step))
        return {"sigreg": (value, self.weight)}

    def after_optimizer_step(self, jepa: JEPA) -> None:
        pass


class JEPA(Objective):
    """Joint-embedding predictive pretraining (module docstring for the recipe).

    Args:
        backbone: any backbone.
        anti_collapse: ``"ema"`` or ``"sigreg"``.
        sigma: context-view position noise in Angstrom (float, or list: one value per molecule);
            0 disables noise.
        mask_ratio: probability that an atom of the context view is masked (0 disables).
        mask_element: deprecated and ignored (FutureWarning): masked atoms are marked in
            ``data.atom_mask`` and the backbone (``supports_mask = True``) embeds them.
        embedding_dim, projection_hidden: projector sizes (defaults: ema ``PooledProjection``
            width/width; sigreg ``SIGRegProjector`` hidden 2 x width, output width).
        predictor_hidden: predictor hidden size (default 2 * embedding_dim).
        atom_loss_weight: weight of the optional per-atom prediction loss (0: off).
        ema_momentum, ema_momentum_end: cosine momentum schedule of the EMA target (ema only).
        sigreg_weight, sigreg_slices: lambda and number of random directions M (sigreg only).
        diagnostics_every_n_steps: collapse diagnostics every this many steps.
        Other arguments: see :class:`~atomzoo.objectives.base.Objective`.

    Raises:
        ValueError: unknown ``anti_collapse``, ``mask_ratio`` outside [0, 1), negative sigma, no
            corruption at all, or ``mask_ratio > 0`` with a backbone without ``supports_mask``.
    """

    def __init__(
        self,
        backbone: Backbone,
        anti_collapse: str = "ema",
        sigma: float | list[float] = 0.1,
        mask_ratio: float = 0.15,
        mask_element: int | None = None,
        embedding_dim: int | None = None,
        projection_hidden: int | None = None,
        predictor_hidden: int | None = None,
        atom_loss_weight: float = 0.0,
        ema_momentum: float = 0.996,
        ema_momentum_end: float = 1.0,
        sigreg_weight: float = 0.1,
        sigreg_slices: int = 1024,
        diagnostics_every_n_steps: int = 50,
        weight_decay: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(backbone, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        if anti_collapse == "ema":
            self.strategy = EMATarget(ema_momentum, ema_momentum_end)
        elif anti_collapse == "sigreg":
            self.strategy = SIGRegRegularizer(sigreg_weight, sigreg_slices)
        else:
            raise ValueError(f"anti_collapse={anti_collapse!r}: choose 'ema' or 'sigreg' (--model.anti_collapse)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio} (--model.mask_ratio)")
        self.sigma = check_sigma(sigma, allow_zero=True)
        sigmas = [self.sigma] if isinstance(self.sigma, float) else self.sigma
        if mask_ratio == 0 and all(s == 0 for s in sigmas):
            raise ValueError("JEPA needs a corruption: set sigma > 0 and/or mask_ratio > 0 (--model.sigma, --model.mask_ratio)")
        if mask_ratio > 0 and not backbone.supports_mask:
            raise ValueError(
                f"mask_ratio={mask_ratio} needs a backbone that supports atom masking, and {type(backbone).__name__} "
                "does not declare it: set the class attribute `supports_mask = True` and replace the element "
                "embedding of masked atoms (data.atom_mask) by a learned one, e.g. "
                "`x = self.apply_atom_mask(self.embedding(data.z), data, self.mask_embedding)` "
                "(docs/backbones.md, 'Atom masking'); or use --model.mask_ratio 0 (noise only)"
            )
        if mask_element is not None:
            warnings.warn("JEPA's mask_element is ignored since atomzoo 0.2: masked atoms are marked in data.atom_mask "
                          "and the backbone embeds them (docs/backbones.md)", FutureWarning, stacklevel=2)
        self.anti_collapse = anti_collapse
        self.mask_ratio = float(mask_ratio)
        self.atom_loss_weight = float(atom_loss_weight)
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.projection = self.strategy.make_projection(backbone.width, projection_hidden, embedding_dim)
        dim = self.projection.out_dim
        self.predictor = CorruptionConditionedPredictor(dim, predictor_hidden, sigma_max=max(sigmas))
        self.atom_predictor = (
            nn.Sequential(nn.LayerNorm(backbone.width), nn.Linear(backbone.width, backbone.width), nn.SiLU(),
                          nn.Linear(backbone.width, backbone.width))
            if atom_loss_weight > 0 else None
        )
        self.strategy.build(self)

    # ----- views ----------------------------------------------------------------------------------
    def corrupt(self, data, generator: torch.Generator | None = None):
        """``(context_view, params [G, 2])``: noisy / masked copy of ``data`` and (sigma A, masked fraction)."""
        g = num_graphs(data)
        device = data.pos.device
        sig = sample_sigma(self.sigma, g, device, generator)
        pos = data.pos + gaussian_noise(data.pos, data.batch, sig, generator=generator) if bool((sig > 0).any()) else data.pos
        view = with_positions(data, pos)
        masked = mask_atoms(data.z.numel(), self.mask_ratio, device, generator)
        if self.mask_ratio > 0:
            view.atom_mask = masked  # the backbone swaps these atoms' element embedding for its mask embedding
        fraction = scatter(masked.float(), data.batch, dim=0, dim_size=g, reduce="mean")
        return view, torch.stack([sig.float(), fraction], dim=-1)

    def encode(self, data) -> tuple[Tensor, Tensor]:
        """``(embedding [G, D], per-atom scalars [N, F])`` of ``data`` by the context encoder.
        (SIGReg: the projector's BatchNorm then sees this batch alone; the loss runs both views together.)"""
        out = self.backbone(data)
        if isinstance(self.projection, SIGRegProjector):
            return self.projection(SIGRegProjector.pool(out.scalars, data.batch, num_graphs(data))), out.scalars
        return self.projection(out.scalars, data.batch, num_graphs(data)), out.scalars

    def forward(self, data) -> Tensor:
        """Embedding ``[G, D]`` of (clean) molecules by the context encoder."""
        return self.encode(data)[0]

    def compute_loss(self, data, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss", "pred_loss", ["atom_loss"], ["sigreg"], "target_std", "embedding" (raw z_ctx)}``."""
        context, params = self.corrupt(data, generator)
        z_ctx, h_ctx, z_tgt, h_tgt = self.strategy.encode(self, context, data)
        pred = self.predictor(z_ctx, params)
        terms = {"pred_loss": (pred - self.strategy.prediction_target(z_tgt)).pow(2).mean()}
        loss = terms["pred_loss"]
        if self.atom_predictor is not None:
            target_atoms = nn.functional.layer_norm(h_tgt, h_tgt.shape[-1:])
            terms["atom_loss"] = (self.atom_predictor(h_ctx) - target_atoms).pow(2).mean()
            loss = loss + self.atom_loss_weight * terms["atom_loss"]
        for name, (value, weight) in self.strategy.regularizer(self, z_ctx, z_tgt).items():
            terms[name] = value
            loss = loss + weight * value
        terms["loss"] = loss
        terms["target_std"] = z_tgt.detach().float().std(dim=0).mean() if z_tgt.size(0) > 1 else z_tgt.new_zeros(())
        terms["embedding"] = z_ctx
        return terms

    # ----- EMA target -----------------------------------------------------------------------------
    def momentum(self) -> float:
        """Current EMA momentum (ema only): see :meth:`EMATarget.momentum`."""
        if not isinstance(self.strategy, EMATarget):
            raise ValueError("momentum() exists only with anti_collapse='ema'")
        return self.strategy.momentum(self)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``theta_t <- m theta_t + (1 - m) theta`` for the backbone and projector (buffers copied)."""
        for online, target in ((self.backbone, self.target_backbone), (self.projection, self.target_projection)):
            for p, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)
            for b, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(b)

    def on_after_optimizer_step(self) -> None:
        self.strategy.after_optimizer_step(self)


__all__ = ["JEPA", "CorruptionConditionedPredictor", "EMATarget", "SIGRegRegularizer"]
