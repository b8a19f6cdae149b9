"""Contract checks for backbones: run them on your own backbone before training it.

Three lines::

    from atomzoo.testing import check_backbone
    from mypkg import MyNet
    check_backbone(lambda: MyNet(width=16))          # raises AssertionError naming the failed check

The zoo's own tests run the same checks on SchNet, PaiNN, MACE and ``examples/custom_backbone.py``.
What is checked (the contract of ``docs/backbones.md``), on small random molecules of H, C, N, O, F
(override ``elements``) that include a single-atom molecule and an atom with no neighbour inside the
cutoff:

* ``shapes``: ``scalars`` ``[N, width]``, ``vectors`` ``[N, 3, vector_width]`` or ``None`` (if
  ``vector_width == 0``), all finite;
* ``rotation`` / ``reflection``: scalars invariant, vectors rotate as ``v -> R v`` (proper and
  improper orthogonal ``R``);
* ``translation``: everything invariant;
* ``permutation``: shuffling atoms within molecules permutes the outputs;
* ``forces``: ``-d(sum_i s_i . w)/d pos`` by autograd equals central finite differences, and sums
  to zero over an isolated molecule;
* ``conditioning``: with ``condition_dim > 0``: ``condition=None`` works, a wrong shape raises
  ``ValueError``, changing one molecule's condition changes no other molecule's atoms, and
  conditioned outputs keep the symmetries. With ``condition_dim == 0`` a condition must raise
  ``ValueError``;
* ``masking`` (only when ``supports_mask``): an all-False ``atom_mask`` is the unmasked network;
  masking changes the masked atoms' features; the true element of a masked atom cannot be read from
  any output; symmetries hold with a mask. Without ``supports_mask`` the check reports "skipped"
  (masking objectives will then refuse the backbone with an error saying what to add).

Run in float64 (the default: ``factory()`` is converted with ``.double()``; build MACE with
``dtype="float64"``) so that tolerances can be tight; ``dtype=torch.float32`` loosens them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from atomzoo.backbones.base import ATOM_MASK, Backbone, BackboneOutput
from atomzoo.nn.batch import with_positions

__all__ = [
    "check_backbone",
    "check_conditioning",
    "check_forces",
    "check_masking",
    "check_shapes",
    "check_symmetries",
    "random_batch",
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


def _masked(data, mask: Tensor):
    view = data.__copy__()
    setattr(view, ATOM_MASK, mask)
    return view


# ----------------------------------------------------------------------------------------- checks
def check_shapes(model: Backbone, batch: Batch) -> BackboneOutput:
    """Declared sizes vs returned shapes, finiteness. Returns the output."""
    assert isinstance(model, Backbone), f"{type(model).__name__} must subclass atomzoo.backbones.Backbone"
    out = model(batch)
    assert isinstance(out, BackboneOutput), f"forward must return a BackboneOutput, got {type(out).__name__}"
    n = batch.num_nodes
    assert out.scalars.shape == (n, model.width), f"scalars: expected {(n, model.width)}, got {tuple(out.scalars.shape)}"
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
    perm = torch.argsort(batch.batch.to(torch.float64) + 0.5 * torch.rand(batch.num_nodes, generator=gen, dtype=torch.float64))
    permuted = batch.__copy__()
    permuted.z, permuted.pos = batch.z[perm], batch.pos[perm]
    mask = getattr(batch, ATOM_MASK, None)
    if mask is not None:
        setattr(permuted, ATOM_MASK, mask[perm])
    _compare(model(permuted, condition), out.scalars[perm], None if out.vectors is None else out.vectors[perm],
             f"{what}permutation", atol)


def check_forces(model: Backbone, batch_size_atoms: int = 4, seed: int = 4,
                 elements: Sequence[int] = DEFAULT_ELEMENTS, dtype: torch.dtype = torch.float64) -> None:
    """Autograd forces of a random linear readout of the scalars vs central finite differences (h = 1e-5 A)."""
    gen = torch.Generator().manual_seed(seed)
    data = Batch.from_data_list([random_molecule(batch_size_atoms, gen, elements, dtype=dtype)])
    readout = torch.randn(model.width, generator=gen, dtype=dtype)

    def energy(pos: Tensor) -> Tensor:
        return (model(with_positions(data, pos)).scalars @ readout).sum()

    pos = data.pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(pos), pos)
    forces = -grad
    h = 1e-5 if dtype == torch.float64 else 1e-2
    fd = torch.zeros_like(forces)
    with torch.no_grad():
        for i in range(pos.size(0)):
            for k in range(3):
                plus, minus = data.pos.clone(), data.pos.clone()
                plus[i, k] += h
                minus[i, k] -= h
                fd[i, k] = -(energy(plus) - energy(minus)) / (2 * h)
    assert forces.abs().max() > 1e-6, "forces are zero: do the scalars depend on positions?"
    atol = 1e-6 if dtype == torch.float64 else 5e-2
    _close(forces, fd, "forces vs finite differences", atol)
    _close(forces.sum(0), torch.zeros(3, dtype=dtype), "net force on an isolated molecule", atol)


def check_conditioning(model: Backbone, batch: Batch, seed: int = 15) -> str:
    """See the module docstring. Returns ``"ok"`` or ``"no condition (condition_dim=0)"``."""
    g = batch.num_graphs
    if not model.supports_condition:
        try:
            model(batch, torch.zeros(g, 2, dtype=batch.pos.dtype))
        except ValueError:
            return "no condition (condition_dim=0)"
        raise AssertionError("condition_dim == 0 but a condition was accepted: call self.check_condition in forward")
    try:
        model(batch, torch.zeros(g, model.condition_dim + 1, dtype=batch.pos.dtype))
    except ValueError:
        pass
    else:
        raise AssertionError("a condition of the wrong shape was accepted: call self.check_condition in forward")
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(g, model.condition_dim, generator=gen, dtype=batch.pos.dtype)
    out = model(batch, c)
    c2 = c.clone()
    c2[0] += 1.0
    changed = (model(batch, c2).scalars - out.scalars).abs().amax(dim=1) > _tol(batch.pos.dtype)
    assert not bool(changed[batch.batch != 0].any()), "changing molecule 0's condition changed other molecules' atoms"
    check_symmetries(model, batch, c, what="conditioned ")
    return "ok"


def check_masking(model: Backbone, batch: Batch, seed: int = 8) -> str:
    """See the module docstring. Returns ``"ok"`` or ``"skipped (supports_mask = False)"``."""
    if not getattr(model, "supports_mask", False):
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


def check_backbone(factory: Callable[[], Backbone], *, elements: Sequence[int] = DEFAULT_ELEMENTS,
                   dtype: torch.dtype = torch.float64, seed: int = 0) -> dict[str, str]:
    """Run every contract check on ``factory()`` (built under ``torch.manual_seed(seed)``).

    Args:
        factory: builds the backbone (small sizes keep this fast; a few seconds for the built-ins).
        elements: atomic numbers of the random test molecules (must be ones the backbone accepts).
        dtype: ``torch.float64`` (default, tight tolerances) or ``torch.float32``.
        seed: weight and data seed.

    Returns ``{check: "ok" | reason skipped}``. Raises ``AssertionError`` naming the first failed
    check and the deviation.
    """
    torch.manual_seed(seed)
    model = factory().to(dtype).eval()
    batch = random_batch(model.cutoff, seed, elements, dtype)
    report: dict[str, str] = {}
    for name, check in (
        ("shapes", lambda: check_shapes(model, batch)),
        ("symmetries", lambda: check_symmetries(model, batch)),
        ("forces", lambda: check_forces(model, elements=elements, dtype=dtype)),
        ("conditioning", lambda: check_conditioning(model, batch)),
        ("masking", lambda: check_masking(model, batch)),
    ):
        try:
            result = check()
        except AssertionError as err:
            raise AssertionError(f"{type(model).__name__} fails the backbone contract check '{name}': {err}") from err
        report[name] = result if isinstance(result, str) else "ok"
    return report
