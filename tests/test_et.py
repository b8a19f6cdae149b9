"""ET (TorchMD-NET's equivariant transformer): symmetries, forces, conditioning, drop-path, parity
with torchmd-net 3.1 (parameter count, outputs on real QM9 molecules) and the weight loader.

Symmetry and force tests run in float64 on tiny networks (tolerances 1e-10 and below). Tests that
need torchmd-net skip when it is not importable (it is a reference, not a dependency).
"""

from __future__ import annotations

import ast
import csv
import importlib.metadata
import math
from pathlib import Path

import pytest
import numpy as np
import torch
import yaml
from torch_geometric.data import Batch, Data

from atomzoo.backbones import ET
from atomzoo.backbones.contract import check_backbone, check_forces
from atomzoo.backbones.et_torchmd import (
    TorchMDWeightsMismatch,
    convert_state_dict,
    et_kwargs_from_torchmd,
    load_torchmd_et,
)

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = 4.0
COND = 5
SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def tiny(**kw) -> ET:
    args = dict(width=16, num_interactions=2, num_rbf=8, num_heads=4, cutoff=CUTOFF, trainable_rbf=True)
    args.update(kw)
    torch.manual_seed(0)
    model = ET(**args).double()
    with torch.no_grad():  # zero biases / unit layer norms at init would hide mistakes
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def random_batch(seed: int = 0, sizes=(5, 7, 1)) -> Batch:
    """Molecules with atoms at least 0.8 A apart inside a 3 A box, one single-atom molecule."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for n in sizes:
        pos = []
        while len(pos) < n:
            p = torch.rand(3, generator=g, dtype=torch.float64) * 3.0
            if all(torch.linalg.vector_norm(p - q) > 0.8 for q in pos):
                pos.append(p)
        z = torch.tensor([1, 6, 7, 8, 9])[torch.randint(0, 5, (n,), generator=g)]
        data.append(Data(z=z, pos=torch.stack(pos)))
    return Batch.from_data_list(data)


def random_rotation(seed: int, reflect: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if reflect else q


def moved(batch: Batch, pos: torch.Tensor) -> Batch:
    out = batch.clone()
    out.pos = pos
    return out


def qm9_batch(num: int = 6, stride: int = 20000) -> Batch:
    """Real QM9 molecules (qm9pack's CSVs, every ``stride``-th row), float64 positions in Angstrom."""
    dist = importlib.metadata.distribution("qm9pack")
    csv.field_size_limit(1 << 24)
    out, row_index = [], 0
    for part in (1, 2, 3):
        with open(dist.locate_file(f"qm9pack/data/qm9_part{part}.csv"), newline="") as handle:
            for row in csv.DictReader(handle):
                if row_index % stride == 0:
                    z = torch.tensor([SYMBOLS[s] for s in ast.literal_eval(row["Elements"])])
                    pos = torch.tensor(ast.literal_eval(row["XYZ_Ang"]), dtype=torch.float64)
                    out.append(Data(z=z, pos=pos))
                    if len(out) == num:
                        return Batch.from_data_list(out)
                row_index += 1
    return Batch.from_data_list(out)


VARIANTS = {
    "plain": {},
    "vector_cutoff": {"vector_cutoff": True, "distance_influence": "keys"},
    "no_neighbor_embedding": {"neighbor_embedding": False, "distance_influence": "values", "activation": "tanh"},
    "adaln_tanh": {"condition_dim": COND, "modulation": "tanh"},
    "adaln_affine": {"condition_dim": COND, "modulation": "affine"},
}


def condition_for(model: ET, batch: Batch, seed: int = 3):
    if not model.supports_condition:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch.num_graphs, COND, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rotation_reflection_translation_equivariance(variant):
    model = tiny(**VARIANTS[variant]).eval()
    batch = random_batch()
    c = condition_for(model, batch)
    out = model(batch, condition=c)
    assert out.scalars.shape == (batch.num_nodes, 16) and out.vectors.shape == (batch.num_nodes, 3, 16)
    assert out.vectors.abs().max() > 1e-3  # vectors are not trivially zero
    for seed, reflect in ((1, False), (2, True)):
        rot = random_rotation(seed, reflect)
        shift = torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64)
        out_r = model(moved(batch, batch.pos @ rot.T + shift), condition=c)
        torch.testing.assert_close(out_r.scalars, out.scalars, atol=1e-11, rtol=0)
        # vectors [N, 3, F] rotate on dim 1 (L=1 polar vectors: reflections flip them too)
        expected = torch.einsum("ij,njf->nif", rot, out.vectors)
        torch.testing.assert_close(out_r.vectors, expected, atol=1e-11, rtol=0)


