"""Regression losses as small modules: dimensionless errors, so that several terms weigh equally.

* :class:`StandardizedLoss` -- targets: ``L((y_hat - y) / sigma_y)`` per target column.
* :class:`ForceLoss` -- forces: ``L((F_hat - F) / f_rms)`` over all Cartesian components.
* :class:`StressLoss` -- stress: ``L((sigma_hat - sigma) / s_rms)`` over the 9 components of the
  structures that have a stress (finite prediction and label; molecules in a mixed batch have none).

``L`` is the mean absolute error (``"l1"``) or the mean squared error (``"mse"``) over every
element. The statistics (``sigma_y``, ``f_rms``) come from the training split
(:class:`atomzoo.nn.statistics.TargetStatistics`, handed over by the DataModule's ``data_summary``)
and are passed in, so the modules hold no state.
"""

from __future__ import annotations

from torch import Tensor, nn

KINDS = ("l1", "mse")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"loss={kind!r}: choose 'l1' or 'mse' (--model.loss)")
    return kind


def _reduce(error: Tensor, kind: str) -> Tensor:
    return error.abs().mean() if kind == "l1" else error.pow(2).mean()


class StandardizedLoss(nn.Module):
    """``L((pred - target) / std)``, averaged over molecules and targets.

    The difference is formed in the inputs' dtype (float64 for regression targets: QM9's U0 is
    ~1e4 eV, where float32 resolves only ~1 meV), divided by ``std`` and then cast to float32.

    Args:
        kind: ``"l1"`` or ``"mse"`` (``ValueError`` otherwise).

    Shapes: ``pred``, ``target`` ``[G, T]`` (target units), ``std`` ``[T]`` (same units) -> scalar
    float32, dimensionless.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        self.kind = _check_kind(kind)

    def forward(self, pred: Tensor, target: Tensor, std: Tensor) -> Tensor:
        return _reduce(((pred - target) / std).float(), self.kind)


class ForceLoss(nn.Module):
    """``L((pred - target) / f_rms)``, averaged over atoms and the three components.

    ``f_rms`` is the root mean square of the training force components, so the loss is O(1) and
    comparable to a standardised energy loss.

    Args:
        kind: ``"l1"`` or ``"mse"`` (``ValueError`` otherwise).

    Shapes: ``pred``, ``target`` ``[N, 3]`` (e.g. eV/A), ``f_rms`` scalar tensor (same unit) ->
    scalar, dimensionless, in the dtype of ``pred``.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        self.kind = _check_kind(kind)

    def forward(self, pred: Tensor, target: Tensor, f_rms: Tensor) -> Tensor:
        return _reduce((pred - target) / f_rms.float(), self.kind)


class StressLoss(nn.Module):
    """``L((pred - target) / s_rms)`` over the 9 components of every structure with a stress.

    A structure counts when its predicted and its label stress are both finite: molecules, slabs and
    structures without a stress label carry NaN rows (:func:`atomzoo.objectives.forces.has_stress`,
    the DataModule's NaN for a missing label) and add nothing. A batch without any such structure
    gives an exact 0.

    Args:
        kind: ``"l1"`` or ``"mse"`` (``ValueError`` otherwise).

    Shapes: ``pred``, ``target`` ``[G, 3, 3]`` (e.g. eV/A^3), ``s_rms`` scalar tensor (same unit) ->
    scalar, dimensionless, in the dtype of ``pred``.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        self.kind = _check_kind(kind)

    def forward(self, pred: Tensor, target: Tensor, s_rms: Tensor) -> Tensor:
        target = target.to(pred.dtype).reshape(pred.shape)
        keep = (pred.detach().isfinite() & target.isfinite()).flatten(1).all(dim=1)
        if not bool(keep.any()):
            return pred.new_zeros(())
        return _reduce((pred[keep] - target[keep]) / s_rms.to(pred.dtype), self.kind)


__all__ = ["ForceLoss", "StandardizedLoss", "StressLoss"]
