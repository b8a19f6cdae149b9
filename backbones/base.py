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
(self-conditioned denoising). A backbone with ``condition_dim > 0`` holds
``self.conditioning = atomzoo.nn.conditioning.condition_modules(...)`` and runs adaLN in every layer;
``condition=None`` then means "the learned mask token for every molecule" (the same network, see
:mod:`atomzoo.nn.conditioning`). With ``condition_dim == 0`` it is the plain network.

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
OPTIONAL_PARAMETERS = ("mask_embedding", "neighbor_mask_embedding")


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
            not supported; self-conditioned denoising then refuses the backbone).
        max_num_neighbors: optional neighbour cap; exceeding it raises (never a silent drop).

    Periodic structures (batches with ``cell`` ``[B, 3, 3]`` and ``pbc`` ``[B, 3]``) are handled by
    :meth:`graph`, which adds the periodic images. A backbone declares that all its geometry comes
    from :meth:`graph` by setting the class attribute ``periodic = True`` (every built-in one does);
    one that leaves it False is refused a periodic batch with a ``ValueError`` instead of silently
    treating the crystal as a molecule.
    """

    #: True when every distance and direction the backbone uses comes from :meth:`graph`.
    periodic: bool = False
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
        self.register_forward_pre_hook(_refuse_periodic_unless_supported)

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
        """The radius graph of ``data`` at this backbone's cutoff, computed from ``data.pos`` (and,
        for periodic structures, ``data.cell`` / ``data.pbc``: images included, see
        :func:`atomzoo.nn.graph.build_graph`)."""
        cell, pbc = periodic_cell(data)
        return build_graph(data.pos, data.batch, self.cutoff, self.max_num_neighbors, cell=cell, pbc=pbc)

    def check_condition(self, condition: Tensor | None, num_graphs: int) -> None:
        """Raise a clear error for a condition this backbone cannot take."""
        if condition is None:
            return
        if not self.supports_condition:
            raise ValueError(
                f"{type(self).__name__} does not accept a condition (condition_dim=0); "
                "build it with condition_dim > 0 (e.g. --model.backbone.init_args.condition_dim 128)"
            )
        if condition.shape != (num_graphs, self.condition_dim):
            raise ValueError(
                f"condition must have shape [num_graphs={num_graphs}, condition_dim={self.condition_dim}], "
                f"got {tuple(condition.shape)}"
            )

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:  # pragma: no cover
        raise NotImplementedError


def periodic_cell(data) -> tuple[Tensor | None, Tensor | None]:
    """``(cell [B, 3, 3], pbc [B, 3] bool)`` of a batch, or ``(None, None)`` if no structure is periodic."""
    pbc = getattr(data, "pbc", None)
    if pbc is None or not bool(pbc.any()):
        return None, None
    cell = getattr(data, "cell", None)
    if cell is None:
        raise ValueError("the batch has pbc but no cell: periodic structures need their lattice vectors")
    return cell.reshape(-1, 3, 3), pbc.reshape(-1, 3).bool()


def _refuse_periodic_unless_supported(module: Backbone, args, kwargs=None):
    data = args[0] if args else None
    if data is not None and not module.periodic and periodic_cell(data)[1] is not None:
        raise ValueError(
            f"{type(module).__name__} got periodic structures (pbc set) but does not declare periodic = True: "
            "a backbone that computes distances itself would treat a crystal as a molecule. Take all geometry "
            "from self.graph(data) (it adds periodic images) and set the class attribute periodic = True"
        )


__all__ = ["ATOM_MASK", "OPTIONAL_PARAMETERS", "Backbone", "BackboneOutput", "atom_mask", "periodic_cell"]
