"""What every objective shares: a backbone, AdamW with a learning-rate schedule, optional EMA.

An objective is a LightningModule that takes any :class:`~atomzoo.backbones.base.Backbone` and defines a
training signal on top of it (supervised regression, denoising, ...). Every objective logs
``train/loss`` and ``val/loss``; checkpoints monitor ``val/loss``.

The contract (``docs/objectives.md``, "Adding an objective"): implement
``compute_loss(batch, generator=None) -> dict[str, Tensor]`` -- named scalar terms with the total
under ``"loss"`` and, optionally, ``"embedding"`` ``[G, D]`` (the encoder output the loss sees, for
the collapse diagnostics). The base class then provides ``training_step`` (logs every scalar term as
``train/<name>``), seeded ``validation_step`` / ``test_step`` (noise drawn from a generator seeded by
the batch index, so ``val/loss`` is comparable across epochs; logged as ``val/<name>``,
``test/<name>``), the collapse diagnostics every ``diagnostics_every_n_steps`` steps (and, whenever
``diagnostics_every_n_steps`` is set, of the validation embedding as ``val/emb_*``), the optimizer
and schedule, and the hook :meth:`Objective.on_after_optimizer_step` (once per optimizer step, also
under gradient accumulation). Regression uses these steps too, adding its MAE metrics in
:meth:`Objective.log_terms`.

From the data an objective takes one thing: at ``setup`` the DataModule's
:class:`~atomzoo.nn.statistics.DataSummary` (:meth:`Objective.statistics_request` says which training
statistics to include, :meth:`Objective.on_data_summary` receives it). Objectives import nothing from
:mod:`atomzoo.datamodules`.

Fine-tuning and probing (every objective): ``init_from`` loads only the ``backbone.*`` weights of a
checkpoint of ANY objective (or of a safetensors file written by ``python -m atomzoo.export``; every
model file is read by :mod:`atomzoo.model_files`) into this objective's backbone at construction;
heads are ignored. ``freeze_backbone`` turns the backbone into a fixed feature extractor (linear /
MLP probe). See ``docs/objectives.md``.
"""

from __future__ import annotations

import inspect
import io
import math
import os
import warnings

import lightning as L
import torch
from atomzoo import model_files
from atomzoo.backbones.base import Backbone
from atomzoo.nn.droppath import check_rate, drop_path_rate
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from . import init_check, provenance
from .param_groups import freeze_parameters, parameter_groups, scale_learning_rate

# Objectives keep the backbone's *config* in their hyperparameters (so load_from_checkpoint rebuilds
# it); Lightning's advice to ignore nn.Module arguments does not apply to that.
warnings.filterwarnings("ignore", message="Attribute 'backbone' is an instance of `nn.Module`")


