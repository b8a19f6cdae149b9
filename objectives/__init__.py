"""Objectives: LightningModules that train any backbone with a given signal.

Built in: :class:`Regression` (supervised), :class:`Denoising`, :class:`SelfConditionedDenoising`
and :class:`JEPA` (self-supervised pretraining); see ``docs/objectives.md``.

Add one by subclassing :class:`atomzoo.objectives.base.Objective`.
"""

from .base import Objective
from .denoising import Denoising
from .jepa import JEPA
from .regression import Regression
from .scd import SelfConditionedDenoising
from .sigreg import SIGReg, sigreg

__all__ = ["JEPA", "SIGReg", "Denoising", "Objective", "Regression", "SelfConditionedDenoising", "sigreg"]
