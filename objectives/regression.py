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
the positions, ``F = -dE/dpos``, by :func:`atomzoo.objectives.forces.energy_and_forces` (autograd;
``create_graph`` in training so the force loss trains the weights; works under Lightning's default
``inference_mode=True`` in validation/test/predict). The loss is

    energy_weight * L((E_hat - E) / sigma_E) + force_weight * L((F_hat - F) / f_rms)

with ``L`` the chosen L1/MSE mean, ``sigma_E`` the energy std above and ``f_rms`` the root mean square
of the training force components (so both terms are dimensionless and O(1)). Metrics add the force MAE
over all components, ``val/forces_mae_meV_per_A`` (meV/A for eV/A forces).

The pieces, each with one job: statistics are asked from the DataModule
(:meth:`~atomzoo.datamodules.base.AtomsDataModule.target_statistics`), forces come from
:func:`~atomzoo.objectives.forces.energy_and_forces`, the loss terms are
:class:`~atomzoo.objectives.losses.StandardizedLoss` / :class:`~atomzoo.objectives.losses.ForceLoss`,
the auxiliary denoising is :class:`~atomzoo.objectives.denoising.AuxDenoising` and drop-path is
:mod:`atomzoo.nn.droppath`.

Fine-tuning as the references do it (``docs/objectives.md``, "Fine-tuning"): with
``aux_denoising_weight > 0`` every training step runs ONE backbone pass on positions plus Gaussian
noise (``aux_denoising_sigma``, 0.005 A); that pass predicts the targets (property loss) and the
noise (auxiliary loss), as in Zaidi et al. (arXiv 2206.00133) and SCD (arXiv 2603.17196).
Validation, test and prediction use clean positions. ``aux_denoising_weight="auto"`` takes SCD's
per-target weight (:func:`scd_aux_denoising_weight`); ``drop_path`` sets / schedules drop-path in
backbones that have the hook (SchNet, PaiNN, MACE).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter
from torchmetrics import MeanAbsoluteError

from atomzoo.backbones.base import Backbone
from atomzoo.datamodules.base import TargetStatistics, compute_target_statistics
from atomzoo.datamodules.checks import MAX_Z

from .base import Objective
from .denoising import AuxDenoising
from .forces import energy_and_forces
from .heads import AtomwiseMLP
from .losses import ForceLoss, StandardizedLoss
from .units import display_unit, metric_suffix


#: SCD's fine-tuning auxiliary-denoising weights (Perez & Gomez-Bombarelli, arXiv 2603.17196):
#: 0.2 for alpha, ZPVE and Cv, none for the energies U0/U/H/G, 0.1 for every other target.
SCD_AUX_WEIGHTS = {"alpha": 0.2, "zpve": 0.2, "cv": 0.2, "u0": 0.0, "u": 0.0, "h": 0.0, "g": 0.0,
                   "u0_atom": 0.0, "u_atom": 0.0, "h_atom": 0.0, "g_atom": 0.0}
SCD_AUX_DEFAULT = 0.1


