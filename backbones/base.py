"""The backbone contract shared by every representation network in the zoo.

A backbone turns a batch of molecules (or periodic structures) into per-atom features. Objectives
(``objectives/``) put heads on top; they never look inside a backbone, they read what it declares.
To add your own, subclass :class:`Backbone` (in any module, inside this repository or not) and point
the CLI at it: ``--model.backbone.class_path mypkg.MyNet``. Check it with
:func:`atomzoo.backbones.contract.check_backbone`.

Input: a PyG ``Batch`` (or ``Data``) with
    ``z``     ``[N]`` long, atomic numbers;
    ``pos``   ``[N, 3]`` float, positions in Angstrom (may require grad: forces by autograd);
    ``batch`` ``[N]`` long, molecule index of each atom (sorted), ``num_graphs`` molecules;
optionally ``cell`` ``[B, 3, 3]`` / ``pbc`` ``[B, 3]`` (periodic structures), ``atom_mask`` ``[N]``
bool (masked atoms) and, as the second argument of ``forward``, ``condition``
``[num_graphs, condition_dim]`` (a per-molecule conditioning vector).

Output: :class:`BackboneOutput`.

Capabilities: everything an objective or a feature may ask of a backbone is declared on
:class:`Backbone` with its default -- the constructor's sizes (``width``, ``cutoff``,
``vector_width``, ``condition_dim``, ``max_num_neighbors``), the class attributes ``periodic``,
``supports_mask`` and ``renamed_arguments``, the attribute ``conditioning``, the property
``supports_drop_path`` with :meth:`Backbone.set_drop_path`, and the methods
:meth:`Backbone.element_embedding_parameters` and :meth:`Backbone.weight_decay_parameters`. The
table in ``docs/backbones.md`` lists each one with what it promises, who uses it and how
:func:`~atomzoo.backbones.contract.check_backbone` checks it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from atomzoo.nn.droppath import drop_path_modules, set_drop_path
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
#: ``avg_num_neighbors``: MACE's buffer, saved only when it is not the configured number ("auto"), so
#: files of an explicit number lack it; MACE's ``_load_from_state_dict`` then keeps its own value.
OPTIONAL_PARAMETERS = ("mask_embedding", "neighbor_mask_embedding", "avg_num_neighbors")


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
    """Base class of all backbones: the contract, every capability declared with its default.

    Subclasses call ``super().__init__(width=..., cutoff=..., vector_width=..., condition_dim=...)``
    and implement :meth:`forward`. ``docs/backbones.md`` has the capability table (what each
    declaration promises, which objectives use it, how
    :func:`atomzoo.backbones.contract.check_backbone` checks it).

    Args:
        width: number of per-atom scalar features F (``scalars`` is ``[N, width]``).
        cutoff: interaction radius in Angstrom (the radius of :meth:`graph`); atoms farther apart
            than this do not see each other.
        vector_width: number of per-atom vector channels (``vectors`` is ``[N, 3, vector_width]``;
            0: the backbone has no vector features and returns ``vectors=None``).
        condition_dim: size C of the per-molecule condition ``forward`` accepts (0: it accepts
            none). With C > 0 the backbone holds :attr:`conditioning`.
        max_num_neighbors: optional neighbour cap of :meth:`graph`; exceeding it raises (never a
            silent drop).

    Raises:
        ValueError: ``width <= 0`` or ``cutoff <= 0``.
        TypeError: (on construction) an argument listed in :attr:`renamed_arguments`, naming its
            new name.

    Attributes:
        conditioning: the per-layer condition machinery
            (:class:`atomzoo.nn.conditioning.LayerConditioning`: mask token, condition layer norm,
            one adaLN per layer), or ``None`` (the default; ``condition_dim == 0``). Build it with
            ``condition_modules(num_layers, width, condition_dim)``. ``condition=None`` then runs
            every molecule with the learned mask token: a conditioned backbone is one network.
    """

    #: Every distance and direction the backbone uses comes from :meth:`graph`, which adds the
    #: periodic images of structures with ``cell`` / ``pbc``. False (the default): a periodic batch
    #: raises ``ValueError`` instead of being treated as a molecule.
    periodic: bool = False
    #: ``forward`` honours ``data.atom_mask`` (``[N]`` bool, True = masked): a masked atom's element
    #: cannot influence any output (use :meth:`apply_atom_mask` with a learned ``mask_embedding``).
    #: False (the default): objectives that mask atoms (JEPA, ``mask_ratio > 0``) refuse the backbone.
    supports_mask: bool = False
    #: Constructor arguments that were renamed, ``{old name: new name}``: passing an old name raises
    #: a one-line ``TypeError`` naming the new one; :func:`rename_init_args` translates the
    #: ``init_args`` of model files written before the rename. Default: none.
    renamed_arguments: dict[str, str] = {}

    def __new__(cls, *args, **kwargs):
        _refuse_renamed_arguments(cls, kwargs)
        return super().__new__(cls)

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
        self.conditioning = None  # a subclass with condition_dim > 0 sets its LayerConditioning
        self.register_forward_pre_hook(_refuse_periodic_unless_supported)

    @property
    def supports_condition(self) -> bool:
        """``condition_dim > 0``: ``forward`` accepts a condition ``[num_graphs, condition_dim]``."""
        return self.condition_dim > 0

    @property
    def has_vectors(self) -> bool:
        """``vector_width > 0``: ``forward`` returns equivariant vector features."""
        return self.vector_width > 0

    @property
    def supports_drop_path(self) -> bool:
        """The backbone holds at least one :class:`atomzoo.nn.droppath.DropPath` on its residual
        updates, so objectives' ``drop_path`` option (stochastic depth) can reach it."""
        return bool(drop_path_modules(self))

    def set_drop_path(self, rate: float) -> int:
        """Set the rate of every :class:`~atomzoo.nn.droppath.DropPath` inside the backbone.

        Objectives call it each training step with their scheduled rate (``--model.drop_path``).
        Returns how many were set; raises ``ValueError`` for a rate outside ``[0, 1)``.
        """
        return set_drop_path(self, rate)

    def element_embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of the element (atomic-number) embedding, for objectives that freeze it (SCD)
        and for the optimizer's parameter groups (no weight decay).

        The default returns the parameters of an attribute named ``embedding`` (empty if there is
        none); override it if yours is named otherwise (MACE returns its ``node_embedding``).
        """
        module = getattr(self, "embedding", None)
        return list(module.parameters()) if isinstance(module, nn.Module) else []

    def weight_decay_parameters(self) -> list[nn.Parameter] | None:
        """The backbone's parameters that take weight decay, or ``None`` (the default) for the
        generic rule of :mod:`atomzoo.objectives.param_groups` (weight matrices of 2 or more
        dimensions, not embeddings or norms). Override it when that rule cannot tell your weights
        apart (MACE: e3nn stores weight matrices flattened to 1-D). Every parameter of the backbone
        not returned is not decayed."""
        return None

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
        return build_graph(data.pos, data.batch, self.cutoff, self.max_num_neighbors, cell=cell, pbc=pbc,
                           candidates=getattr(data, "candidate_edge_index", None))  # a reused neighbour list

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
        """Per-atom features of ``data`` (module docstring for the fields).

        Args:
            data: the batch; take every distance and direction from ``self.graph(data)``.
            condition: ``None`` or ``[num_graphs, condition_dim]``; call :meth:`check_condition`
                first. With ``condition_dim > 0``, ``None`` means the mask token for every molecule.

        Returns :class:`BackboneOutput`: scalars invariant under rotations, reflections and
        translations (and lattice translations), vectors rotating as ``v -> R v``, both equivariant
        under permutations of the atoms.
        """
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


def rename_init_args(backbone_class: type, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` with every old argument name of ``backbone_class.renamed_arguments`` replaced by
    its new name (values unchanged), for reading configs and model files written before a rename.

    ``backbone_class`` may be any class (one without ``renamed_arguments`` gets ``init_args`` back as
    a dict). Raises ``TypeError`` when both the old and the new name are given.
    """
    renamed = getattr(backbone_class, "renamed_arguments", None) or {}
    out = dict(init_args)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise TypeError(f"{backbone_class.__name__}: init_args give both {old!r} and its new name {new!r}; "
                                f"keep {new!r}")
            out[new] = out.pop(old)
    return out


def _refuse_renamed_arguments(cls: type, kwargs: Mapping[str, Any]) -> None:
    """Raise a one-line ``TypeError`` for a renamed constructor argument (``cls.renamed_arguments``),
    unless ``cls`` itself still accepts that name."""
    renamed = cls.renamed_arguments
    for old in kwargs:
        if old in renamed and old not in inspect.signature(cls.__init__).parameters:
            raise TypeError(f"{cls.__name__}: the argument {old!r} is now called {renamed[old]!r} "
                            f"(init_args.{renamed[old]}, same value and meaning)")


def _refuse_periodic_unless_supported(module: Backbone, args, kwargs=None):
    data = args[0] if args else None
    if data is not None and not module.periodic and periodic_cell(data)[1] is not None:
        raise ValueError(
            f"{type(module).__name__} got periodic structures (pbc set) but does not declare periodic = True: "
            "a backbone that computes distances itself would treat a crystal as a molecule. Take all geometry "
            "from self.graph(data) (it adds periodic images) and set the class attribute periodic = True"
        )


__all__ = ["ATOM_MASK", "OPTIONAL_PARAMETERS", "Backbone", "BackboneOutput", "atom_mask", "periodic_cell",
           "rename_init_args"]