def test_permutation_equivariance():
    model = tiny(condition_dim=COND).eval()
    batch = random_batch(sizes=(6,))
    c = condition_for(model, batch)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permuted = Batch.from_data_list([Data(z=batch.z[perm], pos=batch.pos[perm])])
    out, out_p = model(batch, condition=c), model(permuted, condition=c)
    torch.testing.assert_close(out_p.scalars, out.scalars[perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(out_p.vectors, out.vectors[perm], atol=1e-12, rtol=0)


def test_molecules_do_not_interact_and_single_atom_is_finite():
    model = tiny().eval()
    batch = random_batch(sizes=(5, 1))
    alone = Batch.from_data_list([batch.get_example(0)])
    torch.testing.assert_close(model(batch).scalars[:5], model(alone).scalars, atol=1e-12, rtol=0)
    out = model(Batch.from_data_list([batch.get_example(1)]))
    assert torch.isfinite(out.scalars).all() and out.vectors.abs().max() == 0  # no neighbours: no direction


@pytest.mark.parametrize("variant", ["plain", "vector_cutoff", "no_neighbor_embedding"])
def test_forces_match_finite_differences(variant):
    """Autograd forces equal central differences (the contract's check, atomzoo.backbones.contract), with
    scalars and vector norms both in the energy, ``|F - F_fd| <= 1e-6 + 1e-6 |F_fd|``; conditioned ET:
    ``test_contract_checks_pass`` (the adaLN MLP reads ``LN(x)`` without a stop-gradient)."""
    model = tiny(**VARIANTS[variant]).eval()
    batch = random_batch(sizes=(6, 4))
    c = condition_for(model, batch)
    forces = check_forces(model, batch, c, seed=7, vector_weight=0.1, atol=1e-6, rtol=1e-6)
    assert forces.abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["plain", "adaln_tanh", "adaln_affine"])
def test_contract_checks_pass(variant):
    """Every row of the capability table (docs/backbones.md), ET with drop-path as SCD pretrains it."""
    report = check_backbone(lambda: ET(**{**dict(width=16, num_interactions=2, num_rbf=8, num_heads=4, cutoff=CUTOFF,
                                                 drop_path=0.1), **VARIANTS[variant]}))
    assert report == {
        "shapes": "ok", "symmetries": "ok", "locality": "ok", "max_num_neighbors": "ok", "forces": "ok",
        "periodic": "ok",
        "conditioning": "no condition (condition_dim=0)" if variant == "plain" else "ok", "masking": "ok",
        "drop_path": "ok", "element_embedding": "ok", "weight_decay": "generic rule", "renamed_arguments": "ok",
    }


def test_old_argument_names_are_refused_naming_the_new_one():
    assert ET.renamed_arguments == {"num_layers": "num_interactions", "max_z": "num_embeddings"}
    with pytest.raises(TypeError, match="'num_layers' is now called 'num_interactions'"):
        ET(num_layers=2)
    with pytest.raises(TypeError, match="'max_z' is now called 'num_embeddings'"):
        ET(max_z=10)


def test_energy_is_smooth_at_the_cutoff_with_vector_cutoff():
    """With vector_cutoff every message vanishes at the cutoff: moving an atom across it is continuous."""
    model = tiny(vector_cutoff=True).eval()

    def energy(d):
        pos = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], dtype=torch.float64)
        out = model(Batch.from_data_list([Data(z=torch.tensor([6, 8]), pos=pos)]))
        return out.scalars.sum().item(), out.vectors.abs().sum().item()

    inside, outside = energy(CUTOFF - 1e-7), energy(CUTOFF + 1e-7)
    assert abs(inside[0] - outside[0]) < 1e-6 and abs(inside[1] - outside[1]) < 1e-6