class Objective(L.LightningModule):
    """Base class of all objectives.

    Args:
        backbone: the representation network (any ``atomzoo.backbones.Backbone`` subclass).
        lr: peak learning rate of AdamW.
        betas: AdamW's ``(beta1, beta2)``, the decay rates of its running means of the gradient and of
            its square; each in ``[0, 1)`` (``ValueError`` naming ``--model.betas`` otherwise). Default
            PyTorch's ``(0.9, 0.999)``; SCD's QM9 fine-tuning uses ``(0.995, 0.999)``
            (TyJPerez/SelfConditionedDenoisingAtoms ``configs/finetune_qm9.yaml``: ``beta1: 0.995``;
            ``train.py``: ``--beta2`` default 0.999). CLI: ``--model.betas "[0.995, 0.999]"``.
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
        freeze: fine-tuning: names of modules whose parameters get ``requires_grad=False``, as prefixes of
            the objective's parameter names (``["backbone.embedding", "backbone.layers.0"]``; a name
            matches itself and everything under it). ``ValueError`` for a name that matches nothing.
        backbone_lr_multiplier: the backbone's learning rate is ``lr`` times this ("soft freeze",
            layer-wise learning rate of the pretrained part; heads keep ``lr``); every schedule scales both.
        init_check: with ``init_from``, check that the loaded backbone is the pretrained one
            (:mod:`atomzoo.objectives.init_check`: refuse another cutoff or elements it never saw at
            setup; compare it with the file's own backbone on the first training batch, printing one
            line). ``False`` skips the checks.
        drop_path: drop-path rate of the backbone's layers in training (:mod:`atomzoo.nn.droppath`):
            a number (constant), ``[start, end]`` (linear from ``start`` to ``end`` over
            ``drop_path_steps`` optimizer steps, then ``end``; SCD: 0.1 in pretraining,
            ``[0.15, 0.1]`` in fine-tuning), or ``None`` to leave the backbone's rate alone. Logged
            as ``train/drop_path``. ``ValueError`` for a backbone without the drop-path hook.
        drop_path_steps: length of that schedule (default ``warmup_steps + 2000``, as SCD).
        compile: compile the backbone with ``torch.compile`` (dynamic shapes, neighbour list eager;
            :mod:`atomzoo.nn.compile`) when a Trainer sets the model up. Where the platform cannot
            compile, or training differentiates through forces (double backward, unsupported by
            ``torch.compile``), it warns and runs eager.
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
        drop_path: float | list[float] | None = None,
        drop_path_steps: int | None = None,
        compile: bool = False,
        freeze: list[str] | None = None,
        backbone_lr_multiplier: float = 1.0,
        init_check: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
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
        self.betas = self._check_betas(betas)
        self.weight_decay = weight_decay
        self.scheduler = scheduler
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.ema_decay = ema_decay
        self.init_from = init_from
        self.freeze_backbone = bool(freeze_backbone)
        self.drop_path_schedule = self._check_drop_path(drop_path, backbone)  # (start, end) or None
        self.drop_path_steps = int(drop_path_steps) if drop_path_steps is not None else warmup_steps + 2000
        self.compile_backbone = bool(compile)
        #: per-sample means of logged validation/test quantities, filled by :meth:`log_mean`
        self.epoch_means = nn.ModuleDict()
        if init_from:
            loaded = model_files.load_into_backbone(self.backbone, init_from)
            rank_zero_info(f"init_from: loaded {len(loaded.backbone_weights)} tensors from {init_from} (backbone "
                           f"{type(self.backbone).__name__}, skipped {len(loaded.state_dict) - len(loaded.backbone_weights)} "
                           "non-backbone tensors)")
        if self.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
        self.frozen_modules = freeze_parameters(self, freeze)  # not self.freeze: LightningModule.freeze()
        if backbone_lr_multiplier < 0:
            raise ValueError(f"backbone_lr_multiplier={backbone_lr_multiplier} must be >= 0 (--model.backbone_lr_multiplier)")
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.init_check = bool(init_check)
        self._step_zero = None  # init_check.StepZeroCheck from setup to the first training batch

    @staticmethod
    def _check_betas(option) -> tuple[float, float]:
        """AdamW's ``(beta1, beta2)`` as two floats in ``[0, 1)``; ``ValueError`` naming the option otherwise."""
        try:
            betas = tuple(float(b) for b in option)
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas={option!r}: give two numbers in [0, 1), e.g. [0.9, 0.999] (--model.betas)")
        return betas

    @staticmethod
    def _check_drop_path(option, backbone) -> tuple[float, float] | None:
        if option is None:
            return None
        rates = (option, option) if isinstance(option, (int, float)) else tuple(option)
        if len(rates) != 2:
            raise ValueError(f"drop_path={option!r}: give a rate or [start, end] (--model.drop_path)")
        rates = (check_rate(rates[0]), check_rate(rates[1]))
        if max(rates) > 0 and not backbone.supports_drop_path:
            raise ValueError(
                f"drop_path={option!r} but {type(backbone).__name__} has no drop-path hook "
                "(atomzoo.nn.droppath.DropPath; SchNet, PaiNN, MACE and ET have one); set --model.drop_path null"
            )
        return rates

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Set the scheduled drop-path rate of the backbone (when ``drop_path`` is given); on the first
        batch of a fine-tune, the step-0 check of ``init_from`` (:mod:`atomzoo.objectives.init_check`)."""
        if self._step_zero is not None:
            check, self._step_zero = self._step_zero, None
            if self.global_step == 0:  # not when a run resumes
                line = check.run(self.backbone, batch)
                if self._trainer is None or self.trainer.is_global_zero:
                    init_check.announce(line)
        if self.drop_path_schedule is not None:
            rate = drop_path_rate(self.global_step, *self.drop_path_schedule, self.drop_path_steps)
            self.backbone.set_drop_path(rate)
            self.log("train/drop_path", rate, batch_size=_batch_size(batch))

    @classmethod
    def backbone_defaults(cls, model_args: dict, backbone_args: dict) -> dict:
        """Backbone options this objective needs and the backbone config leaves unset (``zoo`` applies them).

        Called by the ``zoo`` CLI before anything is built, with the objective's and the backbone's
        ``init_args`` as plain dicts; returns ``{option: value}`` to set on the backbone (only options
        the backbone class accepts are applied). SCD uses it to give a shipped backbone config
        (``condition_dim: 0``) its per-layer conditioning.

        Base: with ``init_from`` a checkpoint / export whose backbone was conditioned (an SCD
        pretraining run) and a backbone config that leaves ``condition_dim`` at 0, take the
        checkpoint's ``condition_dim``, so that its adaLN weights have somewhere to go.
        """
        init_from = model_args.get("init_from")
        if not init_from or backbone_args.get("condition_dim"):
            return {}
        try:
            spec = model_files.read(init_from).backbone
        except (OSError, ValueError):  # a missing / broken file is reported when the model loads it
            return {}
        dim = (spec.get("init_args") or {}).get("condition_dim")
        return {"condition_dim": int(dim)} if dim else {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """As Lightning's, and checkpoints written before the ``atomzoo`` namespace (class paths
        such as ``objectives.Regression``) load too, with a ``FutureWarning``.

        Options the ``zoo`` CLI links from the data into every objective (``targets``, ``forces``)
        are recorded in the checkpoint even for objectives that do not take them (the
        self-supervised ones); they are dropped here instead of failing the load."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and os.path.isfile(checkpoint_path):
            # the one reader translates old class paths (with a FutureWarning naming the new ones)
            record = model_files.read_checkpoint(checkpoint_path, f"{cls.__name__}.load_from_checkpoint")
            hparams = dict(record.hyperparameters)  # a copy: the record is shared
            changed = drop_linked_options(hparams, cls) or bool(record.renamed)
            if changed:
                buffer = io.BytesIO()
                torch.save({**record.checkpoint, "hyper_parameters": hparams}, buffer)
                buffer.seek(0)
                checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def log_mean(self, name: str, value: torch.Tensor, num_samples: int, **kwargs) -> None:
        """Log the exact per-sample mean of ``value`` over the epoch and all DDP ranks.

        ``value`` is a batch's mean over its ``num_samples`` samples; a torchmetrics ``MeanMetric``
        weighted by ``num_samples`` sums value x samples and samples over batches and ranks, so an
        uneven last batch or uneven DDP shards do not bias the result (Lightning's default reduction
        averages the per-rank means). ``kwargs`` go to ``self.log`` (e.g. ``prog_bar``).
        """
        key = name.replace("/", "__")
        if key not in self.epoch_means:
            self.epoch_means[key] = MeanMetric().to(value.device)
        metric = self.epoch_means[key]
        metric.update(value.detach().float(), torch.full_like(value.detach().float(), float(num_samples)))
        self.log(name, metric, batch_size=num_samples, on_step=False, on_epoch=True,
                 metric_attribute=f"epoch_means.{key}", **kwargs)  # fmt: skip

    # ----- torch.compile (atomzoo.nn.compile) --------------------------------------------------------
    def trains_through_forces(self) -> bool:
        """Whether training differentiates through position gradients (double backward); such runs
        cannot be compiled. Objectives with a force loss override this."""
        return False

    def configure_model(self) -> None:
        """Compile the backbone when ``compile=True`` (Lightning calls this once the Trainer runs)."""
        if not self.compile_backbone:
            return
        from atomzoo.nn.compile import compile_backbone

        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and self.trains_through_forces():
            warnings.warn(
                f"--model.compile true: {type(self).__name__} trains on forces, i.e. differentiates the "
                "backbone's position gradients (double backward), which torch.compile does not support "
                "(torch: 'aot_autograd does not currently support double backward'); training runs eager. "
                "Compile for evaluation and prediction with `zoo test|predict --model.compile true`.",
                stacklevel=2,
            )
            return
        # the device the strategy will run on: Lightning calls this hook before moving the model there
        compile_backbone(self.backbone, trainer.strategy.root_device if trainer is not None else self.device)

    # ----- what the model takes from the data, and what its numbers depend on (provenance.py) ---------
    def setup(self, stage: str) -> None:
        """Lightning hook, called after the DataModule's own ``setup(stage)``: ask the DataModule once for
        its :class:`~atomzoo.nn.statistics.DataSummary` (``datamodule.data_summary(self.statistics_request())``;
        ``None`` when the data is not an AtomsDataModule), record the provenance
        (:func:`atomzoo.objectives.provenance.on_setup`) and hand the summary to :meth:`on_data_summary`.

        A backbone may take statistics of the data too (optional hooks, duck-typed, on every submodule
        that has them: the backbone and copies of it such as JEPA's EMA target): when one's
        ``neighbour_statistics_cutoff()`` returns a cutoff, the summary also holds the training split's
        neighbour statistics there (``DataSummary.neighbours``), and each one's ``on_data_summary(summary)``
        receives the summary (before the objective's) and returns a line to log or ``None``. MACE uses
        them for ``avg_num_neighbors="auto"`` (mace-torch's ``compute_avg_num_neighbors``)."""
        trainer = self._trainer
        self._check_precision(trainer)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        # a backbone that takes a statistic of the data (MACE's avg_num_neighbors="auto") says at which cutoff;
        # every such module of the objective (JEPA's EMA target is a copy of the backbone) is handed the summary
        takers = [m for m in self.modules() if callable(getattr(m, "neighbour_statistics_cutoff", None))]
        cutoffs = [c for c in (m.neighbour_statistics_cutoff() for m in takers) if c is not None]
        options = {"neighbour_cutoff": cutoffs[0]} if cutoffs else {}
        summary = (datamodule.data_summary(self.statistics_request(), **options)
                   if hasattr(datamodule, "data_summary") else None)  # fmt: skip
        provenance.on_setup(self, stage, summary)
        if self.init_from and self.init_check and stage == "fit":
            init_check.check_settings(self.backbone, self.init_from, summary.elements if summary else None)
            self._step_zero = init_check.StepZeroCheck(self.init_from)
        lines = [m.on_data_summary(summary) for m in takers if callable(getattr(m, "on_data_summary", None))]
        for line in dict.fromkeys(line for line in lines if line):  # once each (the EMA copy logs the same)
            rank_zero_info(line)
        self.on_data_summary(summary)

    def on_fit_start(self) -> None:
        """Free the model files read while the run was built (:func:`atomzoo.model_files.read` caches the
        whole unpickled ``init_from`` checkpoint, optimizer states included, for its four readers, which
        have all run by now): training should not carry that memory."""
        model_files.clear_cache()

    def _check_precision(self, trainer) -> None:
        """Refuse a backbone built in float64 (e.g. ``MACE(dtype="float64")``) under a trainer precision
        other than ``64-true``: Lightning then feeds it float32 positions and it fails deep inside
        (e3nn: "both inputs should have same dtype"). Raises ValueError naming the precision it needs."""
        precision = str(getattr(trainer, "precision", "")) if trainer is not None else ""
        if not precision or precision.startswith("64"):
            return
        if any(p.dtype == torch.float64 for p in self.backbone.parameters()):
            raise ValueError(
                f"{type(self.backbone).__name__} was built in float64 (dtype: float64) but --trainer.precision is "
                f"{precision}: a float64 backbone needs --trainer.precision 64-true (or build it with dtype float32)"
            )

    def statistics_request(self):
        """The training statistics this objective standardises with, as a
        :class:`~atomzoo.nn.statistics.StatisticsRequest`; ``None`` (default): metadata only."""
        return None

    def on_data_summary(self, summary) -> None:
        """Receive the DataModule's :class:`~atomzoo.nn.statistics.DataSummary` at every ``setup``
        (``None`` without an AtomsDataModule). Default: nothing; Regression takes its statistics."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        provenance.on_save_checkpoint(self, checkpoint)
        # `compile` is how this run executed, not part of the model: leave it out of the checkpoint so that
        # `zoo test|predict --ckpt_path ... --model.compile true` is not overridden by the saved value
        # (Lightning's CLI applies a checkpoint's hyperparameters over the command line)
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None and "compile" in hparams:
            checkpoint["hyper_parameters"] = {k: v for k, v in hparams.items() if k != "compile"}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        provenance.on_load_checkpoint(self, checkpoint)

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but a frozen backbone (``freeze_backbone``) stays in eval mode."""
        super().train(mode)
        if getattr(self, "freeze_backbone", False):
            self.backbone.eval()
        return self

    # ----- the loss and the steps (shared by every objective that implements compute_loss) ---------
    def compute_loss(self, batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch: scalars, the total under ``"loss"``, and optionally
        ``"embedding"`` ``[G, D]`` for the collapse diagnostics. ``generator`` (CPU) seeds every random
        draw when given (evaluation). Subclasses implement this (or override the steps)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch, generator=None) -> dict")

    def evaluation_terms(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Terms logged by validation / test; default :meth:`compute_loss` with the seeded generator.
        Override to add evaluation-only terms (SCD adds ``loss_masked``)."""
        return self.compute_loss(batch, generator)

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log every 0-dim term as ``{stage}/{name}`` (``loss`` on the progress bar). Outside training
        each is the exact per-sample mean over the epoch and all DDP ranks (:meth:`log_mean`)."""
        for name, value in terms.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                if stage == "train":
                    self.log(f"{stage}/{name}", value, batch_size=batch_size, prog_bar=name == "loss")
                else:
                    self.log_mean(f"{stage}/{name}", value, batch_size, prog_bar=name == "loss" and stage == "val")

    def log_diagnostics(self, embedding: torch.Tensor | None) -> None:
        """Collapse diagnostics (:mod:`atomzoo.objectives.diagnostics`) of ``embedding`` every
        ``self.diagnostics_every_n_steps`` optimizer steps (attribute; 0 or absent: never)."""
        if embedding is None:
            return
        from .diagnostics import log_collapse_diagnostics

        log_collapse_diagnostics(self, embedding, int(getattr(self, "diagnostics_every_n_steps", 0) or 0))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        terms = self.compute_loss(batch)
        self.log_terms("train", terms, _batch_size(batch))
        self.log_diagnostics(terms.get("embedding"))
        return terms["loss"]

    @staticmethod
    def evaluation_generator(batch_idx: int) -> torch.Generator:
        """The CPU generator evaluation draws its corruption from: seeded by the batch index."""
        return torch.Generator().manual_seed(int(batch_idx))

    def validation_step(self, batch, batch_idx: int) -> None:
        terms = self.evaluation_terms(batch, self.evaluation_generator(batch_idx))
        self.log_terms("val", terms, _batch_size(batch))
        self.log_validation_diagnostics(terms.get("embedding"), _batch_size(batch))

    def log_validation_diagnostics(self, embedding: torch.Tensor | None, batch_size: int) -> None:
        """The collapse diagnostics of the validation batch's embedding, ``val/emb_std``, ``val/emb_erank`` and
        ``val/emb_sigreg`` (:func:`atomzoo.objectives.diagnostics.collapse_statistics` per batch, then the
        per-molecule mean over the validation set), when the objective logs training diagnostics
        (``diagnostics_every_n_steps`` > 0). Unlike ``train/emb_*`` they are measured on the validation
        molecules, which no ``--data.corruption`` touches: what a model pretrained on corrupted data
        makes of clean molecules. Deterministic and RNG-free (fixed SIGReg directions): training is
        unchanged by them."""
        if embedding is None or embedding.dim() != 2 or embedding.size(0) < 2:
            return
        if int(getattr(self, "diagnostics_every_n_steps", 0) or 0) <= 0:
            return
        from .diagnostics import collapse_statistics

        for name, value in collapse_statistics(embedding).items():
            self.log_mean(f"val/{name}", value, batch_size)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log_terms("test", self.evaluation_terms(batch, self.evaluation_generator(batch_idx)), _batch_size(batch))

    # ----- optimisation ---------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (objectives that freeze parts override or filter)."""
        return [p for p in self.parameters() if p.requires_grad]

    def run_length(self) -> int:
        """Optimizer steps of the whole run (Lightning's ``estimated_stepping_batches``: ``max_steps``
        or epochs x batches / accumulation), the one run length every schedule uses (learning rate,
        JEPA's EMA momentum). Without a trainer, or for an unbounded run, ``max(warmup_steps, 1)``."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else self.warmup_steps
        return int(total) if math.isfinite(total) and total > 0 else max(self.warmup_steps, 1)

    def _lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step ``step``: linear warmup, then cosine (or flat)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.scheduler != "cosine":
            return 1.0
        # The run length is asked for only once warmup is over: at step 0 it would make Lightning
        # load the train dataloader before a checkpoint's loader state is restored (mid-epoch resume).
        if getattr(self, "_total_steps_cache", None) is None:
            self._total_steps_cache = self.run_length()
        span = max(1, self._total_steps_cache - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        # weight decay on weight matrices only (objectives/param_groups.py: as the SCD and MACE code)
        groups = parameter_groups(self, self.weight_decay, only=self.trainable_parameters())
        groups = scale_learning_rate(groups, self.backbone.parameters(), self.backbone_lr_multiplier, self.lr)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
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
                group["lr"] = self.lr * group.get("lr_scale", 1.0) * (self.global_step + 1) / self.warmup_steps
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.on_after_optimizer_step()

    def on_after_optimizer_step(self) -> None:
        """Called once after every optimizer step (not per micro-batch under gradient accumulation).
        JEPA updates its EMA target here. Default: nothing."""

    def configure_callbacks(self):
        if self.ema_decay is None:
            return []
        return [EMAWeightAveraging(decay=self.ema_decay)]


#: options ``zoo`` links from the DataModule into the objective (``zoo/cli.py``)
LINKED_OPTIONS = ("targets", "forces", "stress")


def _init_parameters(cls) -> set[str] | None:
    """Names ``cls(...)`` accepts, following ``**kwargs`` up the MRO (None: accepts anything)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
        if klass is Objective:
            return names
    return None


def drop_linked_options(hparams: dict | None, cls) -> bool:
    """Remove :data:`LINKED_OPTIONS` the checkpoint's objective class does not accept; True if any was.

    The ``zoo`` CLI links ``--data.targets`` / the data's ``forces`` into every objective, so a
    checkpoint of a self-supervised objective records them although its class does not take them.
    ``hparams`` (a checkpoint's ``hyper_parameters``, with ``_class_path`` when the CLI wrote it;
    otherwise ``cls`` is the objective) is edited in place. Used by :meth:`Objective.load_from_checkpoint`
    and by ``zoo fit|test|validate|predict --ckpt_path`` (:mod:`atomzoo.cli`)."""
    if not hparams:
        return False
    class_path = hparams.get("_class_path")
    try:
        target = model_files.resolve_class(class_path) if class_path else cls
    except model_files.ModelFileError:
        return False  # Lightning reports the class path itself
    accepted = _init_parameters(target)
    if accepted is None:
        return False
    dropped = [k for k in LINKED_OPTIONS if k in hparams and k not in accepted]
    for key in dropped:
        del hparams[key]
    return bool(dropped)


def _batch_size(batch) -> int:
    """Molecules in a PyG batch (``num_graphs``), else the length of its first dimension."""
    n = getattr(batch, "num_graphs", None)
    return int(n) if n is not None else len(batch)
