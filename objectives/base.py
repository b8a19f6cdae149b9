"""What every objective shares: a backbone, AdamW with a learning-rate schedule, optional EMA.

An objective is a LightningModule that takes any :class:`~atomzoo.backbones.base.Backbone` and defines a
training signal on top of it (supervised regression, denoising, ...). Every objective logs
``train/loss`` and ``val/loss``; checkpoints monitor ``val/loss``.

Fine-tuning and probing (every objective): ``init_from`` loads only the ``backbone.*`` weights of a
checkpoint of ANY objective (or of a safetensors file written by ``python -m atomzoo.objectives.export``)
into this objective's backbone at construction; heads are ignored. ``freeze_backbone`` turns the
backbone into a fixed feature extractor (linear / MLP probe). See ``docs/objectives.md``.
"""

from __future__ import annotations

import io
import math
import os
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from atomzoo.backbones.base import Backbone

from .param_groups import parameter_groups

# Objectives keep the backbone's *config* in their hyperparameters (so load_from_checkpoint rebuilds
# it); Lightning's advice to ignore nn.Module arguments does not apply to that.
warnings.filterwarnings("ignore", message="Attribute 'backbone' is an instance of `nn.Module`")


class Objective(L.LightningModule):
    """Base class of all objectives.

    Args:
        backbone: the representation network (any ``atomzoo.backbones.Backbone`` subclass).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay, applied to weight matrices only (not to biases, norms,
            embeddings, scalars such as adaLN's alpha or a mask token), as the SCD and MACE code do;
            see :func:`atomzoo.objectives.param_groups.parameter_groups`.
        scheduler: ``"cosine"`` (linear warmup then cosine decay to ``min_lr_ratio * lr`` over the
            run's optimizer steps), ``"plateau"`` (reduce on ``val/loss`` plateau, after warmup) or
            ``"constant"`` (after warmup).
        warmup_steps: optimizer steps of linear warmup from 0.
        min_lr_ratio: final learning rate of the cosine schedule as a fraction of ``lr``.
        plateau_factor, plateau_patience: ReduceLROnPlateau settings (patience in validation runs).
        ema_decay: if set, keep an exponential moving average of the weights with this decay
            (Lightning's ``EMAWeightAveraging`` callback); validation, test and the saved checkpoint
            then use the averaged weights.
        init_from: path of a Lightning checkpoint of any objective, or of an exported
            ``.safetensors`` backbone file: its backbone weights are loaded into ``backbone`` here,
            at construction (strict; a different backbone class or different shapes raise a
            ``ValueError`` naming both). Heads of the source are ignored. Note that
            ``load_from_checkpoint`` re-runs the constructor: pass ``init_from=None`` there if the
            file has moved (the checkpoint's own weights are loaded afterwards anyway).
        freeze_backbone: probing: the backbone's parameters get ``requires_grad=False`` (so the
            optimizer skips them) and the backbone stays in eval mode during training.
    """

    def __init__(
        self,
        backbone: Backbone,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        warmup_steps: int = 1000,
        min_lr_ratio: float = 0.01,
        plateau_factor: float = 0.8,
        plateau_patience: int = 10,
        ema_decay: float | None = None,
        init_from: str | None = None,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        if scheduler not in ("cosine", "plateau", "constant"):
            raise ValueError(f"scheduler={scheduler!r}: choose 'cosine', 'plateau' or 'constant' (--model.scheduler)")
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"backbone must be an atomzoo.backbones.Backbone subclass, got {type(backbone).__name__}; "
                "see docs/backbones.md for the contract"
            )
        self.backbone = backbone
        self.lr = lr
        self.weight_decay = weight_decay
        self.scheduler = scheduler
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.ema_decay = ema_decay
        self.init_from = init_from
        self.freeze_backbone = bool(freeze_backbone)
        if init_from:
            from .export import load_into_backbone

            load_into_backbone(self.backbone, init_from)
        if self.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """As Lightning's, and checkpoints written before the ``atomzoo`` namespace (class paths
        such as ``objectives.Regression``) load too, with a ``FutureWarning``."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path):
            from atomzoo._legacy import upgrade_class_paths

            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
            if upgrade_class_paths(checkpoint.get("hyper_parameters")):
                warnings.warn(
                    f"{checkpoint_path} records module paths from before atomzoo 0.2 (e.g. 'objectives.Regression'); "
                    "loading it with the new paths. Save it again to update the file.",
                    FutureWarning,
                    stacklevel=2,
                )
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                buffer.seek(0)
                checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but a frozen backbone (``freeze_backbone``) stays in eval mode."""
        super().train(mode)
        if getattr(self, "freeze_backbone", False):
            self.backbone.eval()
        return self

    # ----- optimisation ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (objectives that freeze parts override or filter)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run (for the cosine schedule)."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else self.warmup_steps
        return int(total) if math.isfinite(total) else max(self.warmup_steps, 1)

    def _lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step ``step``: linear warmup, then cosine (or flat)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.scheduler != "cosine":
            return 1.0
        # The run length is asked for only once warmup is over: at step 0 it would make Lightning
        # load the train dataloader before a checkpoint's loader state is restored (mid-epoch resume).
        if getattr(self, "_total_steps_cache", None) is None:
            self._total_steps_cache = self._total_steps()
        span = max(1, self._total_steps_cache - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        # weight decay on weight matrices only (objectives/param_groups.py: as the SCD and MACE code)
        groups = parameter_groups(self, self.weight_decay, only=self.trainable_parameters())
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler == "plateau":
            # warmup is applied in optimizer_step; the plateau scheduler owns the lr afterwards
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=self.plateau_factor, patience=self.plateau_patience
            )
            return [optimizer], [{"scheduler": plateau, "monitor": "val/loss", "interval": "epoch", "name": "lr"}]
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return [optimizer], [{"scheduler": schedule, "interval": "step", "name": "lr"}]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if self.scheduler == "plateau" and self.global_step < self.warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = self.lr * (self.global_step + 1) / self.warmup_steps
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_callbacks(self):
        if self.ema_decay is None:
            return []
        return [EMAWeightAveraging(decay=self.ema_decay)]