def test_condition_reaches_the_output_and_none_is_the_mask_token():
    conditioned = tiny(condition_dim=COND).eval()
    plain = ET(width=16, num_interactions=2, num_rbf=8, num_heads=4, cutoff=CUTOFF).double().eval()
    missing, unexpected = plain.load_state_dict(conditioned.state_dict(), strict=False)
    assert not missing and unexpected
    assert all(".adaln." in k or k.startswith("conditioning.input.") for k in unexpected)
    batch = random_batch()
    c = condition_for(conditioned, batch).requires_grad_(True)
    # condition=None runs the learned mask token through the same adaLN path (SCD's clean pass, fine-tuning)
    none_out = conditioned(batch, condition=None)
    token = conditioned.conditioning.mask_token.detach().expand(int(batch.num_graphs), -1)
    with torch.no_grad():
        token_out = conditioned(batch, condition=token)
    assert torch.equal(none_out.scalars, token_out.scalars)
    assert (none_out.scalars - plain(batch).scalars).abs().max() > 1e-3  # the conditioning is not inert
    out = conditioned(batch, condition=c)
    assert (out.scalars - none_out.scalars).abs().max() > 1e-3
    # the condition of one molecule changes only that molecule's atoms
    c2 = c.detach().clone()
    c2[1, 0] += 1.0  # one component: a constant shift of the whole row would vanish in the condition's layer norm
    out2 = conditioned(batch, condition=c2)
    first = batch.batch == 0
    torch.testing.assert_close(out2.scalars[first], out.scalars.detach()[first], atol=1e-13, rtol=0)
    assert (out2.scalars[batch.batch == 1] - out.scalars.detach()[batch.batch == 1]).abs().max() > 1e-4
    # gradient flows to the condition and to every layer's gate temperature alpha
    (out.scalars.sum() + out.vectors.pow(2).sum()).backward()
    assert c.grad.abs().max() > 0
    for layer in conditioned.layers:
        assert layer.adaln.alpha.grad.abs() > 0 and layer.adaln.squash.grad.abs() > 0


def test_adaln_init_and_gate():
    layer = tiny(condition_dim=COND).layers[0].adaln
    fresh = ET(width=16, num_interactions=1, num_heads=4, condition_dim=COND).layers[0].adaln
    assert fresh.alpha.item() == pytest.approx(0.2) and fresh.squash.item() == pytest.approx(0.2)
    assert torch.all(fresh.mlp[-1].bias == 0)
    x_n = torch.nn.functional.layer_norm(torch.randn(4, 16, dtype=torch.float64), (16,))
    c = torch.randn(1, COND, dtype=torch.float64)
    x_in, gate = layer(x_n, c, torch.zeros(4, dtype=torch.long))
    assert gate.abs().max() < 1 and x_in.shape == (4, 16)
    # by hand: shift/scale/gate from MLP([c, x_n]); tanh modulation, tanh(alpha * gate)
    shift, scale, g = layer.mlp(torch.cat([c.expand(4, -1), x_n], -1)).chunk(3, -1)
    a = layer.squash.abs()
    torch.testing.assert_close(x_in, torch.tanh(a * x_n) * (1 + scale) / a + shift)
    torch.testing.assert_close(gate, torch.tanh(layer.alpha * g))


def test_drop_path_only_in_training():
    model = tiny(drop_path=0.5)
    batch = random_batch(sizes=(8, 8))
    model.eval()
    ref = model(batch).scalars
    ref_no_drop = tiny(drop_path=0.0).eval()(batch).scalars
    torch.testing.assert_close(ref, ref_no_drop, atol=0, rtol=0)
    model.train()
    torch.manual_seed(1)
    a = model(batch).scalars
    torch.manual_seed(2)
    b = model(batch).scalars
    assert (a - b).abs().max() > 1e-3 and (a - ref).abs().max() > 1e-3
    model.set_drop_path(0.0)
    torch.testing.assert_close(model(batch).scalars, ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="drop_path"):
        model.set_drop_path(1.0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="divisible"):
        ET(width=30, num_heads=8)
    with pytest.raises(ValueError, match="activation"):
        ET(activation="relu")
    with pytest.raises(ValueError, match="distance_influence"):
        ET(distance_influence="queries")
    with pytest.raises(ValueError, match="modulation"):
        ET(condition_dim=2, modulation="film")
    model = ET(width=16, num_interactions=1, num_heads=4, num_embeddings=10)
    with pytest.raises(ValueError, match="num_embeddings"):
        model(Batch.from_data_list([Data(z=torch.tensor([6, 11]), pos=torch.randn(2, 3))]))
    with pytest.raises(ValueError, match="condition"):
        model(random_batch(), condition=torch.zeros(3, 2))


