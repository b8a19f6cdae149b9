"""DataModules: molecular datasets as memory-mapped stores with seeded splits.

Add a dataset by subclassing :class:`atomzoo.datamodules.base.AtomsDataModule`: the contract and a worked
example are in docs/datasets.md, "Adding a dataset".
"""

from .ase_file import ASEFileDataModule
from .base import AtomsDataModule, TargetInfo
from .md17 import MD17DataModule, RMD17DataModule
from .pcqm4mv2 import PCQM4Mv2DataModule
from .qm9 import QM9DataModule
from .spice import SPICEDataModule
from .trajectory import TrajectoryDataModule

__all__ = ["ASEFileDataModule", "AtomsDataModule", "MD17DataModule", "PCQM4Mv2DataModule", "QM9DataModule", "RMD17DataModule", "SPICEDataModule", "TargetInfo", "TrajectoryDataModule"]
