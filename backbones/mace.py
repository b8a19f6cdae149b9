"""MACE backbone assembled from mace-torch's own building blocks.

Batatia, Kovacs, Simm, Ortner & Csanyi, "MACE: Higher Order Equivariant Message Passing Neural
Networks for Fast and Accurate Force Fields", NeurIPS 2022, arXiv 2206.07697.

Nothing of MACE is re-implemented here: the element embedding (``LinearNodeEmbeddingBlock``),
radial basis (``RadialEmbeddingBlock``: Bessel functions times a polynomial envelope), spherical
harmonics (``e3nn.o3.SphericalHarmonics``), interaction blocks (``RealAgnostic...InteractionBlock``)
and product blocks (``EquivariantProductBasisBlock``) are mace-torch's, constructed the way
``mace.modules.models.MACE`` constructs them and called the way its ``forward`` calls them. What this
wrapper changes:

* no readouts, atomic energies or scale/shift: heads belong to the objectives;
* every layer, the last included, keeps the full ``hidden_irreps`` (mace-torch keeps only scalars in
  the last layer unless ``keep_last_layer_irreps=True``), so L=1 features exist at the output;
* the radius graph is built inside ``forward`` (:mod:`atomzoo.nn.graph`), from ``data.z`` / ``data.pos``;
* optional adaLN conditioning of each layer's scalar channels (:mod:`atomzoo.nn.conditioning`;
  ``condition_dim`` below says where it enters).

Outputs:

* ``scalars`` ``[N, num_interactions * C0]``: the ``0e`` channels of every layer's node features,
  concatenated layer by layer (C0 = multiplicity of ``0e`` in ``hidden_irreps``). This is what
  mace-torch's ``node_feats`` output / descriptors use, and what its per-layer linear readouts sum
  over, so a linear head on these features can express MACE's own energy readout.
* ``vectors`` ``[N, 3, C1]``: the ``1o`` channels of the last layer (C1 = multiplicity of ``1o``),
  converted from e3nn's flat ``mul x (2l+1)`` layout ``[N, C1*3]`` to Cartesian x, y, z on dim 1.
  e3nn 0.4.4 orders the l=1 components as (x, y, z) (its l=1 spherical harmonic of ``r`` is
  ``sqrt(3) r / |r|`` and ``Irrep("1o").D_from_matrix(R) == R``), not in the (y, z, x) order that
  the usual real-spherical-harmonic order m = -1, 0, +1 would give. The mapping is measured from
  e3nn at construction time (see :func:`_e3nn_l1_basis`) instead of being hard-coded, and the tests
  check equivariance against a plain rotation matrix.

Importing mace-torch sets ``os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'`` for the whole
process (e3nn 0.4.4 ``torch.load``-s a constants file that ``weights_only=True`` refuses). That would
silently weaken every later ``torch.load`` (checkpoints!), so mace is imported lazily, only when a
:class:`MACE` backbone is built, and the variable is restored to its previous state (removed if it
was absent) right after the import.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from atomzoo.nn.batch import num_graphs
from atomzoo.nn.conditioning import condition_modules
from atomzoo.nn.droppath import DropPath

from .base import Backbone, BackboneOutput

log = logging.getLogger(__name__)

_WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

#: Average number of neighbours within 5 A in QM9: 15.6, measured on 5,000 random molecules of the
#: qm9pack CSVs (18.1 atoms per molecule on average). MACE divides every aggregated message by it.
QM9_AVG_NUM_NEIGHBORS_5A = 15.6


def import_mace():
    """Import ``mace.modules`` and ``e3nn.o3``; leave ``os.environ`` as it was before.

    mace's ``__init__`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` and e3nn needs it while it is
    being imported (it loads a trusted constants file shipped inside the e3nn wheel). We set it for
    the duration of the import only, silence the accompanying warning and mace's stdout notice that
    cuequivariance is missing, and then put the variable back (or remove it).

    Returns ``(mace.modules, e3nn.o3)``.
    """
    had, old = _WEIGHTS_ONLY_ENV in os.environ, os.environ.get(_WEIGHTS_ONLY_ENV)
    notice = io.StringIO()
    try:
        os.environ[_WEIGHTS_ONLY_ENV] = "1"
        with warnings.catch_warnings(), contextlib.redirect_stdout(notice):
            warnings.filterwarnings("ignore", message=f".*{_WEIGHTS_ONLY_ENV}")
            import mace.modules as mace_modules
            from e3nn import o3
    finally:
        if had:
            os.environ[_WEIGHTS_ONLY_ENV] = old
        else:
            os.environ.pop(_WEIGHTS_ONLY_ENV, None)
    if notice.getvalue().strip():
        log.debug("mace import: %s", notice.getvalue().strip())
    return mace_modules, o3


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Temporarily make ``dtype`` torch's default (e3nn / mace build their constants in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _quiet_torchscript():
    """Silence the harmless TorchScript annotation warnings e3nn emits while compiling its modules."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support")
        yield


