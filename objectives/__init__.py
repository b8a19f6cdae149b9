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
from .world_model import WorldModel

__all__ = ["JEPA", "SIGReg", "Denoising", "Objective", "Regression", "SelfConditionedDenoising", "WorldModel", "sigreg"]
