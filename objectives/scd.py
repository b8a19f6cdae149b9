"""Self-conditioned denoising, SCD (Perez & Gomez-Bombarelli, arXiv 2603.17196; reference code
TyJPerez/SelfConditionedDenoisingAtoms).

Each training step runs the SAME backbone twice:

1. Clean pass: clean positions plus tiny regularisation noise (``clean_sigma`` = 0.005 A), no
   condition -- i.e. the backbone's learned mask token, through the same condition layer norm and
   per-layer adaLN as a real condition. Per-atom scalars ->
   :class:`~atomzoo.objectives.heads.PooledProjection` (per-atom LN-Linear-SiLU-LN, sum-pool,
   LN-Linear-SiLU-LN-Linear) -> molecular embedding ``c`` ``[G, C]``.
2. Noisy pass: positions plus Gaussian noise (``sigma`` = 0.04 A, mean-centred per molecule),
   conditioned on ``c``; an equivariant head predicts the per-atom noise.

The condition machinery lives in the backbone (``backbone.conditioning``,
:mod:`atomzoo.nn.conditioning`): the mask token, the condition's layer norm and one adaLN per layer
(modulating the normalised input of the layer, gating its scalar update by ``tanh(alpha * gate)``;
not inert at initialisation). So a backbone pretrained with SCD carries all of it into
``init_from`` and the safetensors export, and fine-tuning / inference (``backbone(data)``) runs the
mask-token network the clean pass trained. The backbone must be built with ``condition_dim > 0``;
``c`` has that size (no extra projection).

Condition dropout: during training each molecule's ``c`` is replaced by the mask token with
probability ``condition_dropout`` (0.2); validation and test use the full condition.

Gradients flow through both passes (``c`` is not detached; no EMA teacher). With
``freeze_element_embedding`` (default True, as in the paper) the backbone's element embedding
(``backbone.element_embedding_parameters()``) is frozen during pretraining.

Loss: MSE between the prediction and the noise standardised by a running per-component (x, y, z)
mean / std (:class:`~atomzoo.objectives.noise.RunningMoments`: exact pooled moments over all
training batches of ALL DDP ranks; buffers, saved in checkpoints). Updated in training only.

Logs ``train/loss``, ``val/loss`` (full condition, seeded noise), ``val/loss_masked`` (the same
noise, mask token for every molecule: what the network does without the clean pass),
``val/loss_noisy_condition`` (the same noise, the condition computed by the clean-pass network from
the NOISY input itself: a condition that carries no information the noisy pass could not see) and
the collapse diagnostics of ``c``. ``val/loss_masked - val/loss`` is what the self-conditioning buys;
it splits into ``val/loss_masked - val/loss_noisy_condition`` (what any extra global context buys)
and ``val/loss_noisy_condition - val/loss`` (what the clean structure's information buys). The third
term is computed in validation and test only (it costs a third backbone pass; not in training).

Mask token: ours is trained during pretraining by default (``freeze_mask_token=False``). The reference
freezes it at its initial value: ``SCDModel.pretrain()`` (models/ET_models/scd_model.py, lines 78-80,
called by models/trainer.py line 98 when pretraining) calls ``freeze_embeddings(True)``, which sets
``self.drop_cond.mask_token.requires_grad = not freeze`` (models/ET_models/scet.py, line 448);
fine-tuning unfreezes it (``finetune()``). ``freeze_mask_token=True`` does the same here (fine-tuning
builds a fresh objective, so the token trains again there). Measured (objective benchmark v2,
``docs/benchmarks.md``: PaiNN 64 x 3, 5,000 QM9 steps, QM9 HOMO at 1,000 labels, 3 replicates): the
frozen token fine-tunes +2.0 meV [95 % interval -5.6, +9.6] from the trained one, not resolved, so
the default stays the trained token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from atomzoo.backbones.base import Backbone
from atomzoo.nn.batch import num_graphs, with_positions
from atomzoo.nn.conditioning import LayerConditioning

from .base import Objective
from .noise import RunningMoments, check_sigma, gaussian_noise, sample_sigma
from .heads import NoiseHead, PooledProjection


class SelfConditionedDenoising(Objective):
    """SCD on any backbone with per-layer conditioning (module docstring for the recipe).

    Args:
        backbone: a backbone built with ``condition_dim > 0`` holding ``backbone.conditioning``
            (:func:`atomzoo.nn.conditioning.condition_modules`): SchNet, PaiNN, MACE
            (``--model.backbone.init_args.condition_dim 128``).
        sigma: noise of the noisy pass in Angstrom (0.04), or a list (one value per molecule).
        clean_sigma: regularisation noise of the clean pass in Angstrom (0.005; 0 for none).
        embedding_dim: size of ``c``; must equal ``backbone.condition_dim`` (None: take it).
        projection_hidden: hidden size of the projection head (default the backbone width).
        condition_dropout: probability per molecule of replacing ``c`` by the mask token (0.2).
        freeze_element_embedding: freeze the backbone's element embedding (paper: True).
        freeze_mask_token: keep the backbone's mask token (``backbone.conditioning.mask_token``) at its
            initial value during pretraining, as the reference does (module docstring); default False
            (ours trains it).
        head, head_hidden: the noise head (see :class:`~atomzoo.objectives.heads.NoiseHead`).
        diagnostics_every_n_steps: collapse diagnostics of ``c`` every this many steps.
        Other arguments: see :class:`~atomzoo.objectives.base.Objective`.

    Raises:
        ValueError: the backbone has no conditioning (``condition_dim == 0``), ``embedding_dim``
            differs from it, ``condition_dropout`` outside [0, 1], invalid ``sigma`` / ``clean_sigma``.
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
        freeze_mask_token: bool = False,
        head: str = "auto",
        head_hidden: int | None = None,
        diagnostics_every_n_steps: int = 50,
        weight_decay: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(backbone, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        if not isinstance(backbone.conditioning, LayerConditioning):
            raise ValueError(
                f"SelfConditionedDenoising conditions every backbone layer, but {type(backbone).__name__} was built "
                f"with condition_dim={backbone.condition_dim} (no backbone.conditioning): set "
                "--model.backbone.init_args.condition_dim (e.g. 128); custom backbones: see atomzoo.nn.conditioning"
            )
        if embedding_dim is not None and int(embedding_dim) != backbone.condition_dim:
            raise ValueError(
                f"embedding_dim={embedding_dim} must equal the backbone's condition_dim={backbone.condition_dim} "
                "(the embedding is the condition); leave --model.embedding_dim null"
            )
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout} (--model.condition_dropout)")
        self.sigma = check_sigma(sigma)
        self.clean_sigma = float(check_sigma(clean_sigma, "clean_sigma", allow_zero=True))
        self.condition_dropout = float(condition_dropout)
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.projection = PooledProjection(backbone.width, projection_hidden, backbone.condition_dim)
        self.head = NoiseHead(backbone, head, head_hidden)
        init_std = float(sample_sigma(self.sigma, 1, "cpu").mean())
        self.target_stats = RunningMoments(3, init_std=init_std)
        self.freeze_element_embedding = freeze_element_embedding
        if freeze_element_embedding:
            for p in backbone.element_embedding_parameters():
                p.requires_grad_(False)
        self.freeze_mask_token = bool(freeze_mask_token)
        if self.freeze_mask_token:
            backbone.conditioning.mask_token.requires_grad_(False)

    #: condition size given to a backbone whose config leaves ``condition_dim`` at 0 (the SCD paper: the width)
    DEFAULT_CONDITION_DIM = 128

    @classmethod
    def backbone_defaults(cls, model_args: dict, backbone_args: dict) -> dict:
        """``zoo`` with a backbone config of ``condition_dim: 0`` (every shipped one): build it with
        ``condition_dim`` = that of ``init_from``'s backbone, else ``embedding_dim`` if given, else the
        backbone's ``width``, else 128."""
        if backbone_args.get("condition_dim"):
            return {}
        inherited = super().backbone_defaults(model_args, backbone_args)
        if inherited:
            return inherited
        dim = model_args.get("embedding_dim") or backbone_args.get("width") or cls.DEFAULT_CONDITION_DIM
        return {"condition_dim": int(dim)}

    @property
    def conditioning(self) -> LayerConditioning:
        """The backbone's condition machinery (mask token, condition norm, per-layer adaLN)."""
        return self.backbone.conditioning

    # ----- the two passes -------------------------------------------------------------------------
    def embed(self, data) -> Tensor:
        """Clean pass: molecular embedding ``c`` ``[G, C]`` of ``data`` (positions as given; mask-token condition)."""
        out = self.backbone(data)
        return self.projection(out.scalars, data.batch, num_graphs(data))

    def denoise(self, noisy, condition: Tensor | None, drop: Tensor | None = None) -> Tensor:
        """Noisy pass -> predicted standardised noise ``[N, 3]``. ``condition`` ``[G, C]`` (``None``:
        mask token for every molecule); rows where ``drop`` ``[G]`` is True get the mask token."""
        if condition is not None:
            condition = self.conditioning.drop(condition, drop)
        out = self.backbone(noisy, condition=condition)
        return self.head(out.scalars, out.vectors, out.graph)

    def _draw(self, data, generator):
        """Clean view, noisy view and the noise ``[N, 3]`` (Angstrom) of one batch."""
        g = num_graphs(data)
        device = data.pos.device
        clean = data
        if self.clean_sigma > 0:
            sig_clean = torch.full((g,), self.clean_sigma, device=device)
            clean = with_positions(data, data.pos + gaussian_noise(data.pos, data.batch, sig_clean, generator=generator))
        sig = sample_sigma(self.sigma, g, device, generator)
        noise = gaussian_noise(data.pos, data.batch, sig, center=True, generator=generator)
        return clean, with_positions(data, data.pos + noise), noise

    def compute_loss(self, data, generator: torch.Generator | None = None,
                     drop_probability: float | None = None, update_stats: bool | None = None) -> dict[str, Tensor]:
        """``{"loss", "embedding" (c)}`` of one SCD step on clean molecules ``data``.

        ``drop_probability``: condition dropout (default: ``condition_dropout`` in training mode, 0
        in eval mode; 1 uses only the mask token). ``update_stats``: update the running noise moments
        first (default: in training mode).
        """
        training = self.training
        p = (self.condition_dropout if training else 0.0) if drop_probability is None else float(drop_probability)
        clean, noisy, noise = self._draw(data, generator)
        if update_stats if update_stats is not None else training:
            self.target_stats.update(noise)
        c = self.embed(clean)
        g = num_graphs(data)
        drop = None
        if p >= 1.0:
            drop = torch.ones(g, dtype=torch.bool, device=c.device)
        elif p > 0.0:
            drop = torch.rand(g, generator=generator) < p
        pred = self.denoise(noisy, c, drop)
        target = self.target_stats.standardize(noise)
        return {"loss": (pred - target).pow(2).mean(), "embedding": c}

    def evaluation_terms(self, batch, generator: torch.Generator) -> dict[str, Tensor]:
        """``loss`` (full condition from the clean pass), ``loss_masked`` (mask token only) and
        ``loss_noisy_condition`` (condition from the clean-pass network applied to the noisy input),
        all three on the same seeded noise."""
        state = generator.get_state()
        terms = self.compute_loss(batch, generator, drop_probability=0.0, update_stats=False)
        generator.set_state(state)
        _, noisy, noise = self._draw(batch, generator)
        target = self.target_stats.standardize(noise)
        terms["loss_masked"] = (self.denoise(noisy, None) - target).pow(2).mean()
        terms["loss_noisy_condition"] = (self.denoise(noisy, self.embed(noisy)) - target).pow(2).mean()
        return terms


__all__ = ["RunningMoments", "SelfConditionedDenoising"]
