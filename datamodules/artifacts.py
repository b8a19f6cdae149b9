"""Dataset artifacts made on purpose: deliberate corruption of a training set, to measure how objectives
cope with the kinds of error real datasets contain (noise-robustness benchmarks). (The noise that
self-supervised objectives add on purpose is another thing: :mod:`atomzoo.objectives.noise`.)

A fixed, seeded fraction of the training molecules is corrupted, the same way in every epoch (a
corrupted dataset is static, like a real one). Validation and test data are never corrupted.

Kinds:
    ``displacement``     every atom of the molecule moves by Gaussian noise of ``scale`` Angstrom
                         (per component) -- a badly converged or garbled geometry;
    ``duplicate_atoms``  one atom is duplicated at ``0.1 * scale`` Angstrom from the original -- a
                         parsing/merging error that leaves two nearly coincident atoms;
    ``label_noise``      every selected label gets Gaussian noise of ``scale`` times its training-set
                         standard deviation -- wrong or mixed-level reference values;
    ``missing_hydrogens`` every hydrogen atom of the molecule is removed (kept only when the molecule
                         has no other atom) -- a structure written without explicit hydrogens (heavy-atom
                         PDB records, a SMILES-derived geometry that lost its Hs); ``scale`` is unused;
    ``wrong_element``    one non-hydrogen atom (any atom if the molecule has none) gets another element
                         of :data:`WRONG_ELEMENTS` (C, N, O, F: QM9's heavy elements), drawn uniformly
                         among those it is not -- a mislabelled atom type; ``scale`` is unused.

Per-atom labels (``forces``) follow their atoms: duplicated with a duplicated atom, dropped with a
removed one (they are then no longer the gradient of the energy: that is the artifact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

KINDS = ("displacement", "duplicate_atoms", "label_noise", "missing_hydrogens", "wrong_element")
#: the elements ``wrong_element`` draws from (atomic numbers)
WRONG_ELEMENTS = (6, 7, 8, 9)
#: the per-atom fields that follow their atoms when atoms are added or removed
PER_ATOM = ("z", "pos", "forces")


@dataclass(frozen=True)
class Corruption:
    """Which training molecules are corrupted and how (see module docstring)."""

    kind: str
    rate: float
    scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corruption={self.kind!r}: choose one of {', '.join(KINDS)} (--data.corruption)")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"corruption_rate={self.rate} must lie in [0, 1] (--data.corruption_rate)")

    def select(self, indices: np.ndarray) -> set[int]:
        """The corrupted subset of ``indices`` (store rows), fixed by ``seed``."""
        count = int(round(self.rate * len(indices)))
        chosen = np.random.default_rng(self.seed).choice(indices, size=count, replace=False)
        return {int(i) for i in chosen}

    def apply(self, data: Data, molecule: int, label_std: np.ndarray | None) -> Data:
        """Corrupt ``data`` (molecule ``molecule`` of the store) deterministically."""
        rng = np.random.default_rng([self.seed, molecule])
        if self.kind == "displacement":
            data.pos = data.pos + torch.from_numpy(rng.normal(0.0, self.scale, data.pos.shape).astype(np.float32))
        elif self.kind == "duplicate_atoms":
            k = int(rng.integers(data.z.numel()))
            offset = rng.normal(0.0, 1.0, 3)
            offset = 0.1 * self.scale * offset / np.linalg.norm(offset)
            keep = torch.cat([torch.arange(data.z.numel()), torch.tensor([k])])
            _select_atoms(data, keep)
            data.pos[-1] += torch.from_numpy(offset.astype(np.float32)).to(data.pos.dtype)
        elif self.kind == "missing_hydrogens":
            heavy = torch.nonzero(data.z != 1).reshape(-1)
            if 0 < heavy.numel() < data.z.numel():
                _select_atoms(data, heavy)
        elif self.kind == "wrong_element":
            heavy = torch.nonzero(data.z != 1).reshape(-1)
            candidates = heavy if heavy.numel() else torch.arange(data.z.numel())
            k = int(candidates[int(rng.integers(candidates.numel()))])
            choices = [e for e in WRONG_ELEMENTS if e != int(data.z[k])]
            data.z = data.z.clone()
            data.z[k] = choices[int(rng.integers(len(choices)))]
        elif getattr(data, "y", None) is not None and label_std is not None:
            noise = rng.normal(0.0, 1.0, data.y.shape) * self.scale * label_std
            data.y = data.y + torch.from_numpy(noise)
        return data


def _select_atoms(data: Data, index: torch.Tensor) -> None:
    """Keep the atoms ``index`` (``[M]``, repeats allowed) of ``data``, in that order, in every per-atom field."""
    for name in PER_ATOM:
        value = getattr(data, name, None)
        if value is not None:
            setattr(data, name, value[index].clone())
