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
import math
import os
import warnings
from collections.abc import Sequence
from typing import Literal

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

#: ``avg_num_neighbors="auto"``: computed from the training split at setup (mace-torch's
#: ``--compute_avg_num_neighbors``, on by default in ``mace_run_train``).
AUTO = "auto"


def _avg_num_neighbors_value(value) -> float:
    """The buffer value of the ``avg_num_neighbors`` option: NaN for ``"auto"`` (not computed yet), else the
    number. Raises ``ValueError`` for anything but ``"auto"`` or a finite number > 0."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"MACE avg_num_neighbors must be 'auto' or a positive number, got {value!r} "
                         "(--model.backbone.init_args.avg_num_neighbors)")  # fmt: skip
    return number


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
        avg_num_neighbors: every aggregated message is divided by this number (mace-torch's
            ``avg_num_neighbors``). ``"auto"`` (the default of ``configs/backbones/mace.yaml``, as
            ``mace_run_train``'s ``--compute_avg_num_neighbors`` is on by default): the mean number of
            neighbours per atom within ``cutoff`` over the TRAINING split, computed once when an
            objective is set up on an atomzoo DataModule (``AtomsDataModule.neighbour_statistics``:
            cached per-structure edge counts of the model's own neighbour list, periodic images
            included, streamed from the store) and logged in one line; until then ``forward`` raises
            ``ValueError``. Pure Python without a Trainer: :meth:`set_avg_num_neighbors`. A number is
            used as given. The Python default stays 15.6, the average number of neighbours within
            5 A in QM9 (:data:`QM9_AVG_NUM_NEIGHBORS_5A`). Either way the value used is the buffer
            ``avg_num_neighbors`` (float64), saved in the state dict whenever it is not the configured
            number ("auto", :meth:`set_avg_num_neighbors`, or loaded from such a file; an explicit
            number's state dict keeps mace-torch's keys), so checkpoints, exports and ``atomzoo.load``
            keep it without data, and ``init_from`` takes the pretrained model's (as mace-torch's
            fine-tuning keeps the foundation model's; a configured number it replaces is warned about). mace-torch's
            ``compute_avg_num_neighbors`` averages over atoms with at least one neighbour; this is
            edges / atoms (an isolated atom counts 0): the same whenever every atom has a neighbour.
            ``ValueError``: neither ``"auto"`` nor a positive number; a training split without
            neighbours within the cutoff.
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
        avg_num_neighbors: float | Literal["auto"] = QM9_AVG_NUM_NEIGHBORS_5A,
        atomic_numbers: Sequence[int] = (1, 6, 7, 8, 9),
        interaction_first: str = "RealAgnosticInteractionBlock",
        interaction: str = "RealAgnosticResidualInteractionBlock",
        use_reduced_cg: bool = False,
        max_num_neighbors: int | None = None,
        condition_dim: int = 0,
        dtype: str | None = None,
    ) -> None:
        neighbours = _avg_num_neighbors_value(avg_num_neighbors)
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
        # the message normalisation in use, NaN while "auto" is not computed; float64. In the state dict when it
        # is not the configured number ("auto", set or loaded): an explicit number's files stay as they were
        self.register_buffer("avg_num_neighbors", torch.tensor(neighbours, dtype=torch.float64),
                             persistent=math.isnan(neighbours))  # fmt: skip
        self._avg_num_neighbors_pending = math.isnan(neighbours)
        self._avg_num_neighbors_given = None if math.isnan(neighbours) else neighbours  # a number in the config
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
                    avg_num_neighbors=neighbours,
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

    # ----- avg_num_neighbors: "auto" is computed from the training split at setup -----------------
    def set_avg_num_neighbors(self, value: float) -> None:
        """Use ``value`` (a finite number > 0) as the message normalisation: the buffer and every
        interaction block's ``avg_num_neighbors``. For "auto" in pure Python, e.g.
        ``backbone.set_avg_num_neighbors(datamodule.neighbour_statistics(backbone.cutoff)["mean_neighbours"])``.

        Raises:
            ValueError: ``value`` is not a finite number > 0.
        """
        self.avg_num_neighbors.fill_(_avg_num_neighbors_value(float(value)))
        self._non_persistent_buffers_set.discard("avg_num_neighbors")  # saved from now on
        self._sync_avg_num_neighbors()

    def _sync_avg_num_neighbors(self) -> None:
        """Give mace-torch's interaction blocks (a Python float each) the buffer's value."""
        buffer = self._buffers.get("avg_num_neighbors")
        if buffer is None or buffer.is_meta:
            return
        value = float(buffer)
        for block in self.interactions:
            block.avg_num_neighbors = value
        self._avg_num_neighbors_pending = math.isnan(value)

    def file_buffers(self, init_args: dict) -> dict[str, torch.Tensor]:
        """Buffers a model file implies through its recorded constructor arguments but does not hold: a file
        of an explicit ``avg_num_neighbors`` (converted mace-torch models, files written before the buffer
        existed) loaded into this backbone while its ``"auto"`` is not computed yet gives that number, as
        mace-torch's fine-tuning keeps the foundation model's. :func:`atomzoo.model_files.load_into_backbone`
        adds them to the file's weights when missing. ``{}`` when the number is set here already."""
        number = init_args.get("avg_num_neighbors")
        if not getattr(self, "_avg_num_neighbors_pending", False) or isinstance(number, str) or number is None:
            return {}
        return {"avg_num_neighbors": torch.tensor(_avg_num_neighbors_value(float(number)), dtype=torch.float64)}

    def neighbour_statistics_cutoff(self) -> float | None:
        """The cutoff (Angstrom) at which this backbone needs the training split's neighbour statistics
        (``DataSummary.neighbours``) at setup: its ``cutoff`` while ``avg_num_neighbors="auto"`` is not
        computed, else ``None``. :meth:`atomzoo.objectives.base.Objective.setup` asks for it."""
        return self.cutoff if getattr(self, "_avg_num_neighbors_pending", False) else None

    def on_data_summary(self, summary) -> str | None:
        """Take ``avg_num_neighbors="auto"`` from the DataModule's
        :class:`~atomzoo.nn.statistics.DataSummary` (``summary.neighbours["mean_neighbours"]``, the
        training split's neighbours per atom within ``cutoff``), called by the objective at setup.

        A value already set (a number, one computed before, or loaded from a checkpoint / ``init_from``
        file) is kept: the weights were trained with it. Without neighbour statistics (``summary``
        ``None``: not an atomzoo DataModule) nothing changes and ``forward`` raises.

        Returns:
            the line to log (the value, the cutoff and the split it comes from), or ``None``.

        Raises:
            ValueError: statistics at another cutoff; a training split without neighbours within the cutoff.
        """
        stats = getattr(summary, "neighbours", None)
        if not getattr(self, "_avg_num_neighbors_pending", False) or stats is None:
            return None
        if abs(float(stats["cutoff_A"]) - self.cutoff) > 1e-9:
            raise ValueError(f"MACE avg_num_neighbors='auto': neighbour statistics at {stats['cutoff_A']} A, "
                             f"the backbone's cutoff is {self.cutoff} A")  # fmt: skip
        mean = float(stats["mean_neighbours"])
        if not mean > 0:
            raise ValueError(
                f"MACE avg_num_neighbors='auto': the training split has no neighbours within the cutoff "
                f"({self.cutoff:g} A); give a number with --model.backbone.init_args.avg_num_neighbors or a larger cutoff"
            )
        self.set_avg_num_neighbors(mean)
        unusual = "; unusual (mace-torch warns outside 2-100)" if not 2 <= mean <= 100 else ""
        return (f"MACE avg_num_neighbors = {mean:.6g} (auto: mean neighbours per atom within {self.cutoff:g} A "
                f"over the training split, {summary.dataset}{unusual})")  # fmt: skip

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # fmt: skip
        # a file with the buffer ("auto" or set): its value replaces ours, and is saved from now on; a file
        # without it (an explicit number's, or written before the buffer existed) keeps the constructor's number
        key = prefix + "avg_num_neighbors"
        if "avg_num_neighbors" in self._buffers:
            if key in state_dict:
                self._non_persistent_buffers_set.discard("avg_num_neighbors")
            elif "avg_num_neighbors" not in self._non_persistent_buffers_set:
                state_dict[key] = self.avg_num_neighbors.detach().clone()
        given = getattr(self, "_avg_num_neighbors_given", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._sync_avg_num_neighbors()  # the loaded value: what the weights were trained with
        loaded = self.interactions[0].avg_num_neighbors if len(self.interactions) else math.nan
        if given is not None and math.isfinite(loaded) and loaded != given:
            warnings.warn(f"MACE avg_num_neighbors: the loaded weights were trained with {loaded:.6g}, which replaces "
                          f"the configured {given:g} (as mace-torch's fine-tuning keeps the foundation model's)",
                          stacklevel=2)  # fmt: skip

    def _apply(self, fn, recurse=True):
        # .float() / .half() / .to(dtype) convert every floating buffer: keep this one float64 (the blocks'
        # Python float is exact), so a model loaded in float32 or trained in 16-true saves the number it uses
        module = super()._apply(fn, recurse)
        buffer = self._buffers.get("avg_num_neighbors")
        blocks = self._modules.get("interactions")
        if buffer is not None and buffer.dtype != torch.float64 and not buffer.is_meta and blocks:
            value = float(blocks[0].avg_num_neighbors)
            self._buffers["avg_num_neighbors"] = torch.tensor(value, dtype=torch.float64, device=buffer.device)
        return module

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
        """Per-atom features of ``data``. Under autocast (``--trainer.precision bf16-mixed`` / ``16-mixed``)
        MACE runs in its parameters' dtype: e3nn's tensor products take one dtype for all operands."""
        if torch.is_autocast_enabled(data.pos.device.type):
            with torch.autocast(device_type=data.pos.device.type, enabled=False):
                return self._forward(data, None if condition is None else condition.float())
        return self._forward(data, condition)

    def _forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        if getattr(self, "_avg_num_neighbors_pending", False):
            raise ValueError(
                "MACE avg_num_neighbors='auto' has not been computed: train through a Trainer with an atomzoo "
                "DataModule (set up from the training split), call backbone.set_avg_num_neighbors(value), or give "
                "a number (avg_num_neighbors=15.6 / --model.backbone.init_args.avg_num_neighbors 15.6)"
            )
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


# ----- mace-torch's saved models (MACE-MP, MACE-OFF) -> this backbone + mace's readouts ---------------
#: the ``source_head`` kind a converted file records (``atomzoo.model_files.SOURCE_HEAD_PREFIX`` tensors;
#: files are written and read by :mod:`atomzoo.convert`, so this module imports no file reader)
MACE_READOUT = "mace-readout"


class MACEConversionError(ValueError):
    """A mace-torch model that this backbone cannot represent (the message names the feature)."""


def mace_init_args(model: torch.nn.Module) -> dict:
    """Constructor arguments of :class:`MACE` that rebuild the network of a mace-torch ``MACE`` /
    ``ScaleShiftMACE`` module (what ``torch.load`` of a MACE-MP / MACE-OFF / ``mace_run_train`` file gives).

    Raises:
        MACEConversionError: a feature this backbone does not have (pair repulsion / ZBL, joint
            embeddings, a radial basis other than Bessel, a distance transform, cuequivariance layout).
    """
    for attribute, feature in (("pair_repulsion", "pair repulsion (ZBL)"), ("joint_embedding", "joint embeddings"),
                               ("embedding_readout", "an embedding readout")):  # fmt: skip
        if hasattr(model, attribute):
            raise MACEConversionError(f"the MACE model uses {feature}, which atomzoo's MACE backbone does not have")
    radial = model.radial_embedding
    if type(radial.bessel_fn).__name__ != "BesselBasis" or hasattr(radial, "distance_transform"):
        raise MACEConversionError(
            f"the MACE model's radial basis is {type(radial.bessel_fn).__name__}"
            f"{' with a distance transform' if hasattr(radial, 'distance_transform') else ''}; atomzoo's MACE backbone "
            "uses Bessel functions of the plain distance"
        )
    interactions = list(model.interactions)
    hidden = interactions[1].node_feats_irreps if len(interactions) > 1 else model.products[0].linear.irreps_out
    return {
        "cutoff": float(model.r_max),
        "num_bessel": int(radial.out_dim),
        "num_polynomial_cutoff": int(radial.cutoff_fn.p),
        "max_ell": int(model.spherical_harmonics.irreps_out.lmax),
        "correlation": [int(p.symmetric_contractions.contractions[0].correlation) for p in model.products],
        "num_interactions": len(interactions),
        "hidden_irreps": str(hidden),
        "radial_MLP": [int(h) for h in interactions[0].conv_tp_weights.hs[1:-1]],
        "avg_num_neighbors": float(interactions[0].avg_num_neighbors),
        "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
        "interaction_first": type(interactions[0]).__name__,
        "interaction": type(interactions[-1]).__name__ if len(interactions) > 1 else "RealAgnosticResidualInteractionBlock",
        "use_reduced_cg": bool(getattr(model, "use_reduced_cg", False)),
        "dtype": "float64" if next(model.parameters()).dtype == torch.float64 else "float32",
    }


def convert_mace_state(model: torch.nn.Module, backbone: MACE) -> tuple[dict[str, Tensor], list[str]]:
    """``backbone``'s state dict filled from a mace-torch model of the same hyperparameters (:func:`mace_init_args`).

    Same names and shapes are copied. mace-torch keeps only the scalars in its last layer, this backbone
    keeps every irrep of ``hidden_irreps``: there e3nn's flat weights of the scalar paths are the first
    entries of this backbone's (o3.Linear and FullyConnectedTensorProduct order their paths by input
    irrep, 0e first), so they are copied into that prefix; the paths to the non-scalars (which no
    readout of mace-torch reads) and this backbone's own extras (mask token, conditioning) keep their
    initial values. Returns ``(state_dict, kept)``: ``kept`` names the tensors not taken from ``model``.

    Raises:
        MACEConversionError: a parameter whose name or shape fits neither rule.
    """
    theirs = model.state_dict()
    ours = backbone.state_dict()
    parameters = {name for name, _ in backbone.named_parameters()}
    last = f"products.{len(backbone.products) - 1}.symmetric_contractions.contractions."
    out, kept = {}, []
    for key, value in ours.items():
        source = theirs.get(key)
        if source is not None and source.shape == value.shape:
            out[key] = source.detach().to(value.dtype).clone()
        elif source is not None and key in parameters and value.dim() == source.dim() == 1 and source.numel() < value.numel():
            out[key] = torch.cat([source.detach().to(value.dtype), value[source.numel():]])  # the scalar paths
            kept.append(f"{key}[{source.numel()}:]")
        elif key not in parameters or key.startswith((last, "mask_embedding", "conditioning")):
            out[key] = value  # constants of this layout (output masks), non-scalar paths of the last layer, extras
            kept.append(key)
        else:
            shape = None if source is None else tuple(source.shape)
            raise MACEConversionError(f"MACE parameter {key}: mace-torch {shape}, atomzoo {tuple(value.shape)}")
    return out, kept


def _gate_name(readout) -> str:
    acts = getattr(getattr(readout, "non_linearity", None), "acts", None)
    act = getattr(acts[0], "f", acts[0]) if acts else None
    for name in ("silu", "tanh", "gelu"):
        if act is getattr(torch.nn.functional, name, None) or getattr(act, "__name__", None) == name:
            return name
    raise MACEConversionError(f"the MACE model's readout gate {act!r} is not one of silu, tanh, gelu")


class MACEReadout(torch.nn.Module):
    """mace-torch's energy readout on :class:`MACE`'s output: ``E = sum_i [E0(z_i) + shift + scale *
    sum_l readout_l(h_i^l)]`` in eV (``ScaleShiftMACE``; plain ``MACE``: scale 1, shift 0).

    ``readout_l`` are mace-torch's own blocks (``LinearReadoutBlock`` for every layer but the last,
    ``NonLinearReadoutBlock`` with ``mlp_irreps`` and ``gate`` for the last) applied to layer ``l``'s
    scalars (the ``l``-th ``num_scalars`` columns of ``BackboneOutput.scalars``). ``head``: which output
    of a multi-head model (MACE-MP-0b3, MACE-OMAT) is read.

    Args:
        num_interactions, num_scalars: the backbone's layers and scalar channels per layer.
        atomic_numbers: the backbone's element list (order of ``atomic_energies``' last axis).
        mlp_irreps: hidden irreps of the last readout (mace ``MLP_irreps``, e.g. ``"16x0e"``).
        gate: ``"silu"``, ``"tanh"`` or ``"gelu"``.
        heads: mace-torch's head names; ``head``: the index used.
        dtype: ``"float32"``, ``"float64"`` or None (torch's default): the dtype the blocks are built in
            (e3nn builds constants of its linear maps then; float64 models need a float64 build).
    """

    def __init__(self, num_interactions: int, num_scalars: int, atomic_numbers: Sequence[int], mlp_irreps: str,
                 gate: str = "silu", heads: Sequence[str] = ("Default",), head: int = 0,
                 dtype: str | None = None) -> None:  # fmt: skip
        mace_modules, o3 = import_mace()
        build_dtype = torch.get_default_dtype() if dtype is None else _DTYPES[dtype]
        super().__init__()
        self.heads, self.head = list(heads), int(head)
        num_heads = len(self.heads)
        scalars = o3.Irreps(f"{num_scalars}x0e")
        out = o3.Irreps(f"{num_heads}x0e")
        with _quiet_torchscript(), _default_dtype(build_dtype):
            self.readouts = torch.nn.ModuleList(
                mace_modules.LinearReadoutBlock(scalars, out) for _ in range(num_interactions - 1)
            )
            self.readouts.append(mace_modules.NonLinearReadoutBlock(
                scalars, (num_heads * o3.Irreps(mlp_irreps)).simplify(), getattr(torch.nn.functional, gate), out,
                num_heads))  # fmt: skip
        self.num_scalars = int(num_scalars)
        self.register_buffer("atomic_energies", torch.zeros(num_heads, len(atomic_numbers), dtype=torch.float64))
        self.register_buffer("scale", torch.ones(num_heads, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(num_heads, dtype=torch.float64))

    def forward(self, scalars: Tensor, element_index: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Energies ``[num_graphs]`` (eV) from ``scalars`` ``[N, L * num_scalars]`` and the atoms'
        positions in the element list ``element_index`` ``[N]``."""
        heads = torch.full_like(element_index, self.head)
        per_atom = sum(readout(scalars[:, l * self.num_scalars:(l + 1) * self.num_scalars], heads)[:, self.head]
                       for l, readout in enumerate(self.readouts))  # fmt: skip
        per_atom = self.scale[self.head].to(per_atom.dtype) * per_atom + self.shift[self.head].to(per_atom.dtype)
        per_atom = per_atom + self.atomic_energies[self.head, element_index].to(per_atom.dtype)
        return torch.zeros(num_graphs, dtype=per_atom.dtype, device=per_atom.device).index_add(0, batch, per_atom)


def convert_mace_readout(model: torch.nn.Module, head: str | None = None) -> tuple[dict, dict[str, Tensor]]:
    """``(config, state_dict)`` of a :class:`MACEReadout` equal to a mace-torch model's readouts, E0 and scale/shift.

    ``head``: the head to read of a multi-head model (default: its last, the fine-tuned one in mace-torch's
    multi-head fine-tuning; MACE-MP-0 and MACE-OFF have one, ``"Default"``).
    """
    heads = [str(h) for h in getattr(model, "heads", None) or ["Default"]]
    if head is not None and head not in heads:
        raise MACEConversionError(f"head {head!r} is not one of the model's heads {heads}")
    config = {
        "num_interactions": len(model.interactions),
        "num_scalars": int(model.products[0].linear.irreps_out.count((0, 1))),
        "atomic_numbers": [int(z) for z in model.atomic_numbers.tolist()],
        "mlp_irreps": str(model.readouts[-1].hidden_irreps[0].mul // len(heads)) + "x0e",
        "gate": _gate_name(model.readouts[-1]), "heads": heads, "head": heads.index(head) if head else len(heads) - 1,
        "dtype": "float64" if next(model.parameters()).dtype == torch.float64 else "float32",
    }  # fmt: skip
    if len(model.readouts) != config["num_interactions"]:
        raise MACEConversionError("the MACE model reads out only its last layer (use_last_readout_only); "
                                  "atomzoo's MACEReadout reads every layer")  # fmt: skip
    readout = MACEReadout(**config)
    state = {f"readouts.{k}": v.detach().clone() for k, v in model.readouts.state_dict().items()}
    state = {k: v if readout.state_dict()[k].shape == v.shape else readout.state_dict()[k] for k, v in state.items()}
    energies = model.atomic_energies_fn.atomic_energies.detach().to(torch.float64)
    state["atomic_energies"] = energies.reshape(len(heads), -1)
    scale_shift = getattr(model, "scale_shift", None)
    for name, default in (("scale", 1.0), ("shift", 0.0)):
        value = getattr(scale_shift, name, None)
        value = torch.full((len(heads),), default, dtype=torch.float64) if value is None else value.detach()
        state[name] = torch.atleast_1d(value.to(torch.float64)).expand(len(heads)).clone()
    readout.load_state_dict(state, strict=True)
    return config, readout.state_dict()


class MACEPotential(torch.nn.Module):
    """A converted mace-torch model: :class:`MACE` (the backbone, for SSL objectives and fine-tuning) +
    :class:`MACEReadout` (mace-torch's energy), giving mace-torch's energies (eV) and forces (eV/A).

    Files: ``python -m atomzoo.convert mace`` writes a converted mace-torch model (safetensors + card);
    :func:`atomzoo.convert.mace_potential` reads it back into this class without any mace-torch *file*
    (the blocks are mace-torch's classes, so the ``[mace]`` extra is installed).
    """

    def __init__(self, backbone: MACE, readout: MACEReadout) -> None:
        super().__init__()
        self.backbone, self.readout = backbone, readout

    def forward(self, data) -> Tensor:
        """Energies ``[num_graphs]`` in eV of a batch (``z``, ``pos`` in Angstrom, ``batch``)."""
        out = self.backbone(data)
        index = self.backbone.z_to_index[data.z]
        return self.readout(out.scalars, index, data.batch, num_graphs(data))

    def energy_and_forces(self, data) -> tuple[Tensor, Tensor]:
        """``(energies [num_graphs] eV, forces [N, 3] eV/A)``; forces are ``-dE/dpos`` (autograd)."""
        pos = data.pos.detach().requires_grad_(True)
        data.pos = pos
        energy = self(data)
        (grad,) = torch.autograd.grad(energy.sum(), pos)
        return energy.detach(), -grad


__all__ = ["AUTO", "MACE", "MACE_READOUT", "QM9_AVG_NUM_NEIGHBORS_5A", "MACEConversionError", "MACEPotential", "MACEReadout",
           "convert_mace_readout", "convert_mace_state", "import_mace", "mace_init_args"]