def scd_aux_denoising_weight(targets: list[str]) -> float:
    """SCD's auxiliary-denoising weight for ``targets`` (QM9 names; others get 0.1).

    Raises ``ValueError`` when the targets' weights differ (e.g. ``["homo", "u0"]``): set
    ``--model.aux_denoising_weight`` to a number then.
    """
    weights = {t: SCD_AUX_WEIGHTS.get(t, SCD_AUX_DEFAULT) for t in targets}
    if len(set(weights.values())) > 1:
        raise ValueError(
            f"aux_denoising_weight='auto': SCD's per-target weights differ for {weights}; "
            "set --model.aux_denoising_weight to a number"
        )
    return next(iter(weights.values()))


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
        aux_denoising_weight: weight of the auxiliary denoising loss in training (0: off; a number,
            or ``"auto"`` for SCD's per-target weight, :func:`scd_aux_denoising_weight`). The
            training pass then sees positions + ``N(0, aux_denoising_sigma^2)`` noise and predicts
            both the targets and the noise (:class:`~atomzoo.objectives.denoising.AuxDenoising`,
            logged as ``train/aux_denoising``).
        aux_denoising_sigma: that noise in Angstrom (0.005, both references).
        aux_denoising_pretrained_head: with ``init_from`` a Denoising / SCD checkpoint, reuse its
            noise head and target normaliser (as the references do); ``False``: a fresh head.
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
        aux_denoising_weight: float | str = 0.0,
        aux_denoising_sigma: float = 0.005,
        aux_denoising_pretrained_head: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters()
        if not targets:
            raise ValueError(
                "Regression needs targets: set --data.targets (linked to the model automatically) "
                "or --model.targets"
            )
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.target_loss = StandardizedLoss(loss)
        self.force_loss = ForceLoss(loss)
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
        # auxiliary denoising: one noisy pass predicts targets and noise (module docstring)
        if aux_denoising_weight == "auto":
            aux_denoising_weight = scd_aux_denoising_weight(self.targets)
        elif isinstance(aux_denoising_weight, str):
            raise ValueError(
                f"aux_denoising_weight={aux_denoising_weight!r}: give a number or 'auto' (--model.aux_denoising_weight)"
            )
        if aux_denoising_weight < 0:
            raise ValueError(f"aux_denoising_weight={aux_denoising_weight} must be >= 0 (--model.aux_denoising_weight)")
        self.aux_denoising_weight = float(aux_denoising_weight)
        self.aux_denoising = AuxDenoising(backbone, aux_denoising_sigma) if self.aux_denoising_weight > 0 else None
        if self.aux_denoising is not None and aux_denoising_pretrained_head and self.init_from:
            self.aux_denoising.load_pretrained(backbone, self.init_from)

    def trains_through_forces(self) -> bool:
        """A force loss differentiates the position gradient: no torch.compile in training."""
        return self.forces and self.force_weight > 0

    # ----- statistics from the data -------------------------------------------------------------
    def _pooling_map(self) -> dict[str, str] | None:
        option = self.pooling_option
        if option is None:
            return None
        if isinstance(option, dict):
            return {t: option[t] for t in self.targets if t in option}
        return {t: option for t in self.targets}

    def setup(self, stage: str) -> None:
        super().setup(stage)  # records what the numbers depend on (objectives/provenance.py)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "target_statistics"):
            if not bool(self.stats_ready):
                raise RuntimeError("Regression needs an AtomsDataModule to compute target statistics")
            return
        datamodule.setup(stage)
        stats = datamodule.target_statistics(
            self.targets, self._pooling_map(), atomref=self.use_atomref, forces=self.forces, max_z=MAX_Z
        )
        self.units = list(stats.units)
        if self.forces:
            self.force_unit = stats.force_unit
        if not bool(self.stats_ready):
            self.apply_statistics(stats)

    @torch.no_grad()
    def apply_statistics(self, stats: TargetStatistics) -> None:
        """Copy the training statistics into the model's buffers (``standardize=False``: mean 0, std 1)."""
        if list(stats.names) != self.targets:
            raise ValueError(f"statistics for {list(stats.names)} but the model's targets are {self.targets}")
        self.sum_pooled.copy_(torch.tensor([p == "sum" for p in stats.pooling]))
        self.atomref_table.copy_(stats.atomref)
        if self.standardize:
            self.mean.copy_(stats.mean)
            self.std.copy_(stats.std)
        else:
            self.mean.fill_(0.0)
            self.std.fill_(1.0)
        if self.forces and stats.force_rms is not None:
            self.force_rms.fill_(stats.force_rms)
        self.stats_ready.fill_(True)

    def fit_statistics(self, infos, labels, element_counts) -> None:
        """Set atom references, pooling and mean/std from training labels ``[n, T]`` and element counts ``[n, 101]``
        (what :meth:`setup` does with the DataModule's :meth:`target_statistics`; forces' RMS not included)."""
        stats = compute_target_statistics(infos, labels, element_counts, self._pooling_map(), self.use_atomref)
        self.apply_statistics(stats)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["target_units"] = self.units
        checkpoint["force_unit"] = self.force_unit

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.units = checkpoint.get("target_units", self.units)
        self.force_unit = checkpoint.get("force_unit", self.force_unit)
        # checkpoints written before the auxiliary-denoising normaliser existed: keep its initial state
        state = checkpoint.get("state_dict", {})
        if self.aux_denoising is not None and any(k.startswith("aux_denoising.head.") for k in state):
            for name, value in self.aux_denoising.normalizer.state_dict().items():
                state.setdefault(f"aux_denoising.normalizer.{name}", value)

    # ----- forward ------------------------------------------------------------------------------
    def forward(self, data) -> Tensor:
        """Predicted targets ``[num_graphs, T]`` float64 in physical units."""
        out = self.backbone(data)
        return self.predict_from_features(out.scalars, data)

    def predict_from_features(self, scalars: Tensor, data) -> Tensor:
        """Heads, pooling and de-standardisation: per-atom ``scalars`` ``[N, F]`` -> ``[num_graphs, T]`` float64."""
        num_graphs = int(data.num_graphs)
        per_atom = torch.cat([head(scalars) for head in self.heads], dim=-1)  # [N, T]
        pooled_sum = scatter(per_atom, data.batch, dim=0, dim_size=num_graphs, reduce="sum").double()
        n_atoms = scatter(torch.ones_like(data.batch, dtype=torch.float64), data.batch, dim=0, dim_size=num_graphs)
        n = n_atoms.unsqueeze(-1)
        pooled = torch.where(self.sum_pooled, pooled_sum, pooled_sum / n)
        offset = torch.where(self.sum_pooled, n * self.mean, self.mean.expand_as(pooled))
        ref = scatter(self.atomref_table.T[data.z], data.batch, dim=0, dim_size=num_graphs, reduce="sum")
        return ref + offset + self.std * pooled

    def predict_with_forces(self, data, training: bool) -> tuple[Tensor, Tensor]:
        """``(targets [num_graphs, T] float64, forces [N, 3])`` with ``forces = -dE/dpos``
        (:func:`~atomzoo.objectives.forces.energy_and_forces`; works under no_grad / inference mode)."""
        return energy_and_forces(self, data, training, self.energy_index)

    def _predict(self, data, training: bool, keep_output: bool = False):
        """``(pred, forces or None, backbone output or None)`` of one pass on ``data``."""
        kept = {}

        def predict(batch) -> Tensor:
            out = self.backbone(batch)
            if keep_output:
                kept["out"] = out
            return self.predict_from_features(out.scalars, batch)

        if self.forces:
            pred, forces = energy_and_forces(predict, data, training, self.energy_index)
        else:
            pred, forces = predict(data), None
        return pred, forces, kept.get("out")

    def compute_loss(self, pred: Tensor, forces: Tensor | None, batch) -> Tensor:
        """Standardised target loss, plus the weighted force loss when ``forces`` is given."""
        loss = self.target_loss(pred, batch.y, self.std)
        if forces is None:
            return loss
        return self.energy_weight * loss + self.force_weight * self.force_loss(forces, batch.forces, self.force_rms)

    # ----- steps --------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        if self.aux_denoising is None:
            pred, forces, _ = self._predict(batch, training=True)
            loss = self.compute_loss(pred, forces, batch)
        else:  # one noisy pass predicts the targets and the noise
            noisy, noise = self.aux_denoising.corrupt(batch)
            pred, forces, out = self._predict(noisy, training=True, keep_output=True)
            aux = self.aux_denoising.loss_from_output(out, noise, update=True)
            self.log("train/aux_denoising", aux, batch_size=batch.num_graphs)
            loss = self.compute_loss(pred, forces, batch) + self.aux_denoising_weight * aux
        self.log("train/loss", loss, batch_size=batch.num_graphs, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        pred, forces, _ = self._predict(batch, training=False)
        loss = self.compute_loss(pred, forces, batch)
        if forces is not None:
            _, factor = display_unit(self.force_unit)
            metric = self.force_metrics[stage]
            error = (forces - batch.forces).float() * factor
            metric.update(error, torch.zeros_like(error))
            self.log(f"{stage}/forces_mae_{metric_suffix(self.force_unit)}", metric, batch_size=batch.num_graphs, prog_bar=stage == "val")
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
        pred, forces, _ = self._predict(batch, training=False)
        if forces is not None:
            return {"idx": batch.idx, "prediction": pred, "forces": forces, "batch": batch.batch, "targets": self.targets}
        return {"idx": batch.idx, "prediction": pred, "targets": self.targets}


__all__ = ["Regression", "scd_aux_denoising_weight"]
