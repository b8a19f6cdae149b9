"""JEPA-style latent prediction for molecules (methods.md, "JEPA latent prediction").

Two views of each molecule:

* context view: the corrupted structure -- Gaussian position noise (``sigma`` Angstrom, constant or
  one value per molecule drawn from a list) and/or masked atoms (each atom independently with
  probability ``mask_ratio``; a masked atom keeps its position, ``data.atom_mask`` marks it and the
  backbone replaces its element embedding by a learned mask embedding, see docs/backbones.md);
* target view: the clean structure.

Both go through an encoder = backbone + :class:`~atomzoo.objectives.heads.PooledProjection` ->
embedding ``[G, D]`` per molecule. A predictor MLP maps the context embedding, concatenated with the
corruption parameters of each molecule (its sigma in Angstrom and its realised masked fraction),
to the target embedding. Loss = MSE(prediction, target embedding), mean over molecules and dims.
Optionally (``atom_loss_weight > 0``) a per-atom predictor also maps the context view's per-atom
scalars to the target view's layer-normed per-atom scalars (MSE over all atoms).

Anti-collapse (``anti_collapse``):

* ``"ema"`` (I-JEPA / BYOL): the target encoder is an exponential moving average of the context
  encoder (backbone + projector), ``theta_t <- m theta_t + (1 - m) theta``, with the momentum
  following a cosine schedule from ``ema_momentum`` (0.996) to ``ema_momentum_end`` (1.0) over the
  run's optimizer steps. It gets no gradient (stop-grad), is updated in ``on_train_batch_end``, and
  is saved in checkpoints (submodules ``target_backbone`` / ``target_projection``; fine-tuning with
  ``init_from`` loads the *context* backbone ``backbone.*``).
* ``"sigreg"`` (LeJEPA): a single encoder for both views, no EMA, no stop-grad; the projector ends in
  ``BatchNorm1d``; loss = pred MSE + ``sigreg_weight`` * mean(SIGReg(context emb), SIGReg(target emb))
  (:mod:`atomzoo.objectives.sigreg`, directions seeded from the global step). methods.md warns that
  SIGReg alone collapsed in an asymmetric masked-prediction setup: watch ``train/emb_std`` and
  ``train/emb_erank``.

Logs ``train/loss``, ``train/pred_loss``, ``train/sigreg`` (sigreg), ``train/ema_momentum`` (ema),
``val/loss`` (same formula, seeded corruption), and the collapse diagnostics of the context
embeddings.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomzoo.backbones.base import Backbone, num_graphs, with_positions

from .base import Objective
from .denoising import gaussian_noise, sample_sigma
from .diagnostics import log_collapse_diagnostics
from .heads import PooledProjection
from .sigreg import sigreg


class CorruptionConditionedPredictor(nn.Module):
    """MLP ``[G, D] x [G, P] -> [G, D]``: ``LN(z) ++ params -> Linear -> SiLU -> Linear -> SiLU -> Linear``.

    ``params`` are the corruption parameters of each molecule (sigma in Angstrom, masked fraction).
    """

    def __init__(self, dim: int, num_params: int = 2, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim + num_params, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim)
        )

    def forward(self, z: Tensor, params: Tensor) -> Tensor:
        return self.net(torch.cat([self.norm(z), params.to(z.dtype)], dim=-1))


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
        embedding_dim, projection_hidden: projector sizes (default the backbone width).
        predictor_hidden: predictor hidden size (default 2 * embedding_dim).
        atom_loss_weight: weight of the optional per-atom prediction loss (0: off).
        ema_momentum, ema_momentum_end: cosine momentum schedule of the EMA target (ema only).
        sigreg_weight, sigreg_slices: lambda and number of random directions M (sigreg only).
        diagnostics_every_n_steps: log ``train/emb_std`` / ``train/emb_erank`` every this many steps.
        Other arguments: see :class:`~atomzoo.objectives.base.Objective`.
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
        if anti_collapse not in ("ema", "sigreg"):
            raise ValueError(f"anti_collapse={anti_collapse!r}: choose 'ema' or 'sigreg' (--model.anti_collapse)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        values = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        if not values or any(float(s) < 0 for s in values):
            raise ValueError(f"sigma must be >= 0 (Angstrom), got {sigma}")
        if mask_ratio == 0 and all(float(s) == 0 for s in values):
            raise ValueError("JEPA needs a corruption: set sigma > 0 and/or mask_ratio > 0")
        if mask_ratio > 0 and not getattr(backbone, "supports_mask", False):
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
        self.sigma = sigma if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
        self.mask_ratio = float(mask_ratio)
        self.atom_loss_weight = float(atom_loss_weight)
        self.ema_momentum, self.ema_momentum_end = float(ema_momentum), float(ema_momentum_end)
        self.sigreg_weight, self.sigreg_slices = float(sigreg_weight), int(sigreg_slices)
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.projection = PooledProjection(
            backbone.width, projection_hidden, embedding_dim, final_batchnorm=anti_collapse == "sigreg"
        )
        dim = self.projection.out_dim
        self.predictor = CorruptionConditionedPredictor(dim, 2, predictor_hidden)
        self.atom_predictor = (
            nn.Sequential(nn.LayerNorm(backbone.width), nn.Linear(backbone.width, backbone.width), nn.SiLU(),
                          nn.Linear(backbone.width, backbone.width))
            if atom_loss_weight > 0 else None
        )
        if anti_collapse == "ema":
            self.target_backbone = copy.deepcopy(self.backbone)
            self.target_projection = copy.deepcopy(self.projection)
            for p in [*self.target_backbone.parameters(), *self.target_projection.parameters()]:
                p.requires_grad_(False)
        else:
            self.target_backbone = None
            self.target_projection = None

    # ----- views ----------------------------------------------------------------------------------
    def corrupt(self, data, generator: torch.Generator | None = None):
        """``(context_view, params [G, 2])``: noisy / masked copy of ``data`` and (sigma, masked fraction)."""
        g = num_graphs(data)
        device = data.pos.device
        sig = sample_sigma(self.sigma, g, device, generator) if self.sigma else torch.zeros(g, device=device)
        view = data
        if bool((sig > 0).any()):
            view = with_positions(data, data.pos + gaussian_noise(data.pos, data.batch, sig, generator=generator))
        else:
            view = with_positions(data, data.pos)
        masked = torch.zeros_like(data.z, dtype=torch.bool)
        if self.mask_ratio > 0:
            masked = (torch.rand(data.z.shape, generator=generator) < self.mask_ratio).to(device)
            view.atom_mask = masked  # the backbone swaps these atoms' element embedding for its mask embedding
        fraction = scatter(masked.float(), data.batch, dim=0, dim_size=g, reduce="mean")
        return view, torch.stack([sig.float(), fraction], dim=-1)

    def encode(self, data, target: bool = False) -> tuple[Tensor, Tensor]:
        """``(embedding [G, D], per-atom scalars [N, F])`` by the context (or EMA target) encoder."""
        backbone = self.target_backbone if target and self.target_backbone is not None else self.backbone
        projection = self.target_projection if target and self.target_projection is not None else self.projection
        out = backbone(data)
        return projection(out.scalars, data.batch, num_graphs(data)), out.scalars

    def forward(self, data) -> Tensor:
        """Embedding ``[G, D]`` of (clean) molecules by the context encoder."""
        return self.encode(data)[0]

    def compute_loss(self, data, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        context, params = self.corrupt(data, generator)
        z_ctx, h_ctx = self.encode(context)
        if self.anti_collapse == "ema":
            with torch.no_grad():
                z_tgt, h_tgt = self.encode(data, target=True)
        else:
            z_tgt, h_tgt = self.encode(data)
        pred = self.predictor(z_ctx, params)
        terms = {"pred_loss": (pred - z_tgt).pow(2).mean()}
        loss = terms["pred_loss"]
        if self.atom_predictor is not None:
            target_atoms = nn.functional.layer_norm(h_tgt, h_tgt.shape[-1:])
            terms["atom_loss"] = (self.atom_predictor(h_ctx) - target_atoms).pow(2).mean()
            loss = loss + self.atom_loss_weight * terms["atom_loss"]
        if self.anti_collapse == "sigreg":
            step = int(self.global_step) if self._trainer is not None else 0
            terms["sigreg"] = 0.5 * (sigreg(z_ctx, self.sigreg_slices, step) + sigreg(z_tgt, self.sigreg_slices, step))
            loss = loss + self.sigreg_weight * terms["sigreg"]
        terms["loss"] = loss
        terms["z_ctx"] = z_ctx
        return terms

    # ----- EMA target -----------------------------------------------------------------------------
    def momentum(self) -> float:
        """Cosine schedule ``m_end - (m_end - m_0) (1 + cos(pi k / K)) / 2`` at optimizer step k of K."""
        total = 1
        if self._trainer is not None:
            total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
            total = int(total) if math.isfinite(total) else 1
        progress = min(1.0, self.global_step / max(1, total))
        return self.ema_momentum_end - (self.ema_momentum_end - self.ema_momentum) * 0.5 * (1 + math.cos(math.pi * progress))

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """``theta_t <- m theta_t + (1 - m) theta`` for the backbone and projector (buffers copied)."""
        for online, target in ((self.backbone, self.target_backbone), (self.projection, self.target_projection)):
            for p, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(momentum).add_(p.detach(), alpha=1.0 - momentum)
            for b, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(b)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.anti_collapse == "ema":
            m = self.momentum()
            self.update_target(m)
            self.log("train/ema_momentum", m, batch_size=batch.num_graphs)

    # ----- steps ----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        terms = self.compute_loss(batch)
        g = batch.num_graphs
        self.log("train/loss", terms["loss"], batch_size=g, prog_bar=True)
        for name in ("pred_loss", "atom_loss", "sigreg"):
            if name in terms:
                self.log(f"train/{name}", terms[name], batch_size=g)
        log_collapse_diagnostics(self, terms["z_ctx"], self.diagnostics_every_n_steps)
        return terms["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        terms = self.compute_loss(batch, torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", terms["loss"], batch_size=batch.num_graphs, prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        terms = self.compute_loss(batch, torch.Generator().manual_seed(batch_idx))
        self.log("test/loss", terms["loss"], batch_size=batch.num_graphs, sync_dist=True)


__all__ = ["JEPA", "CorruptionConditionedPredictor"]
