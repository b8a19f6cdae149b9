"""Supervised regression of molecular properties on top of any backbone.

For each target a per-atom MLP head reads the backbone's scalar features; the per-atom outputs are
pooled per molecule (``sum`` for extensive properties, ``mean`` for intensive ones) and mapped back
to physical units:

    sum pooling:   y_hat = ref(z) + n * mu + sigma * sum_i o_i
    mean pooling:  y_hat = ref(z) + mu + sigma * mean_i o_i

where ``ref(z)`` is the optional sum of per-element reference energies (QM9's atom references for
U0/U/H/G), ``mu`` the training-set mean (per atom for sum pooling) and ``sigma`` the training-set
standard deviation of the residual. The loss (L1 or MSE) is taken on ``(y_hat - y) / sigma`` so that
several targets weigh equally. The final sums are done in float64: QM9's U0 is ~1e4 eV, where
float32 resolves only ~1 meV.

Metrics: mean absolute error per target in the target's unit, shown in meV for eV targets
(``val/homo_mae_meV``, ``test/u0_mae_meV``).

Forces (``forces=True``, linked from the DataModule's ``forces`` attribute by the CLI, e.g. MD17):
the target ``energy`` is predicted as above and the forces are its negative gradient with respect to
the positions, ``F = -dE/dpos``, by autograd (``create_graph`` in training so the force loss trains the
weights; inside ``torch.enable_grad()`` and outside inference mode in validation/test/predict, so it
works with Lightning's default ``inference_mode=True``). The loss is

    energy_weight * L((E_hat - E) / sigma_E) + force_weight * L((F_hat - F) / f_rms)

with ``L`` the chosen L1/MSE mean, ``sigma_E`` the energy std above and ``f_rms`` the root mean square
of the training force components (so both terms are dimensionless and O(1)). Metrics add the force MAE
over all components, ``val/forces_mae_meV_per_A`` (meV/A for eV/A forces).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter
from torchmetrics import MeanAbsoluteError

from atomzoo.backbones.base import Backbone, with_positions

from .base import Objective
from .denoising import AuxDenoising
from .heads import AtomwiseMLP
from .units import display_unit, metric_suffix

MAX_Z = 100


class Regression(Objective):
    """Property regression (one or several targets).

    Args:
        backbone: any backbone.
        targets: target names; linked automatically from ``--data.targets`` by the CLI.
        pooling: ``"sum"``, ``"mean"``, a mapping target -> pooling, or ``None`` to use the dataset's
            default per target (sum for extensive, mean for intensive quantities).
        atomref: subtract per-element reference values where the dataset has them (QM9: U0/U/H/G).
        standardize: scale outputs by training-set statistics (strongly recommended).
        loss: ``"l1"`` or ``"mse"`` on standardised errors.
        head_hidden: hidden size of the per-atom heads (default ``width // 2``; 0: one Linear layer,
            which with ``freeze_backbone`` is a linear probe).
        forces: also predict forces ``-dE/dpos`` of the target ``energy`` and train on them (needs
            per-atom ``forces`` in the data); linked from ``--data.forces`` by the CLI.
        energy_weight, force_weight: weights of the standardised energy and force loss terms.
        aux_denoising_weight: weight of an auxiliary denoising loss during training (0: off; methods.md
            fine-tuning recipe: 0.1). One extra backbone pass on positions + Gaussian noise of
            ``aux_denoising_sigma`` Angstrom (0.005); :class:`atomzoo.objectives.denoising.AuxDenoising`'s
            equivariant head predicts noise / sigma (MSE, logged as ``train/aux_denoising``).
        Other arguments: see :class:`~atomzoo.objectives.base.Objective` (optimizer, schedule, EMA,
            ``init_from`` / ``freeze_backbone`` for fine-tuning and probing).
    """

    def __init__(
        self,
        backbone: Backbone,
        targets: list[str] | None = None,
        pooling: str | dict[str, str] | None = None,
        atomref: bool = True,
        standardize: bool = True,
        loss: str = "l1",
        head_hidden: int | None = None,
        forces: bool = False,
        energy_weight: float = 1.0,
        force_weight: float = 100.0,
        aux_denoising_weight: float = 0.0,
        aux_denoising_sigma: float = 0.005,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters()
        # auxiliary denoising ("noisy nodes", fine-tuning recipe of methods.md): an extra backbone pass
        # on positions + N(0, aux_denoising_sigma^2) noise, MSE of atomzoo.objectives.denoising's head to noise/sigma
        self.aux_denoising_weight = float(aux_denoising_weight)
        self.aux_denoising = AuxDenoising(backbone, aux_denoising_sigma) if aux_denoising_weight > 0 else None
        if not targets:
            raise ValueError(
                "Regression needs targets: set --data.targets (linked to the model automatically) "
                "or --model.targets"
            )
        if loss not in ("l1", "mse"):
            raise ValueError(f"loss={loss!r}: choose 'l1' or 'mse' (--model.loss)")
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.pooling_option = pooling
        self.use_atomref = atomref
        self.standardize = standardize
        self.loss_name = loss
        num = len(self.targets)
        self.heads = nn.ModuleList(AtomwiseMLP(backbone.width, 1, head_hidden) for _ in range(num))
        # filled from the training split in setup(), restored from checkpoints afterwards
        self.register_buffer("atomref_table", torch.zeros(num, MAX_Z + 1, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(num, dtype=torch.float64))
        self.register_buffer("std", torch.ones(num, dtype=torch.float64))
        self.register_buffer("sum_pooled", torch.ones(num, dtype=torch.bool))
        self.register_buffer("stats_ready", torch.tensor(False))
        self.units = ["" for _ in self.targets]
        self.metrics = nn.ModuleDict(
            {f"{stage}_{t}": MeanAbsoluteError() for stage in ("val", "test") for t in self.targets}
        )
        self.forces = bool(forces)
        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        self.force_unit = "eV/A"
        if self.forces:
            if "energy" not in self.targets:
                raise ValueError(f"forces=True needs the target 'energy' (forces are -dE/dpos); targets are {self.targets}")
            self.energy_index = self.targets.index("energy")
            self.register_buffer("force_rms", torch.ones((), dtype=torch.float64))
            self.force_metrics = nn.ModuleDict({stage: MeanAbsoluteError() for stage in ("val", "test")})

    # ----- statistics from the data -------------------------------------------------------------
    def _resolve_pooling(self, default: str, target: str) -> str:
        option = self.pooling_option
        choice = option.get(target, default) if isinstance(option, dict) else (option or default)
        if choice not in ("sum", "mean"):
            raise ValueError(f"pooling for {target!r} is {choice!r}: choose 'sum' or 'mean' (--model.pooling)")
        return choice

    def setup(self, stage: str) -> None:
        super().setup(stage)  # records what the numbers depend on (objectives/provenance.py)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "targets_info"):
            if not bool(self.stats_ready):
                raise RuntimeError("Regression needs an AtomsDataModule to compute target statistics")
            return
        datamodule.setup(stage)
        infos = datamodule.targets_info()
        names = [info.name for info in infos]
        if names != self.targets:
            raise ValueError(
                f"model targets {self.targets} differ from the data's targets {names}; set them with --data.targets"
            )
        self.units = [info.unit for info in infos]
        if self.forces:
            self._check_force_data(datamodule)
        if bool(self.stats_ready):
            return
        if self.forces:
            self.force_rms.fill_(self._training_force_rms(datamodule))
        self.fit_statistics(infos, datamodule.training_labels(), datamodule.training_element_counts(MAX_Z))

    def _check_force_data(self, datamodule) -> None:
        store = getattr(datamodule, "store", None)
        if store is None or "forces" not in store.atom_arrays():
            raise ValueError(
                f"forces=True but {type(datamodule).__name__} has no per-atom 'forces' array; "
                "use a dataset with forces or set --model.init_args.forces false"
            )
        self.force_unit = getattr(datamodule, "force_unit", store.meta.get("units", {}).get("forces", "eV/A"))

    @staticmethod
    def _training_force_rms(datamodule) -> float:
        """Root mean square of the training split's force components (in the data's force unit)."""
        store = datamodule.store
        idx = np.sort(datamodule.splits["train"])
        total, count = 0.0, 0
        for chunk in np.array_split(idx, max(1, idx.size // 10_000)):
            rows = np.concatenate([np.arange(store.offsets[i], store.offsets[i + 1]) for i in chunk])
            f = np.asarray(store.arrays["forces"][rows], dtype=np.float64)
            total, count = total + float((f * f).sum()), count + f.size
        rms = (total / count) ** 0.5 if count else 1.0
        return rms if rms > 0 else 1.0

    @torch.no_grad()
    def fit_statistics(self, infos, labels, element_counts) -> None:
        """Set atom references, pooling and mean/std from training labels ``[n, T]`` and element counts ``[n, 101]``."""
        labels = torch.as_tensor(labels, dtype=torch.float64)
        counts = torch.as_tensor(element_counts, dtype=torch.float64)
        n_atoms = counts.sum(1)
        for k, info in enumerate(infos):
            pooling = self._resolve_pooling(info.pooling, info.name)
            self.sum_pooled[k] = pooling == "sum"
            table = torch.zeros(MAX_Z + 1, dtype=torch.float64)
            if self.use_atomref and info.atomref is not None:
                ref = torch.as_tensor(info.atomref, dtype=torch.float64)
                table[: ref.numel()] = ref
            self.atomref_table[k] = table
            residual = labels[:, k] - counts @ table
            if not self.standardize:
                self.mean[k], self.std[k] = 0.0, 1.0
                continue
            if pooling == "sum":
                self.mean[k] = (residual / n_atoms).mean()
                spread = residual - n_atoms * self.mean[k]
            else:
                self.mean[k] = residual.mean()
                spread = residual - self.mean[k]
            std = spread.std() if spread.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
            self.std[k] = std if std > 0 else 1.0
        self.stats_ready.fill_(True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["target_units"] = self.units
        checkpoint["force_unit"] = self.force_unit

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.units = checkpoint.get("target_units", self.units)
        self.force_unit = checkpoint.get("force_unit", self.force_unit)

    # ----- forward ------------------------------------------------------------------------------
    def forward(self, data) -> Tensor:
        """Predicted targets ``[num_graphs, T]`` float64 in physical units."""
        out = self.backbone(data)
        return self.predict_from_features(out.scalars, data)

    def predict_from_features(self, scalars: Tensor, data) -> Tensor:
        num_graphs = int(data.num_graphs)
        per_atom = torch.cat([head(scalars) for head in self.heads], dim=-1)  # [N, T]
        pooled_sum = scatter(per_atom, data.batch, dim=0, dim_size=num_graphs, reduce="sum").double()
        n_atoms = scatter(torch.ones_like(data.batch, dtype=torch.float64), data.batch, dim=0, dim_size=num_graphs)
        n = n_atoms.unsqueeze(-1)
        pooled = torch.where(self.sum_pooled, pooled_sum, pooled_sum / n)
        offset = torch.where(self.sum_pooled, n * self.mean, self.mean.expand_as(pooled))
        ref = scatter(self.atomref_table.T[data.z], data.batch, dim=0, dim_size=num_graphs, reduce="sum")
        return ref + offset + self.std * pooled

    def loss_fn(self, pred: Tensor, target: Tensor) -> Tensor:
        error = ((pred - target) / self.std).float()
        return error.abs().mean() if self.loss_name == "l1" else error.pow(2).mean()

    def predict_with_forces(self, data, training: bool) -> tuple[Tensor, Tensor]:
        """``(targets [num_graphs, T] float64, forces [N, 3])`` with ``forces = -dE/dpos``.

        Works under ``torch.no_grad()`` and ``torch.inference_mode()`` (Lightning's evaluation loops):
        the batch is cloned out of inference mode and gradients are enabled locally. In training the
        graph is kept (``create_graph``) so the force loss back-propagates to the weights.
        """
        if training:
            pos = data.pos.clone().requires_grad_(True) if not data.pos.requires_grad else data.pos
            pred = self(with_positions(data, pos))
            grad = torch.autograd.grad(pred[:, self.energy_index].sum(), pos, create_graph=True)[0]
            return pred, -grad
        with torch.inference_mode(False), torch.enable_grad():
            data = data.clone()  # tensors made under inference mode cannot take part in autograd
            pos = data.pos.detach().requires_grad_(True)
            pred = self(with_positions(data, pos))
            grad = torch.autograd.grad(pred[:, self.energy_index].sum(), pos)[0]
        return pred.detach(), -grad.detach()

    def force_loss_fn(self, pred: Tensor, target: Tensor) -> Tensor:
        error = (pred - target) / self.force_rms.float()
        return error.abs().mean() if self.loss_name == "l1" else error.pow(2).mean()

    def combined_loss(self, pred: Tensor, forces: Tensor | None, batch) -> Tensor:
        loss = self.loss_fn(pred, batch.y)
        if forces is None:
            return loss
        return self.energy_weight * loss + self.force_weight * self.force_loss_fn(forces, batch.forces)

    # ----- steps --------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        if self.forces:
            pred, forces = self.predict_with_forces(batch, training=True)
            loss = self.combined_loss(pred, forces, batch)
        else:
            loss = self.loss_fn(self(batch), batch.y)
        if self.aux_denoising is not None:
            aux = self.aux_denoising.loss(self.backbone, batch)
            self.log("train/aux_denoising", aux, batch_size=batch.num_graphs)
            loss = loss + self.aux_denoising_weight * aux
        self.log("train/loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        if self.forces:
            pred, forces = self.predict_with_forces(batch, training=False)
            loss = self.combined_loss(pred, forces, batch)
            _, factor = display_unit(self.force_unit)
            metric = self.force_metrics[stage]
            error = (forces - batch.forces).float() * factor
            metric.update(error, torch.zeros_like(error))
            self.log(f"{stage}/forces_mae_{metric_suffix(self.force_unit)}", metric, batch_size=batch.num_graphs, prog_bar=stage == "val")
        else:
            pred = self(batch)
            loss = self.loss_fn(pred, batch.y)
        self.log_mean(f"{stage}/loss", loss, batch.num_graphs, prog_bar=stage == "val")
        for k, name in enumerate(self.targets):
            _, factor = display_unit(self.units[k])
            metric = self.metrics[f"{stage}_{name}"]
            # the error is formed in float64 (large absolute energies), then scaled to display units
            error = ((pred[:, k] - batch.y[:, k]) * factor).float()
            metric.update(error, torch.zeros_like(error))
            self.log(f"{stage}/{name}_mae_{metric_suffix(self.units[k])}", metric, batch_size=batch.num_graphs, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        if self.forces:
            pred, forces = self.predict_with_forces(batch, training=False)
            return {"idx": batch.idx, "prediction": pred, "forces": forces, "batch": batch.batch, "targets": self.targets}
        return {"idx": batch.idx, "prediction": self(batch), "targets": self.targets}
