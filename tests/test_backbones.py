"""Contract tests for every backbone: symmetries, forces, conditioning, edge cases, peers.

Everything runs in float64 on tiny networks so that tolerances can be tight (1e-9 and below).
Backbones: SchNet, PaiNN, MACE (mace-torch blocks) and a minimal user-defined ``Backbone``
subclass (``TinyNet`` below) -- the contract has to work for code outside this repository too.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from atomzoo.backbones import MACE, Backbone, BackboneOutput, PaiNN, SchNet, contract
from atomzoo.nn.batch import num_graphs, with_positions
from atomzoo.nn.conditioning import condition_modules
from atomzoo.nn.graph import build_graph
from atomzoo.nn.radial import GaussianRBF, cosine_cutoff

REPO = Path(__file__).resolve().parents[1]
ELEMENTS = torch.tensor([1, 6, 7, 8, 9])
CUTOFF = 4.0
COND = 3  # condition_dim used by the conditioning tests


class TinyNet(Backbone):
    """A minimal user backbone: one continuous-filter message, vectors from unit edge vectors."""

    def __init__(self, width: int = 8, cutoff: float = CUTOFF, condition_dim: int = 0) -> None:
        super().__init__(width=width, cutoff=cutoff, vector_width=width, condition_dim=condition_dim)
        self.embedding = nn.Embedding(10, width)
        self.rbf = GaussianRBF(8, 0.0, cutoff)
        self.filter = nn.Linear(8, width)
        self.update = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.conditioning = condition_modules(1, width, condition_dim)

    def forward(self, data, condition=None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        g = self.graph(data)
        x = self.embedding(data.z)
        w = self.filter(self.rbf(g.length)) * cosine_cutoff(g.length, self.cutoff).unsqueeze(-1)
        n = x.size(0)
        gate = 1.0
        if self.conditioning is not None:  # adaLN on the layer's input, gate on its scalar update
            x_in, gate = self.conditioning[0](x, self.conditioning.prepare(condition, num_graphs(data)), data.batch)
        else:
            x_in = x
        u = gate * self.update(scatter(x_in[g.src] * w, g.dst, dim=0, dim_size=n, reduce="sum"))
        v = scatter(g.unit.unsqueeze(-1) * w.unsqueeze(1), g.dst, dim=0, dim_size=n, reduce="sum")
        return BackboneOutput(scalars=x + u, vectors=v, graph=g)


def make_schnet(condition_dim=0):
    return SchNet(width=16, num_filters=12, num_interactions=2, num_rbf=12, cutoff=CUTOFF, condition_dim=condition_dim)


def make_painn(condition_dim=0):
    return PaiNN(width=12, num_interactions=2, num_rbf=8, cutoff=CUTOFF, condition_dim=condition_dim)


MACE_KW = {
    "cutoff": CUTOFF,
    "num_bessel": 6,
    "num_polynomial_cutoff": 5,
    "max_ell": 2,
    "correlation": 2,
    "num_interactions": 2,
    "hidden_irreps": "6x0e+6x1o",
    "radial_MLP": [12],
    "avg_num_neighbors": 3.0,
    "dtype": "float64",  # e3nn/mace build their CG constants in this dtype (see MACE's docstring)
}


def make_mace(condition_dim=0):
    return MACE(**MACE_KW, condition_dim=condition_dim)


def make_tiny(condition_dim=0):
    return TinyNet(condition_dim=condition_dim)


FACTORIES = {"schnet": make_schnet, "painn": make_painn, "mace": make_mace, "custom": make_tiny}


def build(name: str, condition_dim: int = 0, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return FACTORIES[name](condition_dim).double().eval()


# ---------------------------------------------------------------------------------------- data
def random_molecule(n: int, gen: torch.Generator, min_dist: float = 1.0) -> Data:
    """``n`` atoms of random elements in {H, C, N, O, F}, pairwise at least ``min_dist`` A apart."""
    side = 1.6 * max(n, 2) ** (1 / 3)
    pos = torch.empty(0, 3, dtype=torch.float64)
    while pos.size(0) < n:
        p = (torch.rand(1, 3, generator=gen, dtype=torch.float64) - 0.5) * side
        if pos.size(0) == 0 or torch.cdist(p, pos).min() >= min_dist:
            pos = torch.cat([pos, p])
    z = ELEMENTS[torch.randint(0, len(ELEMENTS), (n,), generator=gen)]
    return Data(z=z, pos=pos)


def with_isolated_atom(mol: Data, z: int = 8) -> Data:
    """Append an atom 3 cutoffs away from everything else."""
    far = mol.pos.mean(0, keepdim=True) + torch.tensor([[3 * CUTOFF, 0.0, 0.0]], dtype=torch.float64)
    return Data(z=torch.cat([mol.z, torch.tensor([z])]), pos=torch.cat([mol.pos, far]))


def make_batch(seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    mols = [random_molecule(n, gen) for n in (5, 7, 4)]
    mols.append(Data(z=torch.tensor([6]), pos=torch.zeros(1, 3, dtype=torch.float64)))  # single atom
    mols.append(with_isolated_atom(random_molecule(4, gen)))
    return Batch.from_data_list(mols)


def random_orthogonal(gen: torch.Generator, proper: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q


HAS_MACE = importlib.util.find_spec("mace") is not None and importlib.util.find_spec("e3nn") is not None
needs_mace = pytest.mark.skipif(not HAS_MACE, reason="mace-torch not installed (pip install atomzoo[mace])")
NAMES = [pytest.param(name, marks=needs_mace) if name == "mace" else name for name in FACTORIES]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The networks here are tiny: extra intra-op threads only cost time on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _Nets(dict):
    """Backbones built on first use (a missing mace-torch then only skips the MACE cases)."""

    def __missing__(self, name):
        self[name] = build(name)
        return self[name]


@pytest.fixture(scope="module")
def nets():
    return _Nets()


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def run(model, data, condition=None):
    return model(data, condition)


# ---------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_declared_sizes(nets, batch, name):
    model = nets[name]
    out = run(model, batch)
    n = batch.num_nodes
    assert out.scalars.shape == (n, model.width)
    if model.vector_width:
        assert out.vectors.shape == (n, 3, model.vector_width)
    else:
        assert out.vectors is None and name == "schnet"
    assert torch.isfinite(out.scalars).all()
    assert out.graph.edge_index.shape[0] == 2 and out.graph.edge_index.numel() > 0


@pytest.mark.parametrize("name", NAMES)
def test_runs_under_bf16_autocast(nets, batch, name):
    """``--trainer.precision bf16-mixed`` runs every backbone (autocast; CPU here, the same kernels' dtype
    rules as on a GPU): SchNet sums its messages in their own dtype, MACE runs in its parameters' dtype.
    The features stay close to float32's (bf16 keeps ~3 significant digits)."""
    model = nets[name].eval()
    with torch.no_grad():
        reference = run(model, batch).scalars
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = run(model, batch).scalars
    assert torch.isfinite(mixed).all()
    error = (mixed.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.05, f"{name}: bf16 autocast differs from float32 by {error:.3f} of the largest feature"


def test_declared_sizes_of_builtins():
    assert (SchNet().width, SchNet().vector_width, SchNet().cutoff) == (128, 0, 10.0)
    painn = PaiNN()
    assert (painn.width, painn.vector_width, painn.cutoff, len(painn.interactions)) == (128, 128, 5.0, 3)
    assert painn.rbf.frequencies.numel() == 20
    assert painn.element_embedding_parameters() == list(painn.embedding.parameters())


@needs_mace
def test_mace_declared_sizes_and_dtype():
    mace = make_mace()
    assert torch.get_default_dtype() == torch.float32  # building in float64 did not leak
    assert all(p.dtype == torch.float64 for p in mace.parameters())
    assert mace.width == 2 * 6 and mace.vector_width == 6 and mace.cutoff == CUTOFF
    assert mace.element_embedding_parameters() == list(mace.node_embedding.parameters())


# ---------------------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "rotoreflection"])
def test_rotation_invariance_and_equivariance(nets, batch, name, proper):
    model = nets[name]
    gen = torch.Generator().manual_seed(1 if proper else 2)
    rot = random_orthogonal(gen, proper)
    out = run(model, batch)
    out_r = run(model, with_positions(batch, batch.pos @ rot.T))
    torch.testing.assert_close(out_r.scalars, out.scalars, rtol=0, atol=1e-10)
    if out.vectors is not None:
        expected = torch.einsum("ij,njf->nif", rot, out.vectors)
        torch.testing.assert_close(out_r.vectors, expected, rtol=0, atol=1e-10)
        assert out.vectors.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("name", NAMES)
def test_translation_invariance(nets, batch, name):
    model = nets[name]
    shift = torch.tensor([3.0, -1.5, 7.25], dtype=torch.float64)
    out = run(model, batch)
    out_t = run(model, with_positions(batch, batch.pos + shift))
    torch.testing.assert_close(out_t.scalars, out.scalars, rtol=0, atol=1e-10)
    if out.vectors is not None:
        torch.testing.assert_close(out_t.vectors, out.vectors, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance(nets, batch, name):
    model = nets[name]
    gen = torch.Generator().manual_seed(3)
    # shuffle atoms within each molecule (the batch vector stays sorted)
    perm = torch.argsort(batch.batch.double() + 0.5 * torch.rand(batch.num_nodes, generator=gen, dtype=torch.float64))
    assert not torch.equal(perm, torch.arange(batch.num_nodes))
    permuted = batch.__copy__()
    permuted.z, permuted.pos = batch.z[perm], batch.pos[perm]
    out = run(model, batch)
    out_p = run(model, permuted)
    torch.testing.assert_close(out_p.scalars, out.scalars[perm], rtol=0, atol=1e-10)
    if out.vectors is not None:
        torch.testing.assert_close(out_p.vectors, out.vectors[perm], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------- forces
@pytest.mark.parametrize("name", NAMES)
def test_forces_match_finite_differences(nets, name):
    """The contract's finite-difference check (one random 4-atom molecule, a random readout of the
    scalars) at tight float64 tolerances: |F - F_fd| <= 1e-8 + 1e-6 |F_fd|."""
    forces = contract.check_forces(nets[name], seed=4, atol=1e-8, rtol=1e-6)
    assert forces.abs().max() > 1e-4
    # Newton's third law: an isolated molecule feels no net force
    torch.testing.assert_close(forces.sum(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("name", NAMES)
def test_isolated_and_single_atoms(nets, name):
    model = nets[name]
    lone = Batch.from_data_list([Data(z=torch.tensor([8]), pos=torch.zeros(1, 3, dtype=torch.float64))])
    gen = torch.Generator().manual_seed(5)
    mixed = Batch.from_data_list([with_isolated_atom(random_molecule(3, gen), z=8), lone[0]])
    for data in (lone, mixed):
        pos = data.pos.clone().requires_grad_(True)
        out = run(model, with_positions(data, pos))
        assert torch.isfinite(out.scalars).all()
        (out.scalars.sum() + (0.0 if out.vectors is None else out.vectors.square().sum())).backward()
        assert torch.isfinite(pos.grad).all()
    # a lone oxygen and an oxygen with no neighbour inside the cutoff see exactly the same
    out_lone = run(model, lone)
    out_mixed = run(model, mixed)
    isolated = 3  # index of the appended far atom
    torch.testing.assert_close(out_mixed.scalars[isolated], out_lone.scalars[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out_mixed.scalars[4], out_lone.scalars[0], rtol=0, atol=1e-12)
    if out_lone.vectors is not None:
        assert torch.count_nonzero(out_lone.vectors) == 0  # no direction to point to
        assert torch.count_nonzero(out_mixed.vectors[isolated]) == 0
    # forces on a lone atom are exactly zero
    pos = lone.pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(run(model, with_positions(lone, pos)).scalars.sum(), pos, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0


@needs_mace
def test_mace_rejects_unknown_elements(nets):
    data = Batch.from_data_list(
        [Data(z=torch.tensor([6, 17]), pos=torch.tensor([[0.0, 0, 0], [1.5, 0, 0]], dtype=torch.float64))]
    )
    with pytest.raises(ValueError, match="17"):
        nets["mace"](data)


def test_condition_rejected_without_condition_dim(nets, batch):
    with pytest.raises(ValueError):
        nets["painn"](batch, torch.zeros(batch.num_graphs, 2, dtype=torch.float64))


# ---------------------------------------------------------------------------------------- conditioning
@pytest.mark.parametrize("name", NAMES)
def test_condition_none_is_the_mask_token_path(batch, name):
    """No condition = the learned mask token through the same norm and adaLN (one network, as in the
    SCD reference); condition_dim 0 = the plain network without any condition parameters."""
    model = build(name, condition_dim=COND, seed=11)
    plain = build(name, condition_dim=0, seed=12)
    assert not any(k.startswith("conditioning") for k in plain.state_dict())
    assert {"conditioning.input.mask_token", "conditioning.input.norm.weight"} <= set(model.state_dict())
    token = model.conditioning.mask_token.detach().expand(batch.num_graphs, -1)
    a, b = run(model, batch, None), run(model, batch, token.clone())
    assert torch.equal(a.scalars, b.scalars)
    if a.vectors is not None:
        assert torch.equal(a.vectors, b.vectors)
    drop = torch.zeros(batch.num_graphs, dtype=torch.bool)
    drop[0] = True
    c = torch.randn(batch.num_graphs, COND, dtype=torch.float64)
    mixed = model.conditioning.drop(c, drop)
    assert torch.equal(mixed[0], model.conditioning.mask_token.detach()) and torch.equal(mixed[1:], c[1:])


@pytest.mark.parametrize("name", NAMES)
def test_condition_acts_from_initialisation_and_keeps_symmetry(batch, name):
    """Not inert at init (the reference initialises the adaLN output layer with Xavier, not zeros):
    the output depends on the condition, per molecule, and the condition gets a gradient."""
    model = build(name, condition_dim=COND, seed=14)
    gen = torch.Generator().manual_seed(15)
    c = torch.randn(batch.num_graphs, COND, generator=gen, dtype=torch.float64, requires_grad=True)
    base = run(model, batch, None)
    out = run(model, batch, c)
    assert (out.scalars - base.scalars).abs().max() > 1e-3
    (grad,) = torch.autograd.grad(out.scalars.square().sum(), c)
    # every molecule with at least one edge (an isolated atom has no messages to modulate in SchNet,
    # whose zero-bias interaction then returns exactly zero)
    bonded = torch.unique(batch.batch[model.graph(batch).dst])
    assert (grad.abs().sum(dim=1)[bonded] > 1e-8).all() and bonded.numel() >= batch.num_graphs - 1
    c = c.detach()
    out = run(model, batch, c)
    c2 = c.clone()
    c2[0, 0] += 1.0  # only molecule 0's condition changes (one component: the norm removes a uniform shift)
    out2 = run(model, batch, c2)
    changed = (out2.scalars - out.scalars).abs().amax(dim=1) > 1e-9
    assert torch.equal(changed, batch.batch == 0)
    rot = random_orthogonal(gen, proper=True)
    out_r = run(model, with_positions(batch, batch.pos @ rot.T), c)
    torch.testing.assert_close(out_r.scalars, out.scalars, rtol=0, atol=1e-10)
    if out.vectors is not None:
        torch.testing.assert_close(out_r.vectors, torch.einsum("ij,njf->nif", rot, out.vectors), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["schnet", "painn"])
def test_gate_multiplies_the_layer_update(batch, name):
    """Gate forced to 0 in every layer (alpha = 0): the scalar features stay the element embedding."""
    model = build(name, condition_dim=COND, seed=16)
    with torch.no_grad():
        for layer in model.conditioning.layers:
            layer.alpha.zero_()
    out = run(model, batch, torch.randn(batch.num_graphs, COND, dtype=torch.float64))
    torch.testing.assert_close(out.scalars, model.embedding(batch.z), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- peers
def test_schnet_matches_pyg_schnet(batch):
    from torch_geometric.nn.models import SchNet as PygSchNet

    ours = build("schnet", seed=21)
    graph = build_graph(batch.pos, batch.batch, CUTOFF)
    pyg = PygSchNet(
        hidden_channels=16,
        num_filters=12,
        num_interactions=2,
        num_gaussians=12,
        cutoff=CUTOFF,
        interaction_graph=lambda pos, b: (graph.edge_index, graph.length),
    ).double()
    with torch.no_grad():
        pyg.embedding.weight.copy_(ours.embedding.weight[: pyg.embedding.num_embeddings])
        for mine, theirs in zip(ours.interactions, pyg.interactions):
            theirs.mlp[0].load_state_dict(mine.conv.filter_net[0].state_dict())
            theirs.mlp[2].load_state_dict(mine.conv.filter_net[2].state_dict())
            theirs.conv.lin1.load_state_dict(mine.conv.in_proj.state_dict())
            theirs.conv.lin2.load_state_dict(mine.conv.out_proj.state_dict())
            theirs.lin.load_state_dict(mine.out.state_dict())
    # PyG's ShiftedSoftplus stores log(2) computed in float32 (torch.log(torch.tensor(2.0)).item());
    # give it the float64 value so that the comparison can be tight
    patched = 0
    for module in pyg.modules():
        if type(module).__name__ == "ShiftedSoftplus":
            assert abs(module.shift - math.log(2.0)) < 1e-7
            module.shift = math.log(2.0)
            patched += 1
    assert patched == 2 * 2 + 1  # filter MLP + block activation per interaction, readout activation
    seen = {}
    hook = pyg.lin1.register_forward_pre_hook(lambda mod, args: seen.setdefault("h", args[0]))
    energy_pyg = pyg(batch.z, batch.pos, batch.batch)
    hook.remove()
    feats = run(ours, batch).scalars
    torch.testing.assert_close(feats, seen["h"], rtol=0, atol=1e-12)
    assert torch.isclose(pyg.embedding.weight, ours.embedding.weight[:100]).all()
    readout = pyg.lin2(pyg.act(pyg.lin1(feats)))
    energy_ours = scatter(readout, batch.batch, dim=0, reduce="sum")
    torch.testing.assert_close(energy_ours, energy_pyg, rtol=0, atol=1e-12)


def _scaleshift_mace(modules, o3):
    """mace-torch's ScaleShiftMACE with MACE_KW's hyperparameters, keeping 1o in the last layer."""
    import numpy as np

    return modules.ScaleShiftMACE(
        r_max=CUTOFF,
        num_bessel=MACE_KW["num_bessel"],
        num_polynomial_cutoff=MACE_KW["num_polynomial_cutoff"],
        max_ell=MACE_KW["max_ell"],
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2,
        num_elements=5,
        hidden_irreps=o3.Irreps(MACE_KW["hidden_irreps"]),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(5),
        avg_num_neighbors=MACE_KW["avg_num_neighbors"],
        atomic_numbers=[1, 6, 7, 8, 9],
        correlation=MACE_KW["correlation"],
        gate=torch.nn.functional.silu,
        radial_MLP=MACE_KW["radial_MLP"],
        keep_last_layer_irreps=True,
        use_reduced_cg=False,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )


@needs_mace
@pytest.mark.filterwarnings("ignore:The TorchScript type system")
def test_mace_matches_mace_torch_scaleshiftmace(batch):
    """Same weights -> our wrapper's features equal ScaleShiftMACE's ``node_feats``."""
    from atomzoo.backbones.mace import import_mace

    modules, o3 = import_mace()
    ours = build("mace", seed=31)
    torch.manual_seed(32)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = _scaleshift_mace(modules, o3)
    finally:
        torch.set_default_dtype(previous)
    ref_state = ref.state_dict()
    # every tensor but our mask embedding (mace has none) comes from mace-torch; strict still holds
    ours.load_state_dict({k: ref_state[k] for k in ours.state_dict() if k != "mask_embedding"}, strict=True)
    graph = build_graph(batch.pos, batch.batch, CUTOFF)
    n_edges = graph.edge_index.size(1)
    data = {
        "positions": batch.pos.clone(),
        "node_attrs": ours.node_attrs(batch.z, torch.float64),
        "edge_index": graph.edge_index,
        "shifts": torch.zeros(n_edges, 3, dtype=torch.float64),
        "unit_shifts": torch.zeros(n_edges, 3, dtype=torch.float64),
        "cell": torch.zeros(3 * batch.num_graphs, 3, dtype=torch.float64),
        "batch": batch.batch,
        "ptr": batch.ptr,
    }
    node_feats = ref(data, training=False, compute_force=False)["node_feats"].detach()
    out = run(ours, batch)
    dim = o3.Irreps(MACE_KW["hidden_irreps"]).dim  # 6 + 18 per layer
    layers = node_feats.split(dim, dim=-1)
    expected_scalars = torch.cat([layer[:, :6] for layer in layers], dim=-1)
    assert expected_scalars.abs().max() > 1e-3 and out.vectors.abs().max() > 1e-3
    torch.testing.assert_close(out.scalars, expected_scalars, rtol=0, atol=1e-12)
    expected_vectors = layers[-1][:, 6:].reshape(-1, 6, 3).transpose(1, 2)
    torch.testing.assert_close(out.vectors, expected_vectors, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- laziness
_ENV_SCRIPT = textwrap.dedent(
    """
    import os, sys
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    import atomzoo.backbones
    assert "mace" not in sys.modules and "e3nn" not in sys.modules, "importing backbones imported mace/e3nn"
    net = atomzoo.backbones.MACE(hidden_irreps="4x0e+4x1o", max_ell=1, correlation=1, radial_MLP=[8])
    assert "mace" in sys.modules
    assert os.environ.get(key) == before, (before, os.environ.get(key))
    print("ENV-OK", before)
    """
)


@needs_mace
def test_mace_import_is_lazy_and_restores_environment():
    procs = []
    for value in (None, "0"):
        env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
        if value is not None:
            env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = value
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = "1"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _ENV_SCRIPT],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for value, proc in zip((None, "0"), procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert f"ENV-OK {value}" in out


# ---------------------------------------------------------------------------------------- contract helper
@pytest.mark.parametrize("name", NAMES)
def test_contract_helper_passes_every_builtin(name):
    """``atomzoo.backbones.contract.check_backbone`` (what users run on their own backbone) on ours,
    conditioned: one entry per row of the capability table (docs/backbones.md)."""
    report = contract.check_backbone(lambda: FACTORIES[name](COND))
    custom = name == "custom"
    assert report == {
        "shapes": "ok", "symmetries": "ok", "locality": "ok", "max_num_neighbors": "ok", "forces": "ok",
        "periodic": "refused (periodic = False)" if custom else "ok", "conditioning": "ok",
        "masking": "skipped (supports_mask = False)" if custom else "ok",
        "drop_path": "none (no DropPath: objectives refuse a drop_path rate > 0)" if custom else "ok",
        "element_embedding": "ok", "weight_decay": "ok" if name == "mace" else "generic rule",
        "renamed_arguments": "none" if custom else "ok",
    }


def test_contract_table_rows_are_the_checks():
    """docs/backbones.md's capability table names every check of check_backbone, and nothing else."""
    text = (REPO / "docs" / "backbones.md").read_text()
    rows = text.split("<!-- capability-table -->")[1].strip().split("\n\n")[0].splitlines()
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["name", "type", "default", "what it promises", "used by", "check", "how it is checked"]
    named = set()
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == len(header), row
        named |= {name.strip().strip("`") for name in cells[5].split(",")}
    report = contract.check_backbone(lambda: make_tiny())
    assert named == set(report)


class _NotInvariant(TinyNet):
    def forward(self, data, condition=None):
        out = super().forward(data, condition)
        return BackboneOutput(out.scalars + data.pos[:, :1], out.vectors, out.graph)


class _LeaksMaskedElement(SchNet):
    def forward(self, data, condition=None):
        out = super().forward(data, condition)
        return BackboneOutput(out.scalars + 1e-3 * data.z.unsqueeze(-1).to(out.scalars.dtype), None, out.graph)


class _SeesOtherMolecules(TinyNet):
    def forward(self, data, condition=None):
        out = super().forward(data, condition)
        return BackboneOutput(out.scalars + out.scalars.mean(0), out.vectors, out.graph)


class _IgnoresTheCap(TinyNet):
    def graph(self, data):
        return build_graph(data.pos, data.batch, self.cutoff)


class _DetachedGeometry(TinyNet):
    def forward(self, data, condition=None):
        out = super().forward(data, condition)
        g = out.graph
        extra = scatter(torch.cos(g.length.detach()) * cosine_cutoff(g.length, self.cutoff).detach(), g.dst, dim=0,
                        dim_size=data.z.numel(), reduce="sum")
        return BackboneOutput(out.scalars + extra.unsqueeze(-1), out.vectors, g)


class _IgnoresImages(TinyNet):
    periodic = True  # a false declaration: the extra term computes its distances without the cell

    def forward(self, data, condition=None):
        out = super().forward(data, condition)
        own = build_graph(data.pos, data.batch, self.cutoff)
        extra = scatter(torch.exp(-own.length), own.dst, dim=0, dim_size=data.z.numel(), reduce="sum")
        return BackboneOutput(out.scalars + extra.unsqueeze(-1), out.vectors, out.graph)


class _DeadDropPath(TinyNet):
    def __init__(self, **kw):
        super().__init__(**kw)
        from atomzoo.nn.droppath import DropPath

        self.drop_path = DropPath()  # held (so objectives accept a rate) but never applied


class _NoneIsZeros(TinyNet):
    def forward(self, data, condition=None):
        if condition is None and self.conditioning is not None:  # not the mask token: breaks the contract
            condition = torch.zeros(num_graphs(data), self.condition_dim, dtype=data.pos.dtype)
        return super().forward(data, condition)


class _UnusedEmbedding(TinyNet):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.spare = nn.Embedding(10, 4)

    def element_embedding_parameters(self):
        return list(self.spare.parameters())


class _ForeignDecay(TinyNet):
    def weight_decay_parameters(self):
        return [nn.Parameter(torch.zeros(2, 2))]


@pytest.mark.parametrize("broken, match", [
    (lambda: _NotInvariant(), "symmetries.*rotation"),
    (lambda: _LeaksMaskedElement(width=8, num_filters=8, num_interactions=1, num_rbf=6, cutoff=CUTOFF),
     "masking.*element"),
    (lambda: _SeesOtherMolecules(), "locality.*molecule 0 alone"),
    (lambda: _IgnoresTheCap(), "max_num_neighbors.*without an error"),
    (lambda: _DetachedGeometry(), "forces.*finite differences"),
    (lambda: _IgnoresImages(), "periodic.*lattice vector"),
    (lambda: _DeadDropPath(), "drop_path.*changed no training output"),
    (lambda: _NoneIsZeros(condition_dim=COND), "conditioning.*mask token"),
    (lambda: _UnusedEmbedding(), "element_embedding.*influence"),
    (lambda: _ForeignDecay(), "weight_decay.*parameters of the backbone"),
], ids=["symmetry", "mask-leak", "locality", "cap", "forces", "periodic", "drop-path", "condition-none",
        "element-embedding", "weight-decay"])
def test_contract_helper_catches_broken_backbones(broken, match):
    """Each row of the capability table: a backbone that breaks it fails check_backbone there."""
    with pytest.raises(AssertionError, match=match):
        contract.check_backbone(broken)


def test_a_periodic_batch_is_refused_unless_declared():
    """periodic = False (the default, TinyNet): the check confirms the refusal; the crystal check runs
    when the class declares periodic = True."""
    assert contract.check_periodic(build("custom")) == "refused (periodic = False)"

    class PeriodicTiny(TinyNet):
        periodic = True

    torch.manual_seed(0)
    assert contract.check_periodic(PeriodicTiny().double().eval()) == "ok"


# ---------------------------------------------------------------------------------------- renamed arguments
RENAMED = {SchNet: {"max_z": "max_atomic_number"}, PaiNN: {"max_z": "max_atomic_number"},
           MACE: {"r_max": "cutoff"}}


@pytest.mark.parametrize("cls", list(RENAMED), ids=lambda c: c.__name__)
def test_old_argument_names_are_refused_naming_the_new_one(cls):
    assert cls.renamed_arguments == RENAMED[cls]
    for old, new in RENAMED[cls].items():
        with pytest.raises(TypeError, match=f"'{old}' is now called '{new}'") as info:
            cls(**{old: 5})
        assert "\n" not in str(info.value)


def test_old_init_args_translate_to_the_same_network():
    """What the model-file reader does with a checkpoint written before the renames: same weights."""
    from atomzoo.backbones.base import rename_init_args

    old = {"width": 8, "num_filters": 8, "num_interactions": 1, "num_rbf": 6, "cutoff": CUTOFF, "max_z": 20}
    new = rename_init_args(SchNet, old)
    assert new == {**{k: v for k, v in old.items() if k != "max_z"}, "max_atomic_number": 20}
    torch.manual_seed(0)
    a = SchNet(**new)
    assert a.embedding.num_embeddings == 21
    assert rename_init_args(nn.Linear, {"in_features": 2}) == {"in_features": 2}  # any class: nothing to rename
    with pytest.raises(TypeError, match="both"):
        rename_init_args(SchNet, {"max_z": 20, "max_atomic_number": 20})


# ---------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("name", [n for n in NAMES if (n.values[0] if hasattr(n, "values") else n) != "custom"])
def test_masked_atoms_use_the_mask_embedding(nets, batch, name):
    model = nets[name]
    assert model.supports_mask and model.mask_embedding.requires_grad
    mask = torch.zeros(batch.num_nodes, dtype=torch.bool)
    mask[[0, 6]] = True
    view = batch.__copy__()
    view.atom_mask = mask
    out = run(model, view)
    (out.scalars.sum()).backward()
    assert model.mask_embedding.grad is not None and model.mask_embedding.grad.abs().sum() > 0
    model.zero_grad()
    with pytest.raises(ValueError, match="atom_mask"):
        bad = batch.__copy__()
        bad.atom_mask = mask[:-1]
        run(model, bad)


def test_checkpoint_without_mask_embedding_still_loads():
    """State dicts written before atom masking (no ``mask_embedding``) load strictly; the token keeps its init."""
    old = make_schnet()
    state = {k: v for k, v in old.state_dict().items() if k != "mask_embedding"}
    new = make_schnet()
    token = new.mask_embedding.detach().clone()
    new.load_state_dict(state, strict=True)
    assert torch.equal(new.mask_embedding, token)
    assert torch.equal(new.embedding.weight, old.embedding.weight)


# ---------------------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("factory", [make_schnet, make_painn], ids=["schnet", "painn"])
def test_linear_layers_are_xavier_uniform_with_zero_bias(factory):
    """PyG's SchNet / schnetpack's Dense: Xavier-uniform weights, zero biases (issue 14)."""
    torch.manual_seed(0)
    model = factory(COND)
    layers = [m for m in model.interactions.modules() if isinstance(m, nn.Linear)]
    assert layers
    fused = {id(b.message.filter): (b.message.filter.in_features, 3 * model.width * len(model.interactions))
             for b in getattr(model, "interactions") if hasattr(b, "message")}
    fused.update({id(m): (model.width, 2 * model.width) for b in model.interactions if hasattr(b, "update")
                  for m in (b.update.U, b.update.V)})
    for layer in layers:
        fan_in, fan_out = fused.get(id(layer), (layer.in_features, layer.out_features))
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.8 * bound  # uniform on the full range, not torch's smaller default
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0
    for module in model.conditioning.layers:  # SCD code: Xavier final projection, zero bias (not zero: not inert)
        assert torch.count_nonzero(module.mlp[-1].bias) == 0 and torch.count_nonzero(module.mlp[-1].weight) > 0
