"""Supervised regression of molecular properties on top of any backbone.

For each target a per-atom MLP head reads the backbone's scalar features; the per-atom outputs are
pooled per molecule (``sum`` for extensive properties, ``mean`` for intensive ones) and mapped back
to physical units:

    sum pooling:   y_hat = ref(z) + n * mu + sigma * sum_i o_i
    mean pooling:  y_hat = ref(z) + mu + sigma * mean_i o_i

where ``ref(z)`` is the optional sum of per-element reference energies (QM9's atom references for
U0/U/H/G), ``mu`` the training-set mean (per atom for sum pooling) and ``sigma`` the training-set
standard deviation of the residual. The loss (L1 or MSE) is taken on ``(y_hat - y) / sigma`` so that
several targets weigh equally (``standardize_loss=False``: on ``y_hat - y`` in the target's unit, as SCD's
and Zaidi et al.'s QM9 fine-tuning). The final sums are done in float64: QM9's U0 is ~1e4 eV, where
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

Stress (``stress=True``, linked from the DataModule's ``stress`` attribute by the CLI: an ASE file read
with ``--data.stress_key``): the stress ``sigma = (1/V) dE/d(strain)`` of the same energy, from the same
backward pass as the forces (:func:`atomzoo.objectives.forces.energy_forces_stress`; ASE's sign and
units, eV/A^3 for eV energies), adds ``stress_weight * L((sigma_hat - sigma) / s_rms)`` over the
structures that have a stress (fully periodic, with a finite label; molecules in a mixed batch add
nothing), ``s_rms`` the RMS of the training stress components. Metric: ``val/stress_mae_meV_per_A^3``
over the 9 components (1 meV/A^3 = 0.1602 GPa).

The pieces, each with one job: statistics come from the DataModule's one hand-off at ``setup``
(:meth:`statistics_request` -> ``datamodule.data_summary`` -> :meth:`on_data_summary`, values of
:mod:`atomzoo.nn.statistics`), forces come from :func:`~atomzoo.objectives.forces.energy_and_forces`,
the loss terms are :class:`~atomzoo.objectives.losses.StandardizedLoss` /
:class:`~atomzoo.objectives.losses.ForceLoss`, the auxiliary denoising is
:class:`~atomzoo.objectives.denoising.AuxDenoising` and drop-path is :mod:`atomzoo.nn.droppath`.

Steps: the objective contract of :class:`~atomzoo.objectives.base.Objective` --
:meth:`Regression.compute_loss` returns ``{"loss"}`` (plus ``"aux_denoising"`` in training), the base
class's training / validation / test steps log it, and :meth:`Regression.log_terms` adds the MAE
metrics in validation and test.

Prediction: :meth:`Regression.predict_properties` is the one prediction path -- targets, forces
``-dE/dpos`` and per-atom energies of one pass. ``zoo predict`` (:meth:`predict_step`),
``atomzoo.load(...).predict`` and the ASE calculator (:mod:`atomzoo.calculator`) only read its output.

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

from lightning.pytorch.utilities import rank_zero_info

from atomzoo.backbones.base import Backbone
from atomzoo.nn.statistics import MAX_Z, DataSummary, StatisticsRequest, TargetStatistics, compute_target_statistics
from atomzoo.units import display_unit, metric_suffix

from . import provenance
from .base import Objective
from .denoising import AuxDenoising
from .forces import energy_forces_stress
from .heads import AtomwiseMLP
from .losses import ForceLoss, StandardizedLoss, StressLoss


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


def fitted_atomref_line(name: str, stats: TargetStatistics) -> str:
    """The log line of a target's least-squares references: ``zoo: atomref of energy fitted by least
    squares on 950 training structures (eV per atom): H -13.571, C -1029.503, O -2041.112 ...``."""
    from ase.data import chemical_symbols

    k = stats.names.index(name)
    row = stats.atomref[k]
    values = ", ".join(f"{chemical_symbols[z]} {float(row[z]):.3f}" for z in torch.nonzero(row).flatten().tolist())
    return (f"zoo: atomref of {name} fitted by least squares on {stats.num_train} training structures "
            f"({stats.units[k]} per atom): {values or 'all zero'} (--model.fit_atomref false keeps only the mean "
            "per atom)")


class Regression(Objective):
    """Property regression (one or several targets).

    Args:
        backbone: any backbone.
        targets: target names; linked automatically from ``--data.targets`` by the CLI.
        pooling: ``"sum"``, ``"mean"``, a mapping target -> pooling, or ``None`` to use the dataset's
            default per target (sum for extensive, mean for intensive quantities).
        atomref: subtract per-element reference values where the dataset has them (QM9: U0/U/H/G).
        fit_atomref: with ``atomref``, fit per-element references ("E0s") by least squares on the
            training split for every sum-pooled target the dataset has no table for (energies of ASE
            files, MD17, SPICE, trajectories), so the network learns the residual, and log them; a
            fine-tune refits them on its own data (mace #1452: 0.584 -> 0.025 eV/atom after a linear
            refit). ``False``: only the mean per atom is removed.
        standardize: scale outputs by training-set statistics (strongly recommended).
        loss: ``"l1"`` or ``"mse"`` on standardised errors.
        standardize_loss: ``True`` (default): the target loss is ``L((y_hat - y) / sigma)``, dimensionless.
            ``False``: ``L(y_hat - y)`` on the error in the target's unit (eV for QM9 HOMO; with ``mse``,
            eV^2), the outputs still de-standardised by ``standardize``'s statistics -- SCD's and Zaidi
            et al.'s QM9 fine-tuning (torchmd-net's ``mse_loss(pred, batch.y)`` on the prediction
            ``std * sum_i o_i + mean``: TyJPerez/SelfConditionedDenoisingAtoms ``models/trainer.py``
            ``training_step`` / ``step``, shehzaidi/pre-training-via-denoising ``torchmdnet/module.py``).
            The loss scale then grows with sigma^2 (MSE), which changes its weight against the auxiliary
            denoising term and the gradient clipping. Force and stress terms are unaffected.
        head_hidden: hidden size of the per-atom heads (default ``width // 2``; 0: one Linear layer,
            which with ``freeze_backbone`` is a linear probe).
        forces: also predict forces ``-dE/dpos`` of the target ``energy`` and train on them (needs
            per-atom ``forces`` in the data); linked from ``--data.forces`` by the CLI.
        energy_weight, force_weight: weights of the standardised energy and force loss terms.
        stress: also predict the stress ``(1/V) dE/d(strain)`` of the target ``energy`` and train on
            it (needs forces and a per-structure ``stress`` in the data); linked from
            ``--data.stress`` (set by ``--data.stress_key``) by the CLI.
        stress_weight: weight of the standardised stress loss term (1, as MACE's default).
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
        fit_atomref: bool = True,
        standardize: bool = True,
        loss: str = "l1",
        head_hidden: int | None = None,
        forces: bool = False,
        energy_weight: float = 1.0,
        force_weight: float = 100.0,
        stress: bool = False,
        stress_weight: float = 1.0,
        aux_denoising_weight: float | str = 0.0,
        aux_denoising_sigma: float = 0.005,
        aux_denoising_pretrained_head: bool = True,
        standardize_loss: bool = True,
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
        self.fit_atomref = fit_atomref
        self.standardize = standardize
        self.standardize_loss = bool(standardize_loss)
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
            self.energy_column()  # forces=True needs the target 'energy'
            self.register_buffer("force_rms", torch.ones((), dtype=torch.float64))
            self.force_metrics = nn.ModuleDict({stage: MeanAbsoluteError() for stage in ("val", "test")})
        self.stress = bool(stress)
        self.stress_weight = float(stress_weight)
        self.stress_unit = "eV/A^3"
        self.stress_loss = StressLoss(loss)
        if self.stress:
            if not self.forces:
                raise ValueError(
                    "stress=True needs forces=True (one backward pass gives both; --model.init_args.forces true)"
                )
            self.register_buffer("stress_rms", torch.ones((), dtype=torch.float64))
            self.stress_metrics = nn.ModuleDict({stage: MeanAbsoluteError() for stage in ("val", "test")})
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
        return self.forces and (self.force_weight > 0 or (self.stress and self.stress_weight > 0))

    # ----- statistics from the data -------------------------------------------------------------
    def _pooling_map(self) -> dict[str, str] | None:
        option = self.pooling_option
        if option is None:
            return None
        if isinstance(option, dict):
            return {t: option[t] for t in self.targets if t in option}
        return {t: option for t in self.targets}

    def statistics_request(self) -> StatisticsRequest:
        """The training statistics this model standardises with: its targets, pooling, atom references, forces."""
        return StatisticsRequest(
            targets=tuple(self.targets), pooling=self._pooling_map(), atomref=self.use_atomref,
            fit_atomref=self.fit_atomref, forces=self.forces, stress=self.stress,
        )

    def on_data_summary(self, summary: DataSummary | None) -> None:
        """Take units and (unless restored from a checkpoint) the training statistics from ``summary``.

        Raises ``RuntimeError`` when there is no summary (the data is not an AtomsDataModule) and the
        statistics were never set."""
        if summary is None:
            if not bool(self.stats_ready):
                raise RuntimeError("Regression needs an AtomsDataModule to compute target statistics")
            return
        stats = summary.statistics
        self.units = list(stats.units)
        if self.forces:
            self.force_unit = stats.force_unit
        if self.stress:
            self.stress_unit = stats.stress_unit
        if not bool(self.stats_ready):
            self.apply_statistics(stats)

    @torch.no_grad()
    def apply_statistics(self, stats: TargetStatistics) -> None:
        """Copy the training statistics into the model's buffers (``standardize=False``: mean 0, std 1)."""
        if list(stats.names) != self.targets:
            raise ValueError(f"statistics for {list(stats.names)} but the model's targets are {self.targets}")
        self.sum_pooled.copy_(torch.tensor([p == "sum" for p in stats.pooling]))
        self.atomref_table.copy_(stats.atomref)
        for name in stats.fitted_atomref:
            rank_zero_info(fitted_atomref_line(name, stats))
        if self.standardize:
            self.mean.copy_(stats.mean)
            self.std.copy_(stats.std)
        else:
            self.mean.fill_(0.0)
            self.std.fill_(1.0)
        if self.forces and stats.force_rms is not None:
            self.force_rms.fill_(stats.force_rms)
        if self.stress and stats.stress_rms is not None:
            self.stress_rms.fill_(stats.stress_rms)
        self.stats_ready.fill_(True)

    def fit_statistics(self, infos, labels, element_counts) -> None:
        """Set atom references, pooling and mean/std from training labels ``[n, T]`` and element counts ``[n, 101]``
        (what :meth:`setup` does with the DataModule's summary; forces' RMS not included)."""
        stats = compute_target_statistics(infos, labels, element_counts, self._pooling_map(), self.use_atomref,
                                          self.fit_atomref)
        self.apply_statistics(stats)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["target_units"] = self.units
        checkpoint["force_unit"] = self.force_unit
        checkpoint["stress_unit"] = self.stress_unit

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.units = checkpoint.get("target_units", self.units)
        self.force_unit = checkpoint.get("force_unit", self.force_unit)
        self.stress_unit = checkpoint.get("stress_unit", self.stress_unit)
        # checkpoints written before the auxiliary-denoising normaliser existed: keep its initial state
        state = checkpoint.get("state_dict", {})
        if not self.stress:  # a stress model used without stress data (e.g. zoo predict without --data.stress_key)
            state.pop("stress_rms", None)
        if self.aux_denoising is not None and any(k.startswith("aux_denoising.head.") for k in state):
            for name, value in self.aux_denoising.normalizer.state_dict().items():
                state.setdefault(f"aux_denoising.normalizer.{name}", value)

    # ----- forward ------------------------------------------------------------------------------
    def forward(self, data) -> Tensor:
        """Predicted targets ``[num_graphs, T]`` float64 in physical units."""
        out = self.backbone(data)
        return self.predict_from_features(out.scalars, data)

    def atomwise_outputs(self, scalars: Tensor) -> Tensor:
        """The heads' standardised per-atom outputs ``o_i``: ``[N, F]`` scalars -> ``[N, T]``."""
        return torch.cat([head(scalars) for head in self.heads], dim=-1)

    def pool(self, per_atom: Tensor, data) -> Tensor:
        """Pooling and de-standardisation (module docstring): ``[N, T]`` outputs -> ``[num_graphs, T]`` float64."""
        num_graphs = int(data.num_graphs)
        pooled_sum = scatter(per_atom, data.batch, dim=0, dim_size=num_graphs, reduce="sum").double()
        n_atoms = scatter(torch.ones_like(data.batch, dtype=torch.float64), data.batch, dim=0, dim_size=num_graphs)
        n = n_atoms.unsqueeze(-1)
        pooled = torch.where(self.sum_pooled, pooled_sum, pooled_sum / n)
        offset = torch.where(self.sum_pooled, n * self.mean, self.mean.expand_as(pooled))
        ref = scatter(self.atomref_table.T[data.z], data.batch, dim=0, dim_size=num_graphs, reduce="sum")
        return ref + offset + self.std * pooled

    def predict_from_features(self, scalars: Tensor, data) -> Tensor:
        """Heads, pooling and de-standardisation: per-atom ``scalars`` ``[N, F]`` -> ``[num_graphs, T]`` float64."""
        return self.pool(self.atomwise_outputs(scalars), data)

    def energy_column(self) -> int:
        """Column of the target ``energy`` (what forces and per-atom energies are of).

        Raises ``ValueError`` when the model does not predict ``energy``."""
        if "energy" not in self.targets:
            raise ValueError(
                "forces and per-atom energies need the target 'energy' (forces are -dE/dpos); "
                f"targets are {self.targets}"
            )
        return self.targets.index("energy")

    @property
    def has_atomic_energies(self) -> bool:
        """The model predicts ``energy`` with sum pooling, so the energy splits into per-atom energies."""
        return "energy" in self.targets and bool(self.sum_pooled[self.targets.index("energy")])

    def _forward(self, data, training: bool, forces: bool,
                 stress: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None, dict]:  # fmt: skip
        """One pass: ``(targets [G, T] float64, forces [N, 3] or None, stress [G, 3, 3] or None,
        {"output", "atomwise"})`` -- the last holds that pass's backbone output and the heads' per-atom
        outputs ``[N, T]``. ``training``: keep the autograd graph of the forces and stress
        (:func:`~atomzoo.objectives.forces.energy_forces_stress`); ``stress`` needs ``forces``."""
        kept = {}

        def predict(batch) -> Tensor:
            out = self.backbone(batch)
            kept["output"] = out
            kept["atomwise"] = self.atomwise_outputs(out.scalars)
            return self.pool(kept["atomwise"], batch)

        if forces:
            pred, force, sigma = energy_forces_stress(predict, data, training, self.energy_column(), stress=stress)
        else:
            pred, force, sigma = predict(data), None, None
        return pred, force, sigma, kept

    def predict_properties(self, batch, forces: bool | None = None, atomic_energies: bool = False,
                           stress: bool | None = None) -> dict[str, Tensor]:  # fmt: skip
        """The model's predictions for a batch, from one backbone pass: what every prediction path reads.

        Args:
            batch: a PyG batch: ``z`` ``[N]``, ``pos`` ``[N, 3]`` Angstrom, ``batch`` ``[N]``; ``cell`` /
                ``pbc`` for periodic structures; optionally ``candidate_edge_index`` (a reused
                neighbour list, :mod:`atomzoo.nn.graph`).
            forces: also the forces ``-dE/dpos`` of the target ``energy`` (autograd); ``None``: when
                the model was trained on forces (``self.forces``).
            atomic_energies: also the per-atom energies of the sum-pooled energy head.
            stress: also the stress ``(1/V) dE/d(strain)`` of the target ``energy`` (implies
                ``forces``); ``None``: when the model was trained on stress (``self.stress``).

        Returns:
            ``{"targets": [G, T] float64}`` in :attr:`units` (column order :attr:`targets`), plus
            ``"forces"`` ``[N, 3]`` (energy unit per Angstrom, e.g. eV/A; dtype of ``pos``) and
            ``"atomic_energies"`` ``[N]`` float64 (energy unit) when asked:
            ``e_i = ref(z_i) + mu + sigma * o_i``, which add up to each structure's energy, and
            ``"stress"`` ``[G, 3, 3]`` (energy unit per A^3, e.g. eV/A^3; ASE's sign; dtype of ``pos``;
            NaN rows for structures that are not fully periodic). Every tensor is detached; works
            under ``no_grad`` and ``inference_mode``.

        Raises:
            ValueError: forces or per-atom energies of a model without the target ``energy``, or
                per-atom energies of a mean-pooled energy.
        """
        stress = self.stress if stress is None else bool(stress)
        forces = (self.forces if forces is None else bool(forces)) or stress
        if atomic_energies and not self.has_atomic_energies:
            self.energy_column()  # names the missing target
            raise ValueError("per-atom energies need a sum-pooled energy head; this model averages its energy")
        if forces:
            pred, force, sigma, kept = self._forward(batch, training=False, forces=True, stress=stress)
        else:
            with torch.no_grad():
                pred, force, sigma, kept = self._forward(batch, training=False, forces=False)
        out = {"targets": pred.detach()}
        if force is not None:
            out["forces"] = force
        if sigma is not None:
            out["stress"] = sigma
        if atomic_energies:
            k = self.energy_column()
            with torch.no_grad():
                o = kept["atomwise"].detach()[:, k].double()
                out["atomic_energies"] = self.atomref_table[k][batch.z] + self.mean[k] + self.std[k] * o
        return out

    # ----- the loss (the objective contract) and the steps ------------------------------------------
    def supervised_loss(self, pred: Tensor, forces: Tensor | None, batch, stress: Tensor | None = None) -> Tensor:
        """Standardised target loss (in the target's unit with ``standardize_loss=False``), plus the weighted
        force loss when ``forces`` is given and the weighted stress loss when ``stress`` is (module docstring)."""
        loss = self.target_loss(pred, batch.y, self.std if self.standardize_loss else torch.ones_like(self.std))
        if forces is None:
            return loss
        loss = self.energy_weight * loss + self.force_weight * self.force_loss(forces, batch.forces, self.force_rms)
        if stress is None:
            return loss
        return loss + self.stress_weight * self.stress_loss(stress, self._stress_labels(batch), self.stress_rms)

    def _stress_labels(self, batch) -> Tensor:
        """The batch's stress labels ``[G, 3, 3]`` (``ValueError`` naming the option when there are none)."""
        labels = getattr(batch, "stress", None)
        if labels is None:
            raise ValueError(
                "stress=True but the batch has no 'stress': read it with --data.init_args.stress_key "
                "or set --model.init_args.stress false"
            )
        return labels.reshape(-1, 3, 3)

    def _loss_terms(self, batch, generator: torch.Generator | None) -> tuple[dict[str, Tensor], Tensor, Tensor | None,
                                                                          Tensor | None]:  # fmt: skip
        """``(terms, pred, forces, stress)``: in training with auxiliary denoising one noisy pass predicts
        the targets and the noise; otherwise one pass on clean positions."""
        if self.training and self.aux_denoising is not None:
            noisy, noise = self.aux_denoising.corrupt(batch, generator)
            pred, forces, stress, kept = self._forward(noisy, training=True, forces=self.forces, stress=self.stress)
            aux = self.aux_denoising.loss_from_output(kept["output"], noise, update=True)
            loss = self.supervised_loss(pred, forces, batch, stress) + self.aux_denoising_weight * aux
            return {"loss": loss, "aux_denoising": aux}, pred, forces, stress
        pred, forces, stress, _ = self._forward(batch, training=self.training, forces=self.forces, stress=self.stress)
        return {"loss": self.supervised_loss(pred, forces, batch, stress)}, pred, forces, stress

    def compute_loss(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The objective contract: ``{"loss": total}`` and, in training with auxiliary denoising,
        ``"aux_denoising"`` (the unweighted noise loss; logged as ``train/aux_denoising``).

        In training mode (``self.training``) the force loss keeps its graph and the auxiliary pass
        sees noisy positions (noise from ``generator`` when given); in evaluation mode positions are
        clean and the loss is the supervised one (logged as ``val/loss``, ``test/loss``)."""
        return self._loss_terms(batch, generator)[0]

    def evaluation_terms(self, batch, generator: torch.Generator) -> dict[str, Tensor]:
        """:meth:`compute_loss` plus the errors the MAE metrics average (not scalars, so not logged
        as terms): ``"target_error"`` ``[G, T]`` float64 (prediction - label), with forces
        ``"force_error"`` ``[N, 3]`` and with stress ``"stress_error"`` ``[S, 9]`` (the ``S`` structures
        that have a predicted and a label stress)."""
        terms, pred, forces, stress = self._loss_terms(batch, generator)
        terms["target_error"] = pred - batch.y
        if forces is not None:
            terms["force_error"] = forces - batch.forces
        if stress is not None:
            error = (stress - self._stress_labels(batch).to(stress.dtype)).flatten(1)
            terms["stress_error"] = error[error.isfinite().all(dim=1)]
        return terms

    def log_terms(self, stage: str, terms: dict[str, Tensor], batch_size: int) -> None:
        """As the base class, plus the mean absolute errors of validation and test in display units:
        ``{stage}/<target>_mae_<unit>`` and ``{stage}/forces_mae_<unit>`` (meV, meV/A for eV, eV/A)."""
        if "force_error" in terms:
            _, factor = display_unit(self.force_unit)
            metric = self.force_metrics[stage]
            error = terms["force_error"].float() * factor
            metric.update(error, torch.zeros_like(error))
            self.log(f"{stage}/forces_mae_{metric_suffix(self.force_unit)}", metric, batch_size=batch_size,
                     prog_bar=stage == "val")  # fmt: skip
        if "stress_error" in terms:
            _, factor = display_unit(self.stress_unit)
            metric = self.stress_metrics[stage]
            error = terms["stress_error"].float() * factor
            if error.numel():  # a batch of molecules only has no stress to average
                metric.update(error, torch.zeros_like(error))
            self.log(f"{stage}/stress_mae_{metric_suffix(self.stress_unit)}", metric, batch_size=batch_size)
        super().log_terms(stage, terms, batch_size)
        if "target_error" in terms:
            for k, name in enumerate(self.targets):
                _, factor = display_unit(self.units[k])
                metric = self.metrics[f"{stage}_{name}"]
                # the error is formed in float64 (large absolute energies), then scaled to display units
                error = (terms["target_error"][:, k] * factor).float()
                metric.update(error, torch.zeros_like(error))
                self.log(f"{stage}/{name}_mae_{metric_suffix(self.units[k])}", metric, batch_size=batch_size,
                         prog_bar=stage == "val")  # fmt: skip

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """``zoo predict``: :meth:`predict_properties` as ``{"idx", "prediction" [G, T], "targets"}`` and,
        for a force model, ``"forces"`` ``[N, 3]`` and ``"batch"`` ``[N]``, for a stress model ``"stress"``
        ``[G, 3, 3]`` (NaN rows for structures without one) (read by
        :class:`atomzoo.prediction_writer.PredictionWriter`)."""
        out = self.predict_properties(batch)
        provenance.on_predict_batch(self, batch)  # inputs closer than the training range: warned at the end
        step = {"idx": batch.idx, "prediction": out["targets"], "targets": self.targets}
        if "forces" in out:
            step.update(forces=out["forces"], batch=batch.batch)
        if "stress" in out:
            step["stress"] = out["stress"]
        return step

    def on_predict_end(self) -> None:
        """One :class:`~atomzoo.nn.training_range.ExtrapolationWarning` for every structure ``zoo predict``
        got with a pair closer than the training range (:func:`atomzoo.objectives.provenance.on_predict_end`)."""
        provenance.on_predict_end(self)


__all__ = ["Regression", "scd_aux_denoising_weight"]
