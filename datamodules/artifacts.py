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
                         standard deviation -- wrong or mixed-level reference values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

KINDS = ("displacement", "duplicate_atoms", "label_noise")


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
            data.z = torch.cat([data.z, data.z[k : k + 1]])
            data.pos = torch.cat([data.pos, data.pos[k : k + 1] + torch.from_numpy(offset.astype(np.float32))])
            for name in ("forces",):  # per-atom labels follow the duplicated atom
                if getattr(data, name, None) is not None:
                    value = getattr(data, name)
                    setattr(data, name, torch.cat([value, value[k : k + 1]]))
        elif getattr(data, "y", None) is not None and label_std is not None:
            noise = rng.normal(0.0, 1.0, data.y.shape) * self.scale * label_std
            data.y = data.y + torch.from_numpy(noise)
        return data
