"""Backbones: networks that map a batch of molecules to per-atom features.

Add one by subclassing :class:`backbones.base.Backbone` (contract in ``docs/backbones.md``).
"""

from .base import Backbone, BackboneOutput, num_graphs, with_positions
from .schnet import SchNet

__all__ = ["Backbone", "BackboneOutput", "SchNet", "num_graphs", "with_positions"]
