"""What a model learns about its data: label metadata, training-split statistics, and the data summary.

The value types passed between the two floors: a DataModule (:mod:`atomzoo.datamodules`) computes
them from its store, an objective (:mod:`atomzoo.objectives`) standardises its outputs with them, and
neither imports the other -- both import this module (which imports only torch).

- :data:`MAX_Z` -- the largest atomic number any reader accepts (and the size of per-element tables).
- :class:`TargetInfo` -- what a label means (unit, default pooling, atom references).
- :class:`TargetStatistics` and :func:`compute_target_statistics` -- the training-split statistics a
  regression model standardises with (mean, std, atom references, pooling, force RMS).
- :class:`StatisticsRequest` -- what an objective asks for (its targets, pooling, atom references, forces).
- :class:`DataSummary` -- the one hand-off: what ``AtomsDataModule.data_summary(request)`` returns to
  an objective at ``setup`` (the schnetpack / nequip pattern: the data module computes, the model
  receives; see ``docs/datasets.md``, "What a DataModule hands the model").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_Z = 100  #: largest atomic number any reader accepts (and the size of per-element tables, e.g. atom references)


@dataclass(frozen=True)
class TargetInfo:
    """What a label means.

    Attributes:
        name: the label's name (e.g. ``"homo"``).
        unit: its physical unit (e.g. ``"eV"``); metrics are reported in it (meV for eV).
        pooling: ``"sum"`` for extensive quantities, ``"mean"`` for intensive ones (the default the
            regression objective uses).
        atomref: per-element reference values indexed by atomic number (in ``unit``), or ``None``.
    """

    name: str
    unit: str
    pooling: str = "sum"
    atomref: tuple[float, ...] | None = None


@dataclass(frozen=True)
class TargetStatistics:
    """Training-split statistics a regression model needs (in :attr:`DataSummary.statistics`).

    ``T`` targets, in ``batch.y`` column order; all tensors float64 on the CPU.

    Attributes:
        names: the target names.
        units: each target's physical unit (``TargetInfo.unit``).
        pooling: ``"sum"`` or ``"mean"`` per target (the option given, else the dataset's default).
        atomref: ``[T, max_z + 1]`` per-element reference values in the target's unit (zero rows
            where the target has none or ``atomref=False``).
        mean: ``[T]`` mean of the residual ``y - sum_i atomref(z_i)``; per atom (residual / number of
            atoms) for sum pooling, per molecule for mean pooling.
        std: ``[T]`` standard deviation (``ddof=1``) of the residual after removing the mean
            (``residual - n * mean`` for sum pooling); 1 when it is 0 or undefined (one molecule).
        num_train: molecules in the training split.
        force_rms: root mean square of the training force components (in ``force_unit``), ``None``
            unless asked for with ``forces=True``; 1 for an all-zero force array.
        force_unit: unit of the per-atom forces (e.g. ``"eV/A"``), ``None`` unless ``forces=True``.
        stress_rms: root mean square of the components of the training structures' stress tensors
            (those that have one; in ``stress_unit``), ``None`` unless asked for with ``stress=True``;
            1 when no training structure has a stress or all are zero.
        stress_unit: unit of the stress (``"eV/A^3"``), ``None`` unless ``stress=True``.
    """

    names: tuple[str, ...]
    units: tuple[str, ...]
    pooling: tuple[str, ...]
    atomref: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_train: int
    force_rms: float | None = None
    force_unit: str | None = None
    stress_rms: float | None = None
    stress_unit: str | None = None


def compute_target_statistics(
    infos: list[TargetInfo],
    labels,
    element_counts,
    pooling: dict[str, str] | None = None,
    atomref: bool = True,
) -> TargetStatistics:
    """:class:`TargetStatistics` from training labels ``[n, T]`` and element counts ``[n, max_z + 1]``.

    The sums are done in float64 (QM9's U0 is ~1e4 eV, where float32 resolves only ~1 meV).
    ``pooling`` maps target name -> ``"sum"``/``"mean"`` (missing names: ``TargetInfo.pooling``);
    ``atomref=False`` ignores the datasets' atom references. Raises ``ValueError`` for another
    pooling name or when the shapes disagree with ``infos``.
    """
    labels = torch.as_tensor(labels, dtype=torch.float64)
    counts = torch.as_tensor(element_counts, dtype=torch.float64)
    if labels.dim() != 2 or labels.size(1) != len(infos) or counts.dim() != 2 or counts.size(0) != labels.size(0):
        raise ValueError(
            f"labels {tuple(labels.shape)} and element counts {tuple(counts.shape)} do not fit {len(infos)} targets"
        )
    n_atoms = counts.sum(1)
    num = len(infos)
    table = torch.zeros(num, counts.size(1), dtype=torch.float64)
    mean = torch.zeros(num, dtype=torch.float64)
    std = torch.ones(num, dtype=torch.float64)
    poolings = []
    for k, info in enumerate(infos):
        choice = (pooling or {}).get(info.name, info.pooling)
        if choice not in ("sum", "mean"):
            raise ValueError(f"pooling for {info.name!r} is {choice!r}: choose 'sum' or 'mean' (--model.pooling)")
        poolings.append(choice)
        if atomref and info.atomref is not None:
            ref = torch.as_tensor(info.atomref, dtype=torch.float64)
            table[k, : ref.numel()] = ref
        residual = labels[:, k] - counts @ table[k]
        if choice == "sum":
            mean[k] = (residual / n_atoms).mean()
            spread = residual - n_atoms * mean[k]
        else:
            mean[k] = residual.mean()
            spread = residual - mean[k]
        spread_std = spread.std() if spread.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
        std[k] = spread_std if spread_std > 0 else 1.0
    return TargetStatistics(
        names=tuple(i.name for i in infos), units=tuple(i.unit for i in infos), pooling=tuple(poolings),
        atomref=table, mean=mean, std=std, num_train=int(labels.size(0)),
    )


@dataclass(frozen=True)
class StatisticsRequest:
    """The training statistics an objective standardises with (what :meth:`Objective.statistics_request` returns).

    Attributes:
        targets: the model's target names; they must equal the DataModule's ``targets`` (same
            order). ``None``: the data's own targets, unchecked.
        pooling: target name -> ``"sum"`` | ``"mean"``; targets not named use their
            :class:`TargetInfo` default.
        atomref: subtract the per-element references where the dataset has them.
        forces: also the training forces' RMS and unit (the data needs a per-atom ``forces`` array).
        stress: also the training stress's RMS and unit (the data needs a per-structure ``stress``).
    """

    targets: tuple[str, ...] | None = None
    pooling: dict[str, str] | None = None
    atomref: bool = True
    forces: bool = False
    stress: bool = False


@dataclass(frozen=True)
class DataSummary:
    """Everything a model takes from its data, handed over once per ``setup`` by ``AtomsDataModule.data_summary``.

    Attributes:
        dataset: the DataModule's class name.
        targets: :class:`TargetInfo` of each selected label, in ``batch.y`` column order (empty for
            label-free pretraining).
        force_unit: unit of the per-atom forces the data trains on (``None`` when it does not train
            on forces, i.e. ``datamodule.forces`` is False).
        data_units: the store's unit record (positions, energy, forces, source units, factors).
        label_stats: target name -> ``(mean, std)`` (numpy, ``ddof=0``) of the raw training labels,
            ``(nan, nan)`` for an empty split.
        elements: atomic numbers present in the training split.
        data_elements: atomic numbers present in the training, validation or test split.
        statistics: the statistics asked for with a :class:`StatisticsRequest`, else ``None``.
        training_range: the training split's shortest distance per element pair, as
            :meth:`atomzoo.nn.training_range.TrainingRange.to_record` (``None``: not computed).
    """

    dataset: str
    targets: tuple[TargetInfo, ...]
    force_unit: str | None
    data_units: dict = field(default_factory=dict)
    label_stats: dict[str, tuple[float, float]] = field(default_factory=dict)
    elements: tuple[int, ...] = ()
    data_elements: tuple[int, ...] = ()
    statistics: TargetStatistics | None = None
    training_range: dict | None = None


__all__ = ["MAX_Z", "DataSummary", "StatisticsRequest", "TargetInfo", "TargetStatistics", "compute_target_statistics"]
