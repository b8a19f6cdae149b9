"""Objectives: LightningModules that train any backbone with a given signal.

Add one by subclassing :class:`objectives.base.Objective`.
"""

from .base import Objective
from .regression import Regression

__all__ = ["Objective", "Regression"]