def test_shipped_config_builds_and_documents_paper_presets():
    config = yaml.safe_load((ROOT / "configs/backbones/et.yaml").read_text())
    assert config["class_path"] == "atomzoo.backbones.ET"
    model = ET(**config["init_args"])
    assert model.width == 64 and model.num_interactions == 3
    text = (ROOT / "configs/backbones/et.yaml").read_text()
    assert "width 256, num_interactions 8, num_rbf 64" in text  # ET-QM9 preset documented


# ------------------------------------------------------------------- parity with torchmd-net 3.1
def torchmd_hparams(**kw):
    hp = dict(model="equivariant-transformer", embedding_dimension=32, num_layers=2, num_rbf=16,
              rbf_type="expnorm", trainable_rbf=True, activation="silu", attn_activation="silu",
              neighbor_embedding=True, num_heads=4, distance_influence="both", cutoff_lower=0.0,
              cutoff_upper=5.0, max_z=100, max_num_neighbors=64, vector_cutoff=False, reduce_op="add",
              output_model="Scalar", prior_model=None, derivative=False, atom_filter=-1, precision=64)
    hp.update(kw)
    return hp


def torchmd_model(**kw):
    models = pytest.importorskip("torchmdnet.models.model")
    torch.manual_seed(0)
    model = models.create_model(torchmd_hparams(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


PARITY = {
    "default": {},
    "paper_qm9": {"embedding_dimension": 256, "num_layers": 8, "num_rbf": 64, "num_heads": 8, "trainable_rbf": False},
    "keys_vector_cutoff": {"distance_influence": "keys", "vector_cutoff": True},
    "values_no_neighbour": {"distance_influence": "values", "neighbor_embedding": False, "activation": "tanh"},
    "none": {"distance_influence": "none", "max_z": 20, "attn_activation": "sigmoid"},
}


@pytest.mark.parametrize("name", sorted(PARITY))
def test_parameter_count_matches_torchmd(name):
    models = pytest.importorskip("torchmdnet.models.model")
    reference = models.create_model(torchmd_hparams(**PARITY[name])).representation_model
    ours = ET(**et_kwargs_from_torchmd(torchmd_hparams(**PARITY[name])))
    # the zoo's additions: one learned mask embedding per element table (atom masking, docs/backbones.md)
    masks = {n for n, _ in ours.named_parameters() if n.endswith("mask_embedding")}
    assert masks <= {"mask_embedding", "neighbor_mask_embedding"}
    count = lambda m, skip=(): sum(p.numel() for n, p in m.named_parameters() if n not in skip)  # noqa: E731
    assert count(ours, masks) == count(reference)
    shapes = lambda m, skip=(): sorted(tuple(p.shape) for n, p in m.named_parameters() if n not in skip)  # noqa: E731
    assert shapes(ours, masks) == shapes(reference)


@pytest.mark.parametrize("name", ["default", "keys_vector_cutoff", "values_no_neighbour", "none"])
def test_loaded_weights_give_torchmd_outputs_on_qm9(name):
    reference = torchmd_model(**PARITY[name])
    ours = load_torchmd_et(reference).eval()
    assert ours.embedding.weight.dtype == torch.float64
    batch = qm9_batch()
    assert batch.num_nodes > 50  # real QM9 molecules, several per batch
    x_ref, v_ref, *_ = reference.representation_model(batch.z, batch.pos, batch.batch)
    out = ours(batch)
    torch.testing.assert_close(out.scalars, x_ref, atol=1e-11, rtol=0)
    torch.testing.assert_close(out.vectors, v_ref, atol=1e-10, rtol=0)


def test_loaded_weights_give_torchmd_forces():
    reference = torchmd_model()
    ours = load_torchmd_et(reference).eval()
    batch = qm9_batch(num=3)
    readout = torch.randn(32, dtype=torch.float64)
    pos_a = batch.pos.clone().requires_grad_(True)
    x_ref, *_ = reference.representation_model(batch.z, pos_a, batch.batch)
    (f_ref,) = torch.autograd.grad((x_ref @ readout).sum(), pos_a)
    pos_b = batch.pos.clone().requires_grad_(True)
    (f_ours,) = torch.autograd.grad((ours(moved(batch, pos_b)).scalars @ readout).sum(), pos_b)
    torch.testing.assert_close(f_ours, f_ref, atol=1e-10, rtol=0)


def test_loading_from_a_checkpoint_file(tmp_path):
    reference = torchmd_model()
    hp = torchmd_hparams()
    state = {f"model.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "tmdnet.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": state, "epoch": 3}, path)
    ours = load_torchmd_et(path, drop_path=0.1).eval()
    batch = qm9_batch(num=2)
    x_ref, *_ = reference.representation_model(batch.z, batch.pos, batch.batch)
    torch.testing.assert_close(ours(batch).scalars, x_ref, atol=1e-11, rtol=0)
    # adaLN modules are new (left at their init), everything else is loaded
    conditioned = load_torchmd_et(path, condition_dim=4)
    torch.testing.assert_close(conditioned.layers[1].q_proj.weight, ours.layers[1].q_proj.weight)
    mapped, skipped = convert_state_dict(state)
    assert "model.mean" in skipped and any(k.startswith("model.output_model.") for k in skipped)
    assert "layers.1.norm.weight" in mapped and "rbf.means" in mapped


def test_mismatched_weights_list_the_keys():
    reference = torchmd_model()
    state = dict(reference.state_dict())
    del state["representation_model.attention_layers.1.dk_proj.weight"]
    state["representation_model.attention_layers.1.q_proj.weight"] = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(TorchMDWeightsMismatch) as info:
        load_torchmd_et({"hyper_parameters": torchmd_hparams(), "state_dict": state})
    message = str(info.value)
    assert "layers.1.dk_proj.weight" in message and "layers.1.q_proj.weight: checkpoint (3, 3)" in message
    state = dict(reference.state_dict())
    state["representation_model.attention_layers.0.extra_proj.weight"] = torch.zeros(2)
    with pytest.raises(TorchMDWeightsMismatch, match="attention_layers.0.extra_proj.weight"):
        load_torchmd_et({"hyper_parameters": torchmd_hparams(), "state_dict": state})
    # hyperparameters that disagree with the weights: every layer-2 key is reported
    with pytest.raises(TorchMDWeightsMismatch, match="not in ET: .*layers.1.q_proj.weight"):
        load_torchmd_et({"hyper_parameters": torchmd_hparams(num_layers=1), "state_dict": reference.state_dict()})


def test_unsupported_torchmd_models_raise():
    with pytest.raises(ValueError, match="equivariant-transformer"):
        et_kwargs_from_torchmd({"model": "tensornet"})
    with pytest.raises(ValueError, match="cutoff_lower"):
        et_kwargs_from_torchmd({"cutoff_lower": 1.0})
    with pytest.raises(ValueError, match="rbf_type"):
        et_kwargs_from_torchmd({"rbf_type": "gauss"})
    with pytest.raises(TypeError, match="checkpoint path"):
        load_torchmd_et(42)
    with pytest.raises(FileNotFoundError):
        load_torchmd_et("/nonexistent/file.ckpt")
    assert math.isclose(et_kwargs_from_torchmd({})["cutoff"], 5.0)


def test_loads_a_torchmd_net_checkpoint_file_without_torchmd_net():
    """A TorchMD-NET 3.1 checkpoint in its own layout (tests/data/torchmd_et, written with torchmd-net by
    tests/data/generators/make_torchmd_fixture.py): the loaded ET reproduces torchmd-net's per-atom scalars and
    vectors on real QM9 molecules, here where torchmd-net itself is not installed."""
    folder = ROOT / "tests" / "data" / "torchmd_et"
    ours = load_torchmd_et(folder / "et_32x2.ckpt").eval()
    ref = np.load(folder / "outputs.npz")
    data = Batch(z=torch.from_numpy(ref["z"]), pos=torch.from_numpy(ref["pos"]), batch=torch.from_numpy(ref["batch"]))
    data.ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(data.batch).cumsum(0)])
    out = ours(data)
    assert ours.embedding.weight.dtype == torch.float64 and ref["x"].shape == (89, 32)
    torch.testing.assert_close(out.scalars.detach(), torch.from_numpy(ref["x"]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.vectors.detach(), torch.from_numpy(ref["vec"]), rtol=1e-9, atol=1e-9)
