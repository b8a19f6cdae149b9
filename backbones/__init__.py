"""Backbones: networks that map a batch of molecules to per-atom features.

Add one by subclassing :class:`atomzoo.backbones.base.Backbone` (contract in ``docs/backbones.md``).

Built in: :class:`SchNet`, :class:`PaiNN`, :class:`ET` (TorchMD-NET's equivariant transformer), :class:`MACE`. Importing this package does not import
mace-torch or e3nn: :class:`MACE` imports them when the first MACE backbone is built.
"""

from .base import ATOM_MASK, Backbone, BackboneOutput, atom_mask, periodic_cell
from .et import ET
from .mace import MACE
from .painn import PaiNN
from .schnet import SchNet

__all__ = ["ATOM_MASK", "ET", "MACE", "Backbone", "BackboneOutput", "PaiNN", "SchNet", "atom_mask", "periodic_cell"]
