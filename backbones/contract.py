"""The backbone contract as checks: run them on your own backbone before training it.

Three lines::

    from atomzoo.backbones.contract import check_backbone
    from mypkg import MyNet
    check_backbone(lambda: MyNet(width=16))          # raises AssertionError naming the failed check

One check per row of the capability table in ``docs/backbones.md`` (the declarations on
:class:`atomzoo.backbones.Backbone`), on small random molecules of H, C, N, O, F (override
``elements``) that include a single-atom molecule and an atom with no neighbour inside the cutoff,
and on a small random crystal:

* ``shapes`` (``width``, ``vector_width``): ``scalars`` ``[N, width]``, ``vectors``
  ``[N, 3, vector_width]`` or ``None`` (if ``vector_width == 0``), all finite;
* ``symmetries``: scalars invariant and vectors rotating as ``v -> R v`` under rotations and
  rotoreflections; everything invariant under translations; permuting atoms within molecules
  permutes the outputs;
* ``locality`` (``cutoff``): molecules in one batch do not see each other, and an atom with no
  neighbour inside the cutoff gives exactly what the same atom alone gives;
* ``max_num_neighbors``: a neighbour cap that is exceeded raises ``RuntimeError`` (never a silent drop);
* ``forces``: ``-d(sum_i s_i . w)/d pos`` by autograd equals central finite differences
  (:func:`check_forces`), and sums to zero over an isolated molecule;
* ``periodic``: with ``periodic = True``, on a crystal whose cell is smaller than the cutoff:
  invariance to moving one atom by a lattice vector and to rotating the crystal (vectors rotate),
  every atom of a 2x1x1 supercell gives what its atom of the unit cell gives, the crystal is not the
  molecule made of the same atoms, and forces match finite differences. With ``periodic = False``
  a periodic batch must raise ``ValueError``;
* ``conditioning`` (``condition_dim``, ``conditioning``): with ``condition_dim > 0``:
  ``backbone.conditioning`` is a :class:`~atomzoo.nn.conditioning.LayerConditioning`,
  ``condition=None`` is exactly the learned mask token for every molecule, a condition changes the
  output, one molecule's condition changes its own atoms and no other molecule's, a wrong shape
  raises ``ValueError``, and the symmetries and forces hold when conditioned. With
  ``condition_dim == 0`` a condition must raise ``ValueError``;
* ``masking`` (only when ``supports_mask``): an all-False ``atom_mask`` is the unmasked network;
  masking changes the masked atoms' features; the true element of a masked atom cannot be read from
  any output; symmetries hold with a mask. Without ``supports_mask`` the check reports "skipped"
  (masking objectives will then refuse the backbone with an error saying what to add);
* ``drop_path`` (only when ``supports_drop_path``): at rate 0 training mode gives the evaluation
  output, a positive rate changes the training output and leaves the evaluation output alone;
* ``element_embedding``: :meth:`~atomzoo.backbones.Backbone.element_embedding_parameters` returns
  parameters of the backbone that change its output;
* ``weight_decay``: :meth:`~atomzoo.backbones.Backbone.weight_decay_parameters` is ``None`` or
  parameters of the backbone;
* ``renamed_arguments``: every old constructor name is refused with a ``TypeError`` naming the new one.

Run in float64 (the default: ``factory()`` is converted with ``.to(float64)``; build MACE with
``dtype="float64"``) so that tolerances can be tight; ``dtype=torch.float32`` loosens them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from atomzoo.nn.batch import with_positions
from atomzoo.nn.conditioning import LayerConditioning
from atomzoo.nn.droppath import drop_path_modules

from .base import ATOM_MASK, Backbone, BackboneOutput

__all__ = [
    "check_backbone",
    "check_conditioning",
    "check_drop_path",
    "check_element_embedding",
    "check_forces",
    "check_locality",
    "check_masking",
    "check_max_num_neighbors",
    "check_periodic",
    "check_renamed_arguments",
    "check_shapes",
    "check_symmetries",
    "check_weight_decay",
    "finite_difference_gradient",
    "random_batch",
    "random_crystal",
    "random_molecule",
    "random_orthogonal",
]

DEFAULT_ELEMENTS = (1, 6, 7, 8, 9)


# ----------------------------------------------------------------------------------------- data
def random_molecule(n: int, gen: torch.Generator, elements: Sequence[int] = DEFAULT_ELEMENTS,
                    min_dist: float = 1.0, dtype: torch.dtype = torch.float64) -> Data:
    """``n`` atoms of random ``elements``, pairwise at least ``min_dist`` Angstrom apart, in a ~1.6 n^(1/3) A box."""
    side = 1.6 * max(n, 2) ** (1 / 3)
    pos = torch.empty(0, 3, dtype=dtype)
    while pos.size(0) < n:
        p = (torch.rand(1, 3, generator=gen, dtype=dtype) - 0.5) * side
        if pos.size(0) == 0 or torch.cdist(p, pos).min() >= min_dist:
            pos = torch.cat([pos, p])
    table = torch.tensor(list(elements))
    return Data(z=table[torch.randint(0, len(table), (n,), generator=gen)], pos=pos)


def random_batch(cutoff: float, seed: int = 0, elements: Sequence[int] = DEFAULT_ELEMENTS,
                 dtype: torch.dtype = torch.float64) -> Batch:
    """Five molecules: 5, 7 and 4 random atoms, a single atom, and 4 atoms plus one atom 3 cutoffs away."""
    gen = torch.Generator().manual_seed(seed)
    mols = [random_molecule(n, gen, elements, dtype=dtype) for n in (5, 7, 4)]
    mols.append(Data(z=torch.tensor([elements[1 % len(elements)]]), pos=torch.zeros(1, 3, dtype=dtype)))
    last = random_molecule(4, gen, elements, dtype=dtype)
    far = last.pos.mean(0, keepdim=True) + torch.tensor([[3.0 * cutoff, 0.0, 0.0]], dtype=dtype)
    mols.append(Data(z=torch.cat([last.z, last.z[:1]]), pos=torch.cat([last.pos, far])))
    return Batch.from_data_list(mols)


#: Lattice vectors (rows) of the test crystal, in units of the cutoff: skewed, every length below it.
CRYSTAL_CELL = ((0.8, 0.0, 0.0), (0.25, 0.75, 0.0), (0.1, 0.15, 0.85))


def random_crystal(cutoff: float, seed: int = 0, elements: Sequence[int] = DEFAULT_ELEMENTS, n: int = 3,
                   min_dist: float = 1.0, dtype: torch.dtype = torch.float64) -> Batch:
    """One periodic structure (``cell`` ``[1, 3, 3]``, ``pbc`` all True): ``n`` random atoms in the
    skewed cell :data:`CRYSTAL_CELL` times ``cutoff``, every pair (periodic images included) at
    least ``min_dist`` Angstrom apart. Every atom sees its own images within the cutoff."""
    gen = torch.Generator().manual_seed(seed)
    cell = torch.tensor(CRYSTAL_CELL, dtype=dtype) * cutoff
    images = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0], dtype=dtype)] * 3) @ cell  # [27, 3]
    frac = torch.empty(0, 3, dtype=dtype)
    for _ in range(10_000):
        if frac.size(0) == n:
            break
        f = torch.rand(1, 3, generator=gen, dtype=dtype)
        placed = (frac @ cell).unsqueeze(1).add(images).reshape(-1, 3)  # every image of the atoms placed so far
        if frac.size(0) == 0 or torch.cdist(f @ cell, placed).min() >= min_dist:
            frac = torch.cat([frac, f])
    else:
        raise ValueError(f"cannot place {n} atoms {min_dist} A apart in a cell of {cutoff} A: use a larger cutoff")
    table = torch.tensor(list(elements))
    z = table[torch.randint(0, len(table), (n,), generator=gen)]
    return Batch.from_data_list([Data(z=z, pos=frac @ cell, cell=cell.unsqueeze(0),
                                      pbc=torch.ones(1, 3, dtype=torch.bool))])


def random_orthogonal(gen: torch.Generator, proper: bool, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random ``[3, 3]`` rotation (``proper``) or rotoreflection (det -1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


# ----------------------------------------------------------------------------------------- helpers
def _tol(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 2e-4


def _close(actual: Tensor, expected: Tensor, what: str, atol: float) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= atol * scale, f"{what}: max deviation {err:.3g} > {atol * scale:.3g}"


def _compare(out: BackboneOutput, ref_scalars: Tensor, ref_vectors: Tensor | None, what: str, atol: float) -> None:
    _close(out.scalars, ref_scalars, f"{what} (scalars)", atol)
    if ref_vectors is not None:
        assert out.vectors is not None, f"{what}: vectors vanished"
        _close(out.vectors, ref_vectors, f"{what} (vectors)", atol)


def _differs(a: Tensor, b: Tensor, atol: float) -> bool:
    return bool((a.detach() - b.detach()).abs().max() > atol)


def _masked(data, mask: Tensor):
    view = data.__copy__()
    setattr(view, ATOM_MASK, mask)
    return view


def _alone(data: Data) -> Batch:
    return Batch.from_data_list([data])


# ----------------------------------------------------------------------------------------- checks
def check_shapes(model: Backbone, batch: Batch) -> BackboneOutput:
    """Declared sizes vs returned shapes, finiteness. Returns the output."""
    assert isinstance(model, Backbone), f"{type(model).__name__} must subclass atomzoo.backbones.Backbone"
    out = model(batch)
    assert isinstance(out, BackboneOutput), f"forward must return a BackboneOutput, got {type(out).__name__}"
    n = batch.num_nodes
    assert out.scalars.shape == (n, model.width), (
        f"scalars: expected {(n, model.width)}, got {tuple(out.scalars.shape)}")
    assert torch.isfinite(out.scalars).all(), "scalars are not finite"
    if model.vector_width:
        assert out.vectors is not None and out.vectors.shape == (n, 3, model.vector_width), (
            f"vectors: expected {(n, 3, model.vector_width)} (vector_width={model.vector_width}), "
            f"got {None if out.vectors is None else tuple(out.vectors.shape)}")
        assert torch.isfinite(out.vectors).all(), "vectors are not finite"
    else:
        assert out.vectors is None, "vector_width == 0 but vectors were returned: declare vector_width"
    return out


def check_symmetries(model: Backbone, batch: Batch, condition: Tensor | None = None, seed: int = 1,
                     what: str = "") -> None:
    """Rotation and rotoreflection (scalars invariant, ``v -> R v``), translation and permutation."""
    dtype, atol = batch.pos.dtype, _tol(batch.pos.dtype)
    gen = torch.Generator().manual_seed(seed)
    out = model(batch, condition)
    for proper, name in ((True, "rotation"), (False, "reflection")):
        rot = random_orthogonal(gen, proper, dtype)
        rotated = model(with_positions(batch, batch.pos @ rot.T), condition)
        expected_v = None if out.vectors is None else torch.einsum("ij,njf->nif", rot, out.vectors)
        _compare(rotated, out.scalars, expected_v, f"{what}{name}", atol)
    shift = torch.tensor([3.0, -1.5, 7.25], dtype=dtype)
    _compare(model(with_positions(batch, batch.pos + shift), condition), out.scalars, out.vectors,
             f"{what}translation", atol)
    jitter = 0.5 * torch.rand(batch.num_nodes, generator=gen, dtype=torch.float64)
    perm = torch.argsort(batch.batch.to(torch.float64) + jitter)  # shuffles atoms within each molecule
    permuted = batch.__copy__()
    permuted.z, permuted.pos = batch.z[perm], batch.pos[perm]
    mask = getattr(batch, ATOM_MASK, None)
    if mask is not None:
        setattr(permuted, ATOM_MASK, mask[perm])
    _compare(model(permuted, condition), out.scalars[perm], None if out.vectors is None else out.vectors[perm],
             f"{what}permutation", atol)


def check_locality(model: Backbone, batch: Batch) -> None:
    """Each molecule of ``batch`` alone gives its rows of the batch's output (molecules do not see
    each other), and the last atom of the last molecule -- farther than the cutoff from everything
    in :func:`random_batch` -- gives what the same element alone gives."""
    atol = _tol(batch.pos.dtype)
    out = model(batch)
    for i in range(batch.num_graphs):
        rows = batch.batch == i
        alone = model(_alone(batch.get_example(i)))
        _compare(alone, out.scalars[rows], None if out.vectors is None else out.vectors[rows],
                 f"molecule {i} alone vs in the batch (molecules must not interact)", atol)
    last = batch.get_example(batch.num_graphs - 1)
    lone = model(_alone(Data(z=last.z[-1:], pos=torch.zeros(1, 3, dtype=batch.pos.dtype))))
    _compare(lone, out.scalars[-1:], None if out.vectors is None else out.vectors[-1:],
             f"an atom farther than the cutoff ({model.cutoff} A) from everything vs the same atom alone", atol)


def check_max_num_neighbors(model: Backbone, batch: Batch) -> None:
    """With the cap set to 1 on a batch where atoms have more neighbours, ``forward`` raises
    ``RuntimeError`` (what :func:`atomzoo.nn.graph.build_graph` raises; edges are never dropped)."""
    previous = model.max_num_neighbors
    model.max_num_neighbors = 1
    try:
        model(batch)
    except RuntimeError as err:
        assert "max_num_neighbors" in str(err), f"max_num_neighbors=1 exceeded: the error does not name it: {err}"
        return
    finally:
        model.max_num_neighbors = previous
    raise AssertionError("max_num_neighbors=1 was exceeded without an error: build the graph with self.graph(data)")


def finite_difference_gradient(energy: Callable[[Tensor], Tensor], pos: Tensor, h: float) -> Tensor:
    """Central differences ``dE/dpos`` ``[N, 3]`` of a scalar ``energy(pos)`` with step ``h`` (Angstrom)."""
    grad = torch.zeros_like(pos)
    with torch.no_grad():
        for i in range(pos.size(0)):
            for k in range(3):
                plus, minus = pos.clone(), pos.clone()
                plus[i, k] += h
                minus[i, k] -= h
                grad[i, k] = (energy(plus) - energy(minus)) / (2 * h)
    return grad


def check_forces(model: Backbone, batch: Batch | None = None, condition: Tensor | None = None, *,
                 seed: int = 4, batch_size_atoms: int = 4, elements: Sequence[int] = DEFAULT_ELEMENTS,
                 dtype: torch.dtype = torch.float64, vector_weight: float = 0.0, atol: float | None = None,
                 rtol: float = 0.0) -> Tensor:
    """Autograd forces vs central finite differences, and zero net force on every structure.

    The energy is ``E = sum_i s_i . w + vector_weight * sum |v|^2`` (``w`` a random readout of the
    scalars, seeded by ``seed``), so forces reach every feature that depends on positions.

    Args:
        model: the backbone (in the dtype of ``batch``).
        batch: the structures (molecules or periodic); default one random molecule of
            ``batch_size_atoms`` atoms of ``elements`` (seeded by ``seed``) in ``dtype``.
        condition: passed to ``forward``.
        vector_weight: weight of the vector term (0: scalars only).
        atol, rtol: the forces must satisfy ``|F - F_fd| <= atol + rtol |F_fd|`` elementwise; default
            ``atol`` is 1e-6 (float64) or 5e-2 (float32) times ``max(1, max |F_fd|)``.

    Returns the autograd forces ``[N, 3]`` (eV/A for an energy in eV). Raises ``AssertionError``
    naming the deviation, or when the forces are all zero (the scalars ignore the positions).
    """
    gen = torch.Generator().manual_seed(seed)
    if batch is None:
        batch = Batch.from_data_list([random_molecule(batch_size_atoms, gen, elements, dtype=dtype)])
    dtype = batch.pos.dtype
    readout = torch.randn(model.width, generator=gen, dtype=dtype)

    def energy(pos: Tensor) -> Tensor:
        out = model(with_positions(batch, pos), condition)
        e = (out.scalars @ readout).sum()
        if vector_weight and out.vectors is not None:
            e = e + vector_weight * out.vectors.square().sum()
        return e

    pos = batch.pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(pos), pos)
    forces = -grad
    h = 1e-5 if dtype == torch.float64 else 1e-2
    fd = -finite_difference_gradient(energy, batch.pos, h)
    assert forces.abs().max() > 1e-6, "forces are zero: do the scalars depend on positions?"
    default = 1e-6 if dtype == torch.float64 else 5e-2
    scale = max(1.0, float(fd.abs().max()))
    bound = (default * scale if atol is None else atol) + rtol * fd.abs()
    err = (forces - fd).abs()
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (
        f"forces vs finite differences: deviation {float(err.flatten()[worst]):.3g} > "
        f"{float(torch.as_tensor(bound).expand_as(err).flatten()[worst]):.3g}")
    net = scatter(forces, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="sum")
    _close(net, torch.zeros_like(net), "net force on an isolated structure", default)
    return forces


def check_periodic(model: Backbone, *, seed: int = 7, elements: Sequence[int] = DEFAULT_ELEMENTS,
                   dtype: torch.dtype = torch.float64) -> str:
    """See the module docstring (on :func:`random_crystal`). Returns ``"ok"`` or ``"refused (periodic = False)"``."""
    crystal = random_crystal(model.cutoff, seed, elements, dtype=dtype)
    if not model.periodic:
        try:
            model(crystal)
        except ValueError:
            return "refused (periodic = False)"
        raise AssertionError("periodic = False but a periodic batch was accepted (Backbone's pre-hook refuses it)")
    atol = _tol(dtype)
    gen = torch.Generator().manual_seed(seed)
    out = model(crystal)
    cell = crystal.cell.reshape(3, 3)
    moved = crystal.pos.clone()
    moved[1] += cell[0] - 2 * cell[2]
    _compare(model(with_positions(crystal, moved)), out.scalars, out.vectors,
             "moving one atom by a lattice vector (periodic images)", atol)
    rot = random_orthogonal(gen, True, dtype)
    rotated = with_positions(crystal, crystal.pos @ rot.T)
    rotated.cell = crystal.cell @ rot.T
    expected_v = None if out.vectors is None else torch.einsum("ij,njf->nif", rot, out.vectors)
    _compare(model(rotated), out.scalars, expected_v, "rotating the crystal (positions and cell)", atol)
    supercell = Batch.from_data_list([Data(z=crystal.z.repeat(2), pos=torch.cat([crystal.pos, crystal.pos + cell[0]]),
                                           cell=torch.stack([2 * cell[0], cell[1], cell[2]]).unsqueeze(0),
                                           pbc=crystal.pbc)])
    _compare(model(supercell), out.scalars.repeat(2, 1), None if out.vectors is None else out.vectors.repeat(2, 1, 1),
             "2x1x1 supercell vs unit cell", atol)
    molecule = crystal.__copy__()
    molecule.pbc = torch.zeros_like(crystal.pbc)
    assert _differs(model(molecule).scalars, out.scalars, 1e3 * atol), (
        "the crystal gives the same features as the molecule of its atoms: are the periodic images "
        "(self.graph(data)) used?")
    check_forces(model, crystal)
    return "ok"


def check_conditioning(model: Backbone, batch: Batch, seed: int = 15) -> str:
    """See the module docstring. Returns ``"ok"`` or ``"no condition (condition_dim=0)"``."""
    g = batch.num_graphs
    dtype, atol = batch.pos.dtype, _tol(batch.pos.dtype)
    if not model.supports_condition:
        try:
            model(batch, torch.zeros(g, 2, dtype=dtype))
        except ValueError:
            return "no condition (condition_dim=0)"
        raise AssertionError("condition_dim == 0 but a condition was accepted: call self.check_condition in forward")
    assert isinstance(model.conditioning, LayerConditioning), (
        "condition_dim > 0 but backbone.conditioning is not a LayerConditioning: hold "
        "self.conditioning = atomzoo.nn.conditioning.condition_modules(num_layers, width, condition_dim) "
        "(SelfConditionedDenoising needs its mask token)")
    try:
        model(batch, torch.zeros(g, model.condition_dim + 1, dtype=dtype))
    except ValueError:
        pass
    else:
        raise AssertionError("a condition of the wrong shape was accepted: call self.check_condition in forward")
    unconditioned = model(batch)
    token = model.conditioning.mask_token.detach().to(dtype).expand(g, -1)
    _compare(model(batch, token.clone()), unconditioned.scalars, unconditioned.vectors,
             "condition=None vs the mask token for every molecule", atol)
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(g, model.condition_dim, generator=gen, dtype=dtype)
    out = model(batch, c)
    assert _differs(out.scalars, unconditioned.scalars, 1e3 * atol), "the condition does not change the output"
    c2 = c.clone()
    c2[0, 0] += 1.0  # one component: the condition's layer norm removes a shift of the whole row
    changed = (model(batch, c2).scalars - out.scalars).abs().amax(dim=1) > atol
    assert not bool(changed[batch.batch != 0].any()), "changing molecule 0's condition changed other molecules' atoms"
    assert bool(changed[batch.batch == 0].any()), "changing molecule 0's condition changed none of its atoms"
    check_symmetries(model, batch, c, what="conditioned ")
    check_forces(model, condition=c[:1], dtype=dtype)
    return "ok"


def check_masking(model: Backbone, batch: Batch, seed: int = 8) -> str:
    """See the module docstring. Returns ``"ok"`` or ``"skipped (supports_mask = False)"``."""
    if not model.supports_mask:
        return "skipped (supports_mask = False)"
    atol = _tol(batch.pos.dtype)
    plain = model(batch)
    none_masked = model(_masked(batch, torch.zeros(batch.num_nodes, dtype=torch.bool)))
    _compare(none_masked, plain.scalars, plain.vectors, "all-False atom_mask vs no atom_mask", atol)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch.num_nodes, generator=gen) < 0.4
    mask[0] = True
    masked_view = _masked(batch, mask)
    masked = model(masked_view)
    assert (masked.scalars[mask] - plain.scalars[mask]).abs().max() > atol, "atom_mask did not change the masked atoms"
    # the true element of a masked atom must be invisible: change it, nothing may move
    elements = torch.unique(batch.z)
    other = batch.__copy__()
    other.z = torch.where(mask, elements[(torch.searchsorted(elements, batch.z) + 1) % elements.numel()], batch.z)
    setattr(other, ATOM_MASK, mask)
    if elements.numel() > 1:
        _compare(model(other), masked.scalars, masked.vectors, "changing a masked atom's element (it leaks)", atol)
    check_symmetries(model, masked_view, what="masked ")
    return "ok"


def check_drop_path(model: Backbone, batch: Batch, seed: int = 9) -> str:
    """See the module docstring. Returns ``"ok"`` or ``"none (no DropPath)"``; the backbone's rates
    and training mode are restored, and the global random state is left as it was."""
    if not model.supports_drop_path:
        return "none (no DropPath: objectives refuse a drop_path rate > 0)"
    atol = _tol(batch.pos.dtype)
    modules = drop_path_modules(model)
    rates, was_training = [m.p for m in modules], model.training
    try:
        model.eval()
        reference = model(batch)
        model.set_drop_path(0.0)
        model.train()
        _compare(model(batch), reference.scalars, reference.vectors, "drop-path rate 0 in training vs evaluation", atol)
        model.set_drop_path(0.5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dropped = model(batch)
        assert _differs(dropped.scalars, reference.scalars, 1e3 * atol), "drop-path rate 0.5 changed no training output"
        model.eval()
        _compare(model(batch), reference.scalars, reference.vectors, "drop-path rate 0.5 in evaluation", atol)
    finally:
        for m, p in zip(modules, rates):
            m.p = p
        model.train(was_training)
    return "ok"


def check_element_embedding(model: Backbone, batch: Batch) -> str:
    """``element_embedding_parameters()`` are parameters of the backbone, and perturbing them changes
    its output. Returns ``"ok"`` or ``"none (...)"`` when the list is empty."""
    params = model.element_embedding_parameters()
    own = {id(p) for p in model.parameters()}
    assert all(isinstance(p, nn.Parameter) and id(p) in own for p in params), (
        "element_embedding_parameters() must return parameters of the backbone itself")
    if not params:
        return "none (SCD's freeze_element_embedding freezes nothing: override element_embedding_parameters)"
    reference = model(batch).scalars
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(10)
    try:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
            changed = _differs(model(batch).scalars, reference, 1e3 * _tol(batch.pos.dtype))
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
    assert changed, "the element_embedding_parameters() do not influence the output"
    return "ok"


def check_weight_decay(model: Backbone) -> str:
    """``weight_decay_parameters()`` is ``None`` (the generic rule) or parameters of the backbone."""
    chosen = model.weight_decay_parameters()
    if chosen is None:
        return "generic rule"
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in chosen), "weight_decay_parameters() must return parameters of the backbone itself"
    return "ok"


def check_renamed_arguments(backbone_class: type) -> str:
    """Each old name of ``renamed_arguments`` is refused on construction with a ``TypeError`` naming
    the new one (names the class's ``__init__`` still takes are skipped). Returns ``"ok"`` or ``"none"``."""
    renamed = backbone_class.renamed_arguments
    accepted = inspect.signature(backbone_class.__init__).parameters
    for old, new in renamed.items():
        if old in accepted:
            continue
        try:
            backbone_class(**{old: None})
        except TypeError as err:
            assert new in str(err) and "\n" not in str(err), f"passing {old!r}: {err} (must name {new!r} in one line)"
        else:  # pragma: no cover - construction would have failed on the missing arguments anyway
            raise AssertionError(f"the renamed argument {old!r} was accepted")
    return "ok" if renamed else "none"


def check_backbone(factory: Callable[[], Backbone], *, elements: Sequence[int] = DEFAULT_ELEMENTS,
                   dtype: torch.dtype = torch.float64, seed: int = 0) -> dict[str, str]:
    """Run every contract check on ``factory()`` (built under ``torch.manual_seed(seed)``).

    Args:
        factory: builds the backbone (small sizes keep this fast; seconds for the built-ins).
        elements: atomic numbers of the random test structures (must be ones the backbone accepts).
        dtype: ``torch.float64`` (default, tight tolerances) or ``torch.float32``.
        seed: weight and data seed.

    Returns ``{check: "ok" | what was skipped or found}``, one entry per row of the capability table
    in ``docs/backbones.md``. Raises ``AssertionError`` naming the first failed check and the deviation.
    """
    torch.manual_seed(seed)
    model = factory().to(dtype).eval()
    batch = random_batch(model.cutoff, seed, elements, dtype)
    report: dict[str, str] = {}
    for name, check in (
        ("shapes", lambda: check_shapes(model, batch)),
        ("symmetries", lambda: check_symmetries(model, batch)),
        ("locality", lambda: check_locality(model, batch)),
        ("max_num_neighbors", lambda: check_max_num_neighbors(model, batch)),
        ("forces", lambda: check_forces(model, elements=elements, dtype=dtype)),
        ("periodic", lambda: check_periodic(model, elements=elements, dtype=dtype)),
        ("conditioning", lambda: check_conditioning(model, batch)),
        ("masking", lambda: check_masking(model, batch)),
        ("drop_path", lambda: check_drop_path(model, batch)),
        ("element_embedding", lambda: check_element_embedding(model, batch)),
        ("weight_decay", lambda: check_weight_decay(model)),
        ("renamed_arguments", lambda: check_renamed_arguments(type(model))),
    ):
        try:
            result = check()
        except AssertionError as err:
            raise AssertionError(f"{type(model).__name__} fails the backbone contract check '{name}': {err}") from err
        report[name] = result if isinstance(result, str) else "ok"
    return report
