"""What a model learns about its data: label metadata, training-split statistics, and the data summary.

The value types passed between the two floors: a DataModule (:mod:`atomzoo.datamodules`) computes
them from its store, an objective (:mod:`atomzoo.objectives`) standardises its outputs with them, and
neither imports the other -- both import this module (which imports only torch).

- :data:`MAX_Z` -- the largest atomic number any reader accepts (and the size of per-element tables).
- :class:`TargetInfo` -- what a label means (unit, default pooling, atom references).
- :class:`TargetStatistics` and :func:`compute_target_statistics` -- the training-split statistics a
  regression model standardises with (mean, std, atom references, pooling, force RMS);
  :class:`StreamingTargetStatistics` computes them chunk by chunk (data larger than memory) and fits
  least-squares atom references on the way.
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
        atomref: ``[T, max_z + 1]`` per-element reference values in the target's unit: the dataset's
            table, or for a sum-pooled target without one the least-squares fit on the training split
            (:attr:`fitted_atomref`); zero rows where the target has none or ``atomref=False``.
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
        fitted_atomref: names of the targets whose ``atomref`` row was fitted by least squares on the
            training split (the "E0s" of MACE), not taken from the dataset.
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
    fitted_atomref: tuple[str, ...] = ()


def compute_target_statistics(
    infos: list[TargetInfo],
    labels,
    element_counts,
    pooling: dict[str, str] | None = None,
    atomref: bool = True,
    fit_atomref: bool = True,
) -> TargetStatistics:
    """:class:`TargetStatistics` from training labels ``[n, T]`` and element counts ``[n, max_z + 1]``.

    The sums are done in float64 (QM9's U0 is ~1e4 eV, where float32 resolves only ~1 meV).
    ``pooling`` maps target name -> ``"sum"``/``"mean"`` (missing names: ``TargetInfo.pooling``);
    ``atomref=False`` ignores the datasets' atom references; with ``fit_atomref`` (and ``atomref``)
    a sum-pooled target without a dataset table gets least-squares references fitted on these
    labels (:meth:`StreamingTargetStatistics.fitted_references`; two passes). Raises ``ValueError``
    for another pooling name or when the shapes disagree with ``infos``. One chunk of
    :class:`StreamingTargetStatistics`, which takes the split in pieces (bounded memory).
    """
    labels = torch.as_tensor(labels, dtype=torch.float64)
    counts = torch.as_tensor(element_counts, dtype=torch.float64)
    if counts.dim() != 2:
        raise ValueError(
            f"labels {tuple(labels.shape)} and element counts {tuple(counts.shape)} do not fit {len(infos)} targets"
        )
    accumulator = StreamingTargetStatistics(infos, pooling, atomref, max_z=counts.size(1) - 1)
    accumulator.update(labels, counts)
    if atomref and fit_atomref and accumulator.fittable():
        accumulator = accumulator.refitted()
        accumulator.update(labels, counts)
    return accumulator.result()


class StreamingTargetStatistics:
    """:class:`TargetStatistics` of a training split read in chunks, in one pass and bounded memory.

    ``update(labels [c, T], element_counts [c, max_z + 1])`` per chunk; :meth:`result` gives what
    :func:`compute_target_statistics` gives for all chunks at once (to float64 rounding). Memory is
    ``O(T * max_z^2)``, whatever the number of structures. Per target it keeps the count, the sum of
    the per-atom residual ``r / n`` (sum pooling's mean) and the means, second moments and co-moment
    of the residual ``r`` and the atom count ``n``, merged chunk by chunk with the pairwise update of
    Chan, Golub & LeVeque (1979), so no sum of squares of large energies cancels. The spread whose
    standard deviation is reported is ``r - n * mean`` (sum pooling) or ``r - mean`` (mean pooling):
    ``var(r - m n) = var(r) - 2 m cov(r, n) + m^2 var(n)``.

    It also accumulates the normal equations ``C^T C`` and ``C^T y`` of the raw labels on the element
    counts ``C``, from which :meth:`least_squares_atomref` fits per-element reference values (the
    "E0s" a model without tabulated references starts from).

    Raises:
        ValueError: another pooling name; chunks whose shapes disagree with ``infos`` or ``max_z``.
    """

    def __init__(self, infos: list[TargetInfo], pooling: dict[str, str] | None = None, atomref: bool = True,
                 max_z: int = MAX_Z, references: torch.Tensor | None = None,
                 fitted: tuple[str, ...] = ()) -> None:  # fmt: skip
        """``references``: ``[T, max_z + 1]`` reference values to subtract instead of the datasets' tables
        (``fitted``: the targets whose rows were fitted; :meth:`refitted` passes both)."""
        self.infos = list(infos)
        self.pooling_option, self.atomref, self.fitted = pooling, atomref, tuple(fitted)
        num, width = len(self.infos), max_z + 1
        self.table = torch.zeros(num, width, dtype=torch.float64)
        self.poolings = []
        for k, info in enumerate(self.infos):
            choice = (pooling or {}).get(info.name, info.pooling)
            if choice not in ("sum", "mean"):
                raise ValueError(f"pooling for {info.name!r} is {choice!r}: choose 'sum' or 'mean' (--model.pooling)")
            self.poolings.append(choice)
            if atomref and info.atomref is not None and references is None:
                ref = torch.as_tensor(info.atomref, dtype=torch.float64)
                self.table[k, : ref.numel()] = ref
        if references is not None:
            self.table.copy_(torch.as_tensor(references, dtype=torch.float64))
        zeros = lambda: torch.zeros(num, dtype=torch.float64)  # noqa: E731
        self.count = 0
        self.per_atom_sum = zeros()
        self.mean_r, self.mean_n = zeros(), zeros()
        self.m2_r, self.m2_n, self.c_rn = zeros(), zeros(), zeros()
        self.normal = torch.zeros(width, width, dtype=torch.float64)  # C^T C
        self.moment = torch.zeros(width, num, dtype=torch.float64)  # C^T y

    def update(self, labels, element_counts) -> None:
        """Add a chunk: ``labels`` ``[c, T]`` (raw, in the targets' units), ``element_counts`` ``[c, max_z + 1]``."""
        y = torch.as_tensor(labels, dtype=torch.float64)
        counts = torch.as_tensor(element_counts, dtype=torch.float64)
        num = len(self.infos)
        if y.dim() != 2 or y.size(1) != num or counts.dim() != 2 or counts.size(0) != y.size(0) \
                or counts.size(1) != self.table.size(1):  # fmt: skip
            raise ValueError(f"labels {tuple(y.shape)} and element counts {tuple(counts.shape)} do not fit {num} "
                             f"targets and elements 0..{self.table.size(1) - 1}")  # fmt: skip
        c = y.size(0)
        if c == 0:
            return
        n = counts.sum(1, keepdim=True)  # [c, 1]
        r = y - counts @ self.table.T  # [c, T] residuals
        self.per_atom_sum += (r / n).sum(0)
        chunk_r, chunk_n = r.mean(0), n.mean(0).expand(num)
        dr, dn = r - chunk_r, n - chunk_n
        total = self.count + c
        delta_r, delta_n = chunk_r - self.mean_r, chunk_n - self.mean_n
        weight = self.count * c / total
        self.m2_r += (dr * dr).sum(0) + delta_r * delta_r * weight
        self.m2_n += (dn * dn).sum(0) + delta_n * delta_n * weight
        self.c_rn += (dr * dn).sum(0) + delta_r * delta_n * weight
        self.mean_r += delta_r * c / total
        self.mean_n += delta_n * c / total
        self.count = total
        self.normal += counts.T @ counts
        self.moment += counts.T @ y

    def result(self) -> TargetStatistics:
        """The :class:`TargetStatistics` of every chunk added (``mean`` NaN and ``std`` 1 for none)."""
        num = len(self.infos)
        mean = torch.full((num,), float("nan"), dtype=torch.float64)
        std = torch.ones(num, dtype=torch.float64)
        for k, choice in enumerate(self.poolings):
            if self.count == 0:
                continue
            if choice == "sum":
                mean[k] = self.per_atom_sum[k] / self.count
                m2 = self.m2_r[k] - 2 * mean[k] * self.c_rn[k] + mean[k] ** 2 * self.m2_n[k]
            else:
                mean[k] = self.mean_r[k]
                m2 = self.m2_r[k]
            if self.count > 1:
                spread_std = torch.sqrt(torch.clamp(m2, min=0.0) / (self.count - 1))
                std[k] = spread_std if spread_std > 0 else 1.0
        return TargetStatistics(
            names=tuple(i.name for i in self.infos), units=tuple(i.unit for i in self.infos),
            pooling=tuple(self.poolings), atomref=self.table.clone(), mean=mean, std=std, num_train=int(self.count),
            fitted_atomref=self.fitted,
        )

    def fittable(self) -> list[int]:
        """Targets whose references a least-squares fit would supply: sum-pooled (extensive: energies),
        with no dataset table, with finite labels (not a label-free file read for prediction), not
        already fitted."""
        if self.fitted or self.count == 0:
            return []
        finite = torch.isfinite(self.moment).all(0) & torch.isfinite(self.normal).all()  # label-free data: NaN
        return [k for k, info in enumerate(self.infos)
                if self.poolings[k] == "sum" and info.atomref is None and bool(finite[k])]

    def refitted(self) -> "StreamingTargetStatistics":
        """A fresh accumulator (feed it the split again: the second pass) whose references are this one's,
        with the :meth:`fittable` targets' rows replaced by :meth:`least_squares_atomref` of the labels
        added so far (the "E0" refit of a fine-tune: mace #1452, 0.584 -> 0.025 eV/atom)."""
        fit = self.fittable()
        table = self.table.clone()
        if fit:
            table[fit] = self.least_squares_atomref()[fit]
        return StreamingTargetStatistics(self.infos, self.pooling_option, self.atomref, self.table.size(1) - 1,
                                         references=table, fitted=tuple(self.infos[k].name for k in fit))

    def least_squares_atomref(self) -> torch.Tensor:
        """``[T, max_z + 1]`` per-element values ``w`` minimising ``sum_i (y_i - sum_Z C_iZ w_Z)^2`` over the
        chunks (raw labels), solved from the accumulated normal equations; zero for absent elements.
        With linearly dependent counts (e.g. only one composition) the minimum-norm solution."""
        present = torch.nonzero(torch.diagonal(self.normal) > 0).flatten()
        out = torch.zeros(len(self.infos), self.normal.size(0), dtype=torch.float64)
        if present.numel():
            a = self.normal[present][:, present]
            solution = torch.linalg.lstsq(a, self.moment[present], driver="gelsd").solution  # [P, T]
            out[:, present] = solution.T
        return out


@dataclass(frozen=True)
class StatisticsRequest:
    """The training statistics an objective standardises with (what :meth:`Objective.statistics_request` returns).

    Attributes:
        targets: the model's target names; they must equal the DataModule's ``targets`` (same
            order). ``None``: the data's own targets, unchecked.
        pooling: target name -> ``"sum"`` | ``"mean"``; targets not named use their
            :class:`TargetInfo` default.
        atomref: subtract the per-element references where the dataset has them.
        fit_atomref: with ``atomref``, fit references by least squares on the training split for the
            sum-pooled targets the dataset has none for (energies of ASE files, MD17, SPICE).
        forces: also the training forces' RMS and unit (the data needs a per-atom ``forces`` array).
        stress: also the training stress's RMS and unit (the data needs a per-structure ``stress``).
    """

    targets: tuple[str, ...] | None = None
    pooling: dict[str, str] | None = None
    atomref: bool = True
    fit_atomref: bool = True
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
        neighbours: the training split's neighbour statistics at the cutoff a backbone asked for
            (``data_summary(neighbour_cutoff=...)``; MACE's ``avg_num_neighbors="auto"``):
            ``{"cutoff_A", "mean_neighbours" (per atom), "mean_edges", "max_edges" (per structure)}``;
            ``None``: not asked for.
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
    neighbours: dict | None = None


__all__ = ["MAX_Z", "DataSummary", "StatisticsRequest", "StreamingTargetStatistics", "TargetInfo", "TargetStatistics",
           "compute_target_statistics"]
