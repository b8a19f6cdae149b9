"""DataModules: molecular datasets as memory-mapped stores with seeded splits.

Add a dataset by subclassing :class:`datamodules.base.AtomsDataModule` (see ``datamodules/qm9.py``).
"""

from .base import AtomsDataModule, TargetInfo
from .qm9 import QM9DataModule

__all__ = ["AtomsDataModule", "QM9DataModule", "TargetInfo"]
