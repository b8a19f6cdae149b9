"""The backbone contract shared by every representation network in the zoo.

A backbone turns a batch of molecules into per-atom features. Objectives (``objectives/``) put heads
on top; they never look inside a backbone. To add your own, subclass :class:`Backbone` (in any
module, inside this repository or not) and point the CLI at it:
``--model.backbone.class_path mypkg.MyNet``. See ``docs/backbones.md``.

Input: a PyG ``Batch`` (or ``Data``) with
    ``z``     ``[N]`` long, atomic numbers;
    ``pos``   ``[N, 3]`` float, positions in Angstrom (may require grad: forces by autograd);
    ``batch`` ``[N]`` long, molecule index of each atom (sorted), ``num_graphs`` molecules.
and optionally ``condition`` ``[num_graphs, condition_dim]``, a per-molecule conditioning vector
(self-conditioned denoising). ``None`` must give exactly the unconditioned network.

Atom masking (JEPA's context view): the batch may carry ``atom_mask`` ``[N]`` bool (True = masked).
A backbone that declares ``supports_mask = True`` must then hide the masked atoms' elements: the
built-ins replace the element embedding of a masked atom by a learned ``mask_embedding`` (use
:meth:`Backbone.apply_atom_mask`); positions stay. ``z`` of masked atoms keeps the true element and
must not influence the output. Objectives that mask refuse backbones without ``supports_mask``.

Output: :class:`BackboneOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atomzoo.nn.graph import Graph, build_graph


@dataclass
class BackboneOutput:
    """What a backbone returns.

    Attributes:
        scalars: ``[N, width]`` rotation-invariant per-atom features.
        vectors: ``[N, 3, vector_width]`` rotation-equivariant (L=1) per-atom features, or ``None``
            for invariant backbones (SchNet) -- objectives then build equivariant outputs from
            scalars and edge vectors.
        graph: the radius graph the backbone used (objectives reuse it for their heads).
    """

    scalars: Tensor
    vectors: Tensor | None
    graph: Graph


#: Name of the per-atom mask field of a batch: ``data.atom_mask`` ``[N]`` bool, True = masked atom.
ATOM_MASK = "atom_mask"

#: Parameters that may be absent from checkpoints written before atom masking existed (atomzoo <= 0.2):
#: loading such a checkpoint keeps this module's freshly initialised value (see ``_load_from_state_dict``).
OPTIONAL_PARAMETERS = ("mask_embedding",)


def atom_mask(data) -> Tensor | None:
    """``data.atom_mask`` as ``[N]`` bool, or ``None`` when the batch has none.

    Raises ``ValueError`` when it is not one entry per atom.
    """
    mask = getattr(data, ATOM_MASK, None)
    if mask is None:
        return None
    if mask.shape != data.z.shape:
        raise ValueError(f"{ATOM_MASK} must have one entry per atom, shape {tuple(data.z.shape)}, got {tuple(mask.shape)}")
    return mask.to(torch.bool)


class Backbone(nn.Module):
    """Base class of all backbones.

    Subclasses call ``super().__init__(width=..., cutoff=..., vector_width=..., condition_dim=...)``
    and implement :meth:`forward`.

    Atom masking: set the class attribute ``supports_mask = True`` when ``forward`` honours
    ``data.atom_mask`` (see :meth:`apply_atom_mask`); the default ``False`` makes masking objectives
    (JEPA with ``mask_ratio > 0``) raise a ``ValueError`` saying what to add.

    Args:
        width: number of per-atom scalar features F.
        cutoff: interaction radius in Angstrom.
        vector_width: number of per-atom vector channels (0: the backbone has no vector features).
        condition_dim: size C of the per-molecule condition the backbone accepts (0: conditioning
            not supported; objectives that need it then condition at the head).
        max_num_neighbors: optional neighbour cap; exceeding it raises (never a silent drop).
    """

    supports_mask: bool = False

    def __init__(
        self,
        width: int,
        cutoff: float,
        vector_width: int = 0,
        condition_dim: int = 0,
        max_num_neighbors: int | None = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive (Angstrom), got {cutoff}")
        self.width = int(width)
        self.cutoff = float(cutoff)
        self.vector_width = int(vector_width)
        self.condition_dim = int(condition_dim)
        self.max_num_neighbors = max_num_neighbors

    @property
    def supports_condition(self) -> bool:
        return self.condition_dim > 0

    @property
    def has_vectors(self) -> bool:
        return self.vector_width > 0

    def element_embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of the element (atomic-number) embedding, for objectives that freeze it.

        The default looks for an ``embedding`` attribute; override if yours is named otherwise.
        """
        module = getattr(self, "embedding", None)
        return list(module.parameters()) if isinstance(module, nn.Module) else []

    @staticmethod
    def apply_atom_mask(features: Tensor, data, token: Tensor) -> Tensor:
        """Replace the rows of masked atoms (``data.atom_mask``) by ``token``.

        Args:
            features: ``[N, D]`` per-atom input features (element embedding, one-hot attributes...).
            data: the batch; without ``atom_mask`` the values of ``features`` are returned unchanged.
            token: ``[D]`` learned mask embedding.

        Returns ``[N, D]``. Raises ``ValueError`` for a mask that is not ``[N]``.

        Without a mask the result is ``features + 0 * token.sum()`` (the same values, bit for bit): the
        token then still takes part in the graph and receives a zero gradient, so that DDP with
        ``find_unused_parameters=False`` (``configs/trainer/ddp*.yaml``) does not fail on an unused
        parameter in runs that never mask (regression, denoising, ...).
        """
        mask = atom_mask(data)
        if mask is None:
            return features + 0.0 * token.to(features.dtype).sum()
        return torch.where(mask.unsqueeze(-1), token.to(features.dtype).expand_as(features), features)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints from before atom masking lack the mask embedding: keep the initial value
        for name in OPTIONAL_PARAMETERS:
            value = self._parameters.get(name)
            if value is not None and prefix + name not in state_dict:
                state_dict[prefix + name] = value.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def graph(self, data) -> Graph:
        """The radius graph of ``data`` at this backbone's cutoff (computed from ``data.pos``)."""
        return build_graph(data.pos, data.batch, self.cutoff, self.max_num_neighbors)

    def check_condition(self, condition: Tensor | None, num_graphs: int) -> None:
        """Raise a clear error for a condition this backbone cannot take."""
        if condition is None:
            return
        if not self.supports_condition:
            raise ValueError(
                f"{type(self).__name__} does not accept a condition (condition_dim=0); "
                "condition at the head instead"
            )
        if condition.shape != (num_graphs, self.condition_dim):
            raise ValueError(
                f"condition must have shape [num_graphs={num_graphs}, condition_dim={self.condition_dim}], "
                f"got {tuple(condition.shape)}"
            )

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:  # pragma: no cover
        raise NotImplementedError


def num_graphs(data) -> int:
    """Number of molecules in a PyG ``Batch`` or single ``Data``."""
    n = getattr(data, "num_graphs", None)
    if n is not None:
        return int(n)
    return int(data.batch.max()) + 1 if data.batch.numel() else 0


def with_positions(data, pos: Tensor):
    """A shallow copy of ``data`` whose ``pos`` is replaced (other tensors are shared, not copied)."""
    out = data.__copy__()
    out.pos = pos
    return out


__all__ = ["ATOM_MASK", "OPTIONAL_PARAMETERS", "Backbone", "BackboneOutput", "atom_mask", "num_graphs", "with_positions"]
