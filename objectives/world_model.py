"""A world model of molecular dynamics: LeWorldModel's recipe (Maes et al., arXiv 2603.19312; code
lucas-maes/le-wm) on MD trajectories, with any backbone as the encoder.

An encoder maps every frame (a structure) to an embedding; an action-conditioned predictor maps
the embeddings of ``h`` history frames to the embedding of the frame ``k`` steps later; both train
end to end with two terms only, the prediction error and SIGReg, as in LeWM:

* encoder: backbone -> mean-pooled per-atom scalars -> projector Linear-BatchNorm1d-GELU-Linear
  (:class:`~atomzoo.objectives.heads.SIGRegProjector`, run ONCE per step on every frame of the
  batch, history and targets together, as LeWM's ``encode`` does). BatchNorm, not LayerNorm, and
  nothing after the last Linear: LeWM's ViT ends in a LayerNorm, which would fight SIGReg's scale
  term, and a normalisation after the last layer would blind it.
* predictor (:class:`LatentPredictor`, LeWM's ``ARPredictor``): a learned positional embedding of
  the history slots, then ``predictor_depth`` transformer blocks with AdaLN-zero conditioning
  (:class:`AdaLNZeroBlock`: LayerNorm without affine, shift / scale / gate from the action by a
  zero-initialised Linear, so every block starts as the identity), causal attention, a final
  LayerNorm; then a BatchNorm MLP head (LeWM's ``pred_proj``, Linear-BatchNorm1d-GELU-Linear).
* action (:class:`ActionEncoder`): the horizon ``k`` in fs and the thermostat temperature in K,
  divided by ``horizon_scale`` and ``temperature_scale``, through Linear-SiLU-Linear to the
  embedding size; the same action conditions every history slot.

Why that action: the predictor must be told whatever makes the future frame determinate *in
distribution* given the history. In Langevin (or any thermostatted) MD the positions at ``t + k``
given the past depend on how far ahead one looks (``k`` in physical time: the same number of frames
is a different time for files saved at different rates, so fs, not frames) and on the bath
temperature, which sets the spread of velocities and the size of the random forces. The history
frames carry the velocities (finite differences), so they are not part of the action; the
integrator's step does not change the physics, only the time between frames does. The friction and
the potential are fixed per data set and are not given.

Loss (LeWM's ``lejepa_forward``)::

    z = projector(pool(backbone(frames)))                 [W, h+1, D]  (all frames of all windows)
    pred = pred_proj(predictor(z[:, :h], action)[:, -1])   [W, D]
    loss = MSE(pred, z[:, h]) + sigreg_weight * mean_p SIGReg(z[:, p])

``MSE`` is the mean over windows and dimensions; SIGReg (:func:`atomzoo.objectives.sigreg.sigreg`,
DDP-exact) is computed per window position over the batch, as LeWM computes it per time step, with
``sigreg_slices`` (1,024) directions redrawn every step (seeded by the global step, the same for
every position, as LeWM draws one matrix per call) and the Epps-Pulley statistic on 17 knots of
[0, 3]. No EMA and no stop-gradient: the target embedding ``z[:, h]`` comes from the same encoder
and receives gradient. ``sigreg_weight`` 0.1 (LeWM's paper; its released config uses 0.09).

Logged: ``loss``, ``pred_loss``, ``sigreg``, ``target_std`` (per-dimension std of the target
embeddings), ``persistence_loss`` (MSE of predicting "no change", ``z[:, h-1]`` for ``z[:, h]``,
detached: a predictor that does not beat it has learned no dynamics), and every
``diagnostics_every_n_steps`` the collapse diagnostics of the embeddings of all frames.

Differences from LeWM (arXiv 2603.19312, lucas-maes/le-wm ``train.py``, ``jepa.py``, ``module.py``,
``config/train/lewm.yaml``):

* Frames are molecular structures encoded by any atomistic backbone with mean pooling of per-atom
  scalars, not images through a ViT-Tiny CLS token.
* LeWM predicts at every history slot the next frame (teacher forcing over ``num_preds = 1``
  steps, targets ``emb[:, 1:]``); here only the last slot's output predicts the target at
  ``t + k``, because the history stride and the horizon differ in general. Its LeWM-style action
  is per frame (the frameskip's concatenated controls); here one action per window.
* LeWM's action encoder is a Conv1d of kernel 1 followed by Linear-SiLU-Linear; here the
  Linear-SiLU-Linear alone (two stacked linear maps are one linear map).
* Sizes: LeWM's predictor is 6 blocks, 16 heads of 64, MLP 2048, dropout 0.1 over a 192-wide
  embedding, projector and head hidden 2048; here the embedding defaults to the backbone width and
  the projector / head hidden to twice that (``configs/objectives/world_model.yaml`` keeps the
  predictor's depth, heads, head width, MLP and dropout).
* Weight decay applies to weight matrices only (every objective here:
  :func:`~atomzoo.objectives.param_groups.parameter_groups`); LeWM gives AdamW all parameters.
  LeWM's learning-rate schedule is a linear warmup and cosine per epoch; here per optimizer step.
* LeWM trains in bf16; SIGReg here always runs in float32 (:mod:`atomzoo.objectives.sigreg`).
* SIGReg is DDP-exact (global batch); LeWM's module is single-GPU.

An option LeWM does not have, off by default: ``residual=True`` predicts the change of the
embedding, ``pred = z_t + pred_proj(...)`` with the head's last Linear zero-initialised, so the
predictor starts as "no change" (``pred_loss == persistence_loss`` at step 0) and learns only what
moves. It is the ablation for a predictor that does not get below the persistence floor (measured in
docs/world_model.md); the surprise test and the probes run on either.

A second option LeWM does not have, off by default: ``predictor_input="differences"`` gives the
predictor the history's consecutive differences ``z_{t-h+2} - z_{t-h+1}, ..., z_t - z_{t-1}`` (through a
BatchNorm1d without affine parameters, which brings them to the embedding tokens' scale) followed by
the last embedding ``z_t``, instead of the ``h`` embeddings themselves. The same information, but the
motion is no longer a small difference between large tokens (at 5 fs between frames its squared size is
0.3-0.6 % of the embedding's per-dimension variance; its norm 12-31 times below the embedding's at
1-5 fs): on frozen world-model embeddings
a predictor fed the embeddings learns none of the change that a linear rule of the differences
predicts, while one fed the differences learns part of it (docs/world_model.md, "Is there motion to
predict?").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atomzoo.backbones.base import Backbone
from atomzoo.nn.batch import num_graphs

from .base import Objective
from .heads import SIGRegProjector
from .sigreg import sigreg


class ActionEncoder(nn.Module):
    """``[W, 2]`` action (horizon fs, temperature K) -> ``[W, dim]``: scale, then Linear-SiLU-Linear.

    Args:
        dim: output size; horizon_scale (fs), temperature_scale (K): the divisors of the two inputs.
    """

    def __init__(self, dim: int, horizon_scale: float = 10.0, temperature_scale: float = 300.0) -> None:
        super().__init__()
        if horizon_scale <= 0 or temperature_scale <= 0:
            raise ValueError(f"horizon_scale and temperature_scale must be positive, got {horizon_scale}, "
                             f"{temperature_scale} (--model.horizon_scale, --model.temperature_scale)")  # fmt: skip
        self.register_buffer("scale", torch.tensor([float(horizon_scale), float(temperature_scale)]), persistent=False)
        self.net = nn.Sequential(nn.Linear(2, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, horizon: Tensor, temperature: Tensor) -> Tensor:
        action = torch.stack([horizon, temperature], dim=-1).to(self.scale.dtype) / self.scale
        return self.net(action.to(self.net[0].weight.dtype))


class AdaLNZeroBlock(nn.Module):
    """Transformer block with AdaLN-zero conditioning (DiT; LeWM's ``ConditionalBlock``).

        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))    (zero-initialised)
        x = x + gate1 * Attention(LN(x) * (1 + scale1) + shift1)
        x = x + gate2 * FeedForward(LN(x) * (1 + scale2) + shift2)

    ``LN`` has no affine parameters; the attention and the feed-forward each start with their own
    (affine) LayerNorm, as in LeWM's ``Attention`` and ``FeedForward``. Attention is causal.

    Args:
        dim: token size; heads, head_dim: attention heads and their width; mlp_dim: feed-forward
        hidden size; dropout: on attention weights and outputs and in the feed-forward.
    Shapes: ``x`` ``[W, T, dim]``, ``c`` ``[W, T, dim]`` -> ``[W, T, dim]``.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.dropout = heads, float(dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.attn_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))  # fmt: skip
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def attention(self, x: Tensor) -> Tensor:
        w, t, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(w, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.attn_out(out.transpose(1, 2).reshape(w, t, -1))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attention(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class LatentPredictor(nn.Module):
    """LeWM's ``ARPredictor``: positional embedding, AdaLN-zero blocks, final LayerNorm.

    Args:
        dim: embedding size D; num_frames: history slots the positional embedding covers (its rows
        are ``randn``, as LeWM's); depth, heads, head_dim, mlp_dim, dropout: see :class:`AdaLNZeroBlock`.
    Shapes: ``x`` ``[W, h, D]`` (h <= num_frames), ``c`` ``[W, h, D]`` -> ``[W, h, D]``.
    Raises ``ValueError`` when ``h > num_frames``.
    """

    def __init__(self, dim: int, num_frames: int, depth: int, heads: int, head_dim: int, mlp_dim: int,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.num_frames = int(num_frames)
        self.pos_embedding = nn.Parameter(torch.randn(1, self.num_frames, dim))
        self.blocks = nn.ModuleList(AdaLNZeroBlock(dim, heads, head_dim, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        t = x.size(1)
        if t > self.num_frames:
            raise ValueError(f"the batch has {t} history frames but the predictor covers {self.num_frames} "
                             "(--model.history must be >= --data.init_args.history)")  # fmt: skip
        x = x + self.pos_embedding[:, :t]
        for block in self.blocks:
            x = block(x, c)
        return self.norm(x)


class WorldModel(Objective):
    """LeWorldModel-style world model of MD trajectories on any backbone (module docstring for the recipe).

    Takes the window batches of :class:`atomzoo.datamodules.TrajectoryDataModule` (``window``,
    ``window_position``, ``horizon`` fs, ``temperature`` K; ``docs/datasets.md``).

    Args:
        backbone: any backbone.
        history: history slots of the predictor (LeWM: 3); batches may hold up to this many.
        embedding_dim: D (default the backbone width); projection_hidden: projector hidden size
            (default 2 x width; LeWM 2048); head_hidden: hidden size of the BatchNorm MLP after the
            predictor (default the projector's).
        predictor_depth, predictor_heads, predictor_head_dim, predictor_mlp, predictor_dropout: the
            predictor transformer (LeWM: 6, 16, 64, 2048, 0.1).
        horizon_scale, temperature_scale: fs and K that the action's horizon and temperature are divided by.
        sigreg_weight: lambda (0.1); sigreg_slices: random directions per step (1,024).
        diagnostics_every_n_steps: collapse diagnostics every this many steps.
        residual: predict the change from the last history frame, ``z_t + head(...)``, the head's last
            Linear zero-initialised (not in LeWM; module docstring). Default False: LeWM's absolute prediction.
        predictor_input: ``"embeddings"`` (LeWM: the history's embeddings) or ``"differences"`` (the
            normalised differences of consecutive history embeddings, then the last one; not in LeWM;
            module docstring).
        lr, weight_decay: AdamW (LeWM: 5e-5, 1e-3). Other arguments: :class:`~atomzoo.objectives.base.Objective`.

    Raises:
        ValueError: ``history < 1``, negative ``sigreg_weight``, ``sigreg_slices < 1``, non-positive scales,
        an unknown ``predictor_input``,
        or (at the first batch) a batch without the window fields or with more history frames than ``history``.
    """

    def __init__(
        self,
        backbone: Backbone,
        history: int = 3,
        embedding_dim: int | None = None,
        projection_hidden: int | None = None,
        head_hidden: int | None = None,
        predictor_depth: int = 6,
        predictor_heads: int = 16,
        predictor_head_dim: int = 64,
        predictor_mlp: int = 2048,
        predictor_dropout: float = 0.1,
        horizon_scale: float = 10.0,
        temperature_scale: float = 300.0,
        sigreg_weight: float = 0.1,
        sigreg_slices: int = 1024,
        diagnostics_every_n_steps: int = 50,
        residual: bool = False,
        predictor_input: str = "embeddings",
        lr: float = 5e-5,
        weight_decay: float = 1e-3,
        **kwargs,
    ) -> None:
        super().__init__(backbone, lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        if int(history) < 1:
            raise ValueError(f"history={history}: the predictor needs at least one history frame (--model.history)")
        if sigreg_weight < 0 or int(sigreg_slices) < 1:
            raise ValueError(f"need sigreg_weight >= 0 and sigreg_slices >= 1, got {sigreg_weight}, {sigreg_slices} "
                             "(--model.sigreg_weight, --model.sigreg_slices)")  # fmt: skip
        if predictor_input not in ("embeddings", "differences"):
            raise ValueError(f"predictor_input={predictor_input!r}: choose 'embeddings' (LeWM) or 'differences' "
                             "(--model.predictor_input)")  # fmt: skip
        self.history = int(history)
        self.sigreg_weight, self.sigreg_slices = float(sigreg_weight), int(sigreg_slices)
        self.diagnostics_every_n_steps = diagnostics_every_n_steps
        self.projection = SIGRegProjector(backbone.width, projection_hidden, embedding_dim)
        dim = self.projection.out_dim
        hidden = self.projection.net[0].out_features if head_hidden is None else int(head_hidden)
        self.action_encoder = ActionEncoder(dim, horizon_scale, temperature_scale)
        self.predictor = LatentPredictor(dim, self.history, predictor_depth, predictor_heads, predictor_head_dim,
                                         predictor_mlp, predictor_dropout)  # fmt: skip
        # LeWM's pred_proj is the same BatchNorm MLP class as its projector
        self.prediction_head = SIGRegProjector(dim, hidden, dim)
        self.residual = bool(residual)
        if self.residual:  # start at "no change": the head adds nothing until it learns a change
            nn.init.zeros_(self.prediction_head.net[-1].weight)
            nn.init.zeros_(self.prediction_head.net[-1].bias)
        self.predictor_input = predictor_input
        # consecutive differences are a few per cent of the embedding's scale: normalised per dimension
        self.difference_norm = nn.BatchNorm1d(dim, affine=False) if predictor_input == "differences" else None

    # ----- encoder ----------------------------------------------------------------------------------
    def forward(self, data) -> Tensor:
        """Embedding ``[G, D]`` of every structure of ``data`` (frames, or any molecules)."""
        out = self.backbone(data)
        return self.projection(SIGRegProjector.pool(out.scalars, data.batch, num_graphs(data)))

    @staticmethod
    def window_layout(batch) -> tuple[int, int, Tensor]:
        """``(W windows, P frames per window, order)``: ``z[order].view(W, P, D)`` puts frame
        ``window_position`` of window ``window`` at ``[window, window_position]``."""
        fields = ("window", "window_position", "horizon", "temperature")
        missing = [k for k in fields if getattr(batch, k, None) is None]
        if missing:
            raise ValueError(f"WorldModel needs window batches (atomzoo.datamodules.TrajectoryDataModule); this batch "
                             f"lacks {missing}")  # fmt: skip
        w, g = int(batch.horizon.numel()), num_graphs(batch)
        if w == 0 or g % w:
            raise ValueError(f"a window batch needs the same number of frames per window: {g} frames, {w} windows")
        p = g // w
        return w, p, torch.argsort(batch.window * p + batch.window_position)

    def embed_windows(self, batch) -> Tensor:
        """``[W, P, D]``: the embeddings of every frame of every window (one encoder and projector pass)."""
        w, p, order = self.window_layout(batch)
        z = self(batch)
        return z[order].view(w, p, z.size(-1))

    def predictor_tokens(self, history: Tensor) -> Tensor:
        """``[W, h, D]`` the predictor's input tokens: ``history`` itself, or with ``predictor_input=
        "differences"`` its ``h - 1`` normalised consecutive differences followed by its last embedding."""
        if self.difference_norm is None:
            return history
        differences = history[:, 1:] - history[:, :-1]
        if differences.size(1):
            differences = self.difference_norm(differences.reshape(-1, differences.size(-1))).view_as(differences)
        return torch.cat([differences, history[:, -1:]], dim=1)

    def predict(self, history: Tensor, horizon: Tensor, temperature: Tensor) -> Tensor:
        """``[W, D]``: the predicted target embedding from ``history`` ``[W, h, D]`` and the action
        (with ``residual``: the last history embedding plus the predicted change)."""
        action = self.action_encoder(horizon, temperature).to(history.dtype)  # [W, D]
        tokens = self.predictor(self.predictor_tokens(history), action.unsqueeze(1).expand_as(history))
        out = self.prediction_head(tokens[:, -1])
        return history[:, -1] + out if self.residual else out

    def compute_loss(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{"loss", "pred_loss", "sigreg", "target_std", "persistence_loss", "embedding"}`` of one window batch.

        Nothing is random but the dropout and SIGReg's directions (seeded by the global step), so
        ``generator`` is not used."""
        z = self.embed_windows(batch)  # [W, P, D]
        history, target = z[:, :-1], z[:, -1]
        pred = self.predict(history, batch.horizon, batch.temperature)
        pred_loss = (pred - target).pow(2).mean()
        step = int(self.global_step) if self._trainer is not None else 0
        value = torch.stack([sigreg(z[:, p], self.sigreg_slices, step) for p in range(z.size(1))]).mean()
        with torch.no_grad():
            target_std = target.float().std(dim=0).mean() if target.size(0) > 1 else target.new_zeros(())
            persistence = (history[:, -1] - target).pow(2).mean()
        return {
            "loss": pred_loss + self.sigreg_weight * value,
            "pred_loss": pred_loss,
            "sigreg": value,
            "target_std": target_std,
            "persistence_loss": persistence,
            "embedding": z.reshape(-1, z.size(-1)),
        }


__all__ = ["ActionEncoder", "AdaLNZeroBlock", "LatentPredictor", "WorldModel"]