def _e3nn_l1_basis(o3) -> Tensor:
    """``[3, 3]`` matrix ``P`` with ``e3nn_components = P @ xyz`` for an L=1 (1o) feature.

    Measured from e3nn's own l=1 spherical harmonics of the three Cartesian unit vectors, so it is
    right for whatever component order the installed e3nn uses (identity for e3nn 0.4.4).
    """
    eye = torch.eye(3, dtype=torch.float64)
    sh = o3.spherical_harmonics(1, eye, normalize=True, normalization="norm")  # row k: Y1(e_k)
    return sh.T.contiguous()


def _irrep_slice(irreps, irrep) -> slice | None:
    """The channel slice of ``irrep`` in a flat e3nn feature with layout ``irreps`` (None: absent)."""
    found = [s for (mul_ir, s) in zip(irreps, irreps.slices()) if mul_ir.ir == irrep]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"hidden_irreps {irreps} has {irrep} in several blocks; write it simplified")
    return found[0]


class MACE(Backbone):
    """MACE backbone built from mace-torch modules.

    Defaults are mace-torch's command-line defaults (``mace_run_train --model MACE``): cutoff 5 A,
    8 Bessel functions, polynomial envelope p=5, spherical harmonics up to ``max_ell=3``, correlation
    order 3 (4-body messages), 2 interactions, hidden irreps ``128x0e+128x1o``, radial MLP
    ``[64, 64, 64]``, a non-residual first interaction (``RealAgnosticInteractionBlock``) followed by
    residual ones (``RealAgnosticResidualInteractionBlock``).

    mace-torch's readout hyperparameters (``MLP_irreps``, ``gate``) have no counterpart: readouts
    belong to the objective's head. Parameters are created in torch's default dtype (float32
    unless changed; mace's own trainer defaults to float64) or in ``dtype``.

    Args:
        cutoff: cutoff radius in Angstrom (mace-torch's ``r_max``; formerly ``r_max`` here too).
        num_bessel: number of Bessel radial basis functions.
        num_polynomial_cutoff: exponent p of the polynomial cutoff envelope.
        max_ell: highest degree of the edge spherical harmonics.
        correlation: body order minus one of the symmetric product, one int or one per layer.
        num_interactions: number of interaction + product layers.
        hidden_irreps: node feature irreps of every layer; must contain ``0e`` (scalars), and ``1o``
            for vector outputs. Use ``"Cx0e+Cx1o"`` with one multiplicity C, as mace-torch does.
        radial_MLP: hidden sizes of the MLP that turns the radial basis into tensor-product weights.
        avg_num_neighbors: messages are divided by this number. The default, 15.6, is the average
            number of neighbours within 5 A in QM9 (:data:`QM9_AVG_NUM_NEIGHBORS_5A`); set it for
            your data set / cutoff (mace-torch computes it from the training set).
        atomic_numbers: the element set the one-hot node attributes cover; default H, C, N, O, F
            (QM9). Other elements raise an error; widen the list for other data sets (PCQM4Mv2...).
        interaction_first / interaction: names of mace-torch interaction classes
            (``mace.modules.interaction_classes``).
        use_reduced_cg: mace-torch's reduced Clebsch-Gordan option (only effective with
            cuequivariance installed; mace's trainer default is False).
        max_num_neighbors: optional neighbour cap (exceeding it raises; see :mod:`atomzoo.nn.graph`).
        dtype: ``"float32"``, ``"float64"`` or None (torch's current default). The dtype the
            blocks are *built* in. e3nn and mace compute their Clebsch-Gordan / symmetric-contraction
            constants at construction in the default dtype; a float32-built model converted with
            ``.double()`` keeps float32-rounded constants and is equivariant only to ~1e-7
            (relative). Build with ``dtype="float64"`` for float64 work.
        condition_dim: size of the per-molecule condition (0: none: plain MACE). When > 0 the
            ``0e`` channels of each layer's input are replaced by their adaLN-modulated, normalised
            version before the interaction block reads them, and the ``0e`` channels of the product
            block's output (the message part; the self-connection ``sc`` is added ungated) are
            multiplied by the gate (:mod:`atomzoo.nn.conditioning`). In the first layer, which has no
            self-connection, the gate thus scales the layer's whole scalar output. Non-scalars are
            neither modulated nor gated. ``condition=None`` uses the learned mask token.

    Masking (``supports_mask = True``): a masked atom (``data.atom_mask``) gets the learned node
    attribute ``mask_embedding`` ``[num_elements]`` (init uniform ``1 / num_elements``: the average
    element) instead of its one-hot row. Everything element-dependent in mace-torch reads the node
    attributes linearly (the embedding, the skip tensor products, the symmetric-contraction
    weights), so a masked atom is a learned mixture of elements and its true ``z`` is never seen.

    Initialisation: mace-torch's blocks keep their own (e3nn) initialisation, as
    ``mace.modules.models.MACE`` does (it has no ``reset_parameters`` of its own); the adaLN modules
    initialise themselves (:mod:`atomzoo.nn.conditioning`).

    Output: scalars ``[N, num_interactions * C0]``, vectors ``[N, 3, C1]`` (see module docstring).
    """

    periodic = True  # all geometry comes from self.graph(data), periodic images included
    renamed_arguments = {"r_max": "cutoff"}  # one name for the cutoff across backbones
    supports_mask = True

    def __init__(
        self,
        cutoff: float = 5.0,
        num_bessel: int = 8,
        num_polynomial_cutoff: int = 5,
        max_ell: int = 3,
        correlation: int | Sequence[int] = 3,
        num_interactions: int = 2,
        hidden_irreps: str = "128x0e+128x1o",
        radial_MLP: Sequence[int] = (64, 64, 64),
        avg_num_neighbors: float = QM9_AVG_NUM_NEIGHBORS_5A,
        atomic_numbers: Sequence[int] = (1, 6, 7, 8, 9),
        interaction_first: str = "RealAgnosticInteractionBlock",
        interaction: str = "RealAgnosticResidualInteractionBlock",
        use_reduced_cg: bool = False,
        max_num_neighbors: int | None = None,
        condition_dim: int = 0,
        dtype: str | None = None,
    ) -> None:
        mace_modules, o3 = import_mace()
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
        build_dtype = torch.get_default_dtype() if dtype is None else _DTYPES[dtype]
        if num_interactions < 1:
            raise ValueError(f"num_interactions must be >= 1, got {num_interactions}")
        hidden = o3.Irreps(hidden_irreps)
        scalar_slice = _irrep_slice(hidden, o3.Irrep("0e"))
        if scalar_slice is None:
            raise ValueError(f"hidden_irreps must contain 0e scalars, got {hidden}")
        vector_slice = _irrep_slice(hidden, o3.Irrep("1o"))
        num_scalars = hidden.count(o3.Irrep("0e"))
        num_vectors = hidden.count(o3.Irrep("1o"))
        super().__init__(
            width=num_interactions * num_scalars,
            cutoff=cutoff,
            vector_width=num_vectors,
            condition_dim=condition_dim,
            max_num_neighbors=max_num_neighbors,
        )
        zs = sorted(int(z) for z in atomic_numbers)
        if len(set(zs)) != len(zs) or zs[0] < 1:
            raise ValueError(f"atomic_numbers must be distinct positive integers, got {list(atomic_numbers)}")
        correlations = [int(correlation)] * num_interactions if isinstance(correlation, int) else list(correlation)
        if len(correlations) != num_interactions:
            raise ValueError(f"need one correlation order per interaction, got {correlations}")
        for name in (interaction_first, interaction):
            if name not in mace_modules.interaction_classes:
                raise ValueError(
                    f"unknown mace interaction {name!r}; one of {sorted(mace_modules.interaction_classes)}"
                )

        self.hidden_irreps = str(hidden)
        self.num_scalars = num_scalars
        self._scalar_slice = scalar_slice
        self._vector_slice = vector_slice
        self.register_buffer("atomic_numbers", torch.tensor(zs, dtype=torch.int64))
        z_to_index = torch.full((max(zs) + 1,), -1, dtype=torch.int64)
        z_to_index[torch.tensor(zs)] = torch.arange(len(zs))
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        basis = _e3nn_l1_basis(o3)
        self._l1_is_xyz = bool(torch.equal(basis, torch.eye(3, dtype=basis.dtype)))
        self.register_buffer("l1_to_xyz", basis.T.to(build_dtype), persistent=False)

        with _quiet_torchscript(), _default_dtype(build_dtype):
            # --- the blocks, as mace.modules.models.MACE.__init__ builds them ---------------------------
            node_attr_irreps = o3.Irreps([(len(zs), (0, 1))])
            node_feats_irreps = o3.Irreps([(num_scalars, (0, 1))])
            self.node_embedding = mace_modules.LinearNodeEmbeddingBlock(
                irreps_in=node_attr_irreps, irreps_out=node_feats_irreps
            )
            self.radial_embedding = mace_modules.RadialEmbeddingBlock(
                r_max=cutoff, num_bessel=num_bessel, num_polynomial_cutoff=num_polynomial_cutoff
            )
            edge_feats_irreps = o3.Irreps(f"{self.radial_embedding.out_dim}x0e")
            sh_irreps = o3.Irreps.spherical_harmonics(max_ell)
            self.spherical_harmonics = o3.SphericalHarmonics(sh_irreps, normalize=True, normalization="component")
            sh_irreps_inter = sh_irreps
            if hidden.count(o3.Irrep(0, -1)) > 0:  # odd scalars: mace then uses both parities
                sh_irreps_inter = o3.Irreps("+".join(f"1x{l}e+1x{l}o" for l in range(max_ell + 1)))
            interaction_irreps = (sh_irreps_inter * num_scalars).sort()[0].simplify()
            interaction_irreps_first = (sh_irreps * num_scalars).sort()[0].simplify()

            first_cls = mace_modules.interaction_classes[interaction_first]
            cls = mace_modules.interaction_classes[interaction]
            self.interactions = torch.nn.ModuleList()
            self.products = torch.nn.ModuleList()
            for i in range(num_interactions):
                block_cls = first_cls if i == 0 else cls
                block = block_cls(
                    node_attrs_irreps=node_attr_irreps,
                    node_feats_irreps=node_feats_irreps if i == 0 else hidden,
                    edge_attrs_irreps=sh_irreps,
                    edge_feats_irreps=edge_feats_irreps,
                    target_irreps=interaction_irreps_first if i == 0 else interaction_irreps,
                    hidden_irreps=hidden,
                    avg_num_neighbors=float(avg_num_neighbors),
                    radial_MLP=[int(h) for h in radial_MLP],
                )
                self.interactions.append(block)
                self.products.append(
                    mace_modules.EquivariantProductBasisBlock(
                        node_feats_irreps=block.target_irreps if i == 0 else interaction_irreps,
                        target_irreps=hidden,
                        correlation=correlations[i],
                        num_elements=len(zs),
                        # mace: the first product gets a self-connection only if its interaction is residual
                        use_sc=(i > 0) or ("Residual" in str(block_cls)),
                        use_reduced_cg=use_reduced_cg,
                    )
                )
            self.conditioning = condition_modules(num_interactions, num_scalars, condition_dim)
            self.mask_embedding = torch.nn.Parameter(torch.full((len(zs),), 1.0 / len(zs)))
        self.drop_path = DropPath()  # per-atom stochastic depth of each residual update; rate set by objectives

    def element_embedding_parameters(self) -> list[torch.nn.Parameter]:
        """The element embedding is mace's ``LinearNodeEmbeddingBlock`` (one-hot -> C0 scalars).

        Element-dependent weights also live inside the interactions' skip tensor products and the
        product blocks; those are part of the network proper and are not returned here.
        """
        return list(self.node_embedding.parameters())

    def weight_decay_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that take weight decay, by mace-torch's own rule (``get_params_options``):
        the interaction blocks' ``linear.weight`` (and ``skip_tp_full.weight``) and all product-block
        weights; not the element embedding, the radial MLPs, ``linear_up`` or the skip tensor product.
        (e3nn stores weight matrices flattened to 1-D, so the generic ">= 2 dimensions" rule of
        :mod:`atomzoo.objectives.param_groups` cannot tell them apart.)
        """
        decay = [p for name, p in self.interactions.named_parameters()
                 if "linear.weight" in name or "skip_tp_full.weight" in name]
        return decay + list(self.products.parameters())

    def node_attrs(self, z: Tensor, dtype: torch.dtype) -> Tensor:
        """One-hot ``[N, num_elements]`` over :attr:`atomic_numbers` (raises on unknown elements)."""
        table = self.z_to_index
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= table.numel() or bool((table[z] < 0).any())):
            known = self.atomic_numbers.tolist()
            unknown = sorted(set(z.tolist()) - set(known))
            raise ValueError(f"MACE backbone built for elements {known}; got atomic numbers {unknown}")
        return torch.nn.functional.one_hot(table[z], num_classes=self.atomic_numbers.numel()).to(dtype)

    def to_cartesian(self, feats: Tensor) -> Tensor:
        """e3nn ``1o`` block ``[N, C1*3]`` (mul-major) -> Cartesian ``[N, 3, C1]`` (x, y, z)."""
        v = feats.reshape(feats.size(0), -1, 3)  # [N, C1, 3] in e3nn's component order
        if not self._l1_is_xyz:
            v = v @ self.l1_to_xyz.to(v.dtype).T
        return v.transpose(1, 2)

    def _replace_scalars(self, feats: Tensor, scalars: Tensor) -> Tensor:
        """``feats`` with its ``0e`` channels replaced by ``scalars`` ``[N, C0]`` (out of place)."""
        sl = self._scalar_slice
        return torch.cat([feats[:, : sl.start], scalars, feats[:, sl.stop :]], dim=-1)

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)
        edge_index = graph.edge_index
        node_attrs = self.apply_atom_mask(self.node_attrs(data.z, data.pos.dtype), data, self.mask_embedding)
        # mace's edge vectors point from sender to receiver: pos[dst] - pos[src] = -graph.vec
        edge_attrs = self.spherical_harmonics(-graph.vec)
        edge_feats, cutoff = self.radial_embedding(
            graph.length.unsqueeze(-1), node_attrs, edge_index, self.atomic_numbers
        )
        node_feats = self.node_embedding(node_attrs)
        scalars = []
        sl = self._scalar_slice
        cond = self.conditioning.prepare(condition, num_graphs(data)) if self.conditioning is not None else None
        for i, (interaction, product) in enumerate(zip(self.interactions, self.products)):
            gate = None
            if cond is not None:
                x_scalars = node_feats if i == 0 else node_feats[:, sl]
                x_mod, gate = self.conditioning[i](x_scalars, cond, data.batch)
                node_feats = x_mod if i == 0 else self._replace_scalars(node_feats, x_mod)
            messages, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=edge_index,
                cutoff=cutoff,
                first_layer=(i == 0),
            )
            # product(messages, sc) is linear(...) + sc; the residual branch goes through drop-path
            update = product(node_feats=messages, sc=None, node_attrs=node_attrs)
            if gate is not None:
                update = self._replace_scalars(update, gate * update[:, sl])
            node_feats = sc + self.drop_path(update) if (product.use_sc and sc is not None) else update
            scalars.append(node_feats[:, sl])
        vectors = None
        if self._vector_slice is not None:
            vectors = self.to_cartesian(node_feats[:, self._vector_slice])
        return BackboneOutput(scalars=torch.cat(scalars, dim=-1), vectors=vectors, graph=graph)


__all__ = ["MACE", "QM9_AVG_NUM_NEIGHBORS_5A", "import_mace"]
