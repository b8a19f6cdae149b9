"""The regression objective split by job: forces function, DataModule statistics, loss modules,
and a bit-exact hand computation of Regression's prediction, forces and loss on a fixed batch."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from atomzoo.backbones import PaiNN, SchNet
from atomzoo.datamodules import RMD17DataModule
from atomzoo.nn.statistics import StatisticsRequest, TargetInfo, compute_target_statistics
from atomzoo.objectives import Regression
from atomzoo.objectives.forces import energy_and_forces
from atomzoo.objectives.losses import ForceLoss, StandardizedLoss

FIXTURE = Path(__file__).parent / "data" / "md17_fixture"


def fixed_batch() -> Batch:
    g = torch.Generator().manual_seed(3)
    mols = [Data(z=torch.tensor([6, 1, 8]), pos=torch.randn(3, 3, generator=g), y=torch.tensor([[-1000.5, 0.25]], dtype=torch.float64)),
            Data(z=torch.tensor([7, 1, 1, 6]), pos=torch.randn(4, 3, generator=g), y=torch.tensor([[-1500.25, -0.5]], dtype=torch.float64))]
    batch = Batch.from_data_list(mols)
    batch.forces = torch.randn(7, 3, generator=g)
    return batch


def fixed_model(backbone, forces=False):
    torch.manual_seed(0)
    model = Regression(backbone, targets=["energy", "gap"], forces=forces, loss="l1")
    infos = [TargetInfo("energy", "eV", "sum", atomref=tuple(float(-z) * 10.0 for z in range(10))), TargetInfo("gap", "eV", "mean")]
    labels = np.array([[-1000.0, 0.1], [-1490.0, -0.3], [-1200.0, 0.4]])
    counts = np.zeros((3, 101))
    counts[0, [1, 6, 8]] = [1, 1, 1]
    counts[1, [1, 6, 7]] = [2, 1, 1]
    counts[2, [1, 6]] = [4, 1]
    model.fit_statistics(infos, labels, counts)
    if forces:
        model.force_rms.fill_(0.75)
    return model.eval()


@pytest.mark.parametrize("make", [lambda: SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=8, cutoff=4.0),
                                  lambda: PaiNN(width=16, num_interactions=2, num_rbf=8, cutoff=4.0)])
def test_prediction_forces_and_loss_equal_a_hand_computation_bit_for_bit(make):
    model = fixed_model(make(), forces=True)
    batch = fixed_batch()
    pos = batch.pos.clone().requires_grad_(True)
    data = batch.clone()
    data.pos = pos
    # by hand: heads on the backbone's scalars, float32 per-molecule sums in atom order, float64 de-standardisation
    scalars = model.backbone(data).scalars
    per_atom = torch.cat([head(scalars) for head in model.heads], dim=-1)
    rows = []
    for g in range(2):
        atoms = (batch.batch == g).nonzero().flatten().tolist()
        total = per_atom[atoms[0]]
        for i in atoms[1:]:
            total = total + per_atom[i]
        total = total.double()
        n = float(len(atoms))
        ref = model.atomref_table[0, batch.z[atoms]].sum()
        energy = ref + n * model.mean[0] + model.std[0] * total[0]
        gap = model.mean[1] + model.std[1] * (total[1] / n)
        rows.append(torch.stack([energy, gap]))
    hand = torch.stack(rows)
    hand_forces = -torch.autograd.grad(hand[:, 0].sum(), pos)[0]
    e_term = ((hand - batch.y) / model.std).float().abs().mean()
    f_term = ((hand_forces - batch.forces) / torch.tensor(0.75, dtype=torch.float64).float()).abs().mean()
    hand_loss = 1.0 * e_term + 100.0 * f_term

    # per-atom energies of the sum-pooled energy head: ref(z_i) + mu + sigma * o_i
    hand_atomic = (model.atomref_table[0][batch.z] + model.mean[0] + model.std[0] * per_atom[:, 0].double()).detach()

    with torch.inference_mode():  # what Lightning's evaluation loops do
        out = model.predict_properties(batch, atomic_energies=True)  # forces: the model trains on them
    pred, forces = out["targets"], out["forces"]
    assert pred.dtype == torch.float64 and torch.equal(pred, hand.detach())
    assert torch.equal(forces, hand_forces)
    assert torch.equal(out["atomic_energies"], hand_atomic)
    per_molecule = torch.zeros(2, dtype=torch.float64).index_add(0, batch.batch, out["atomic_energies"])
    # they add up to the energy (which sums the float32 head outputs in float32: agreement to float32 rounding)
    torch.testing.assert_close(per_molecule, pred[:, 0], rtol=1e-7, atol=0)
    with torch.inference_mode():
        terms = model.compute_loss(batch)  # the objective contract; eval mode: clean positions, no aux term
    assert set(terms) == {"loss"} and torch.equal(terms["loss"], hand_loss.detach())
    with torch.inference_mode():
        terms = model.evaluation_terms(batch, model.evaluation_generator(0))
    assert torch.equal(terms["loss"], hand_loss.detach())
    assert torch.equal(terms["target_error"], hand.detach() - batch.y)
    assert torch.equal(terms["force_error"], hand_forces - batch.forces)
    with torch.no_grad():
        assert torch.equal(model(batch), hand.detach())
    assert set(model.predict_properties(batch, forces=False)) == {"targets"}
    model.sum_pooled[0] = False  # a mean-pooled energy has no per-atom split
    assert not model.has_atomic_energies
    with pytest.raises(ValueError, match="sum-pooled energy head"):
        model.predict_properties(batch, atomic_energies=True)
    # statistics by hand: energy per atom after atom references; gap per molecule
    residual = np.array([-1000.0 + 150.0, -1490.0 + 150.0, -1200.0 + 100.0])  # atomref(z) = -10 z
    per_atom_mean = (residual / np.array([3, 4, 5])).mean()
    assert model.mean[0].item() == pytest.approx(per_atom_mean, rel=1e-15)
    assert model.std[1].item() == pytest.approx(np.std([0.1, -0.3, 0.4], ddof=1), rel=1e-14)


def test_energy_and_forces_contract():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.tensor(2.0))

    def energy(data):  # E = w * sum |r_i|^2 per molecule  ->  F = -2 w r
        return torch.zeros(2).index_add(0, data.batch, weight * (data.pos ** 2).sum(-1))

    batch = fixed_batch()
    with torch.inference_mode():
        e, f = energy_and_forces(energy, batch, training=False)
    assert e.shape == (2,) and torch.equal(f, -4.0 * batch.pos) and not f.requires_grad
    with torch.no_grad():
        _, f = energy_and_forces(energy, batch, training=False)
    assert torch.equal(f, -4.0 * batch.pos)
    _, f = energy_and_forces(energy, batch, training=True)  # create_graph: the force loss reaches the weights
    (g,) = torch.autograd.grad(f.sum(), weight)
    assert g.item() == pytest.approx(-2.0 * batch.pos.sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="energy_index"):
        energy_and_forces(lambda d: energy(d)[:, None], batch, training=False)
    with pytest.raises(ValueError, match="energy_index=2"):
        energy_and_forces(lambda d: energy(d)[:, None], batch, training=False, energy_index=2)


def test_loss_modules():
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    std = torch.tensor([2.0, 4.0], dtype=torch.float64)
    assert StandardizedLoss("l1")(pred, target, std).item() == pytest.approx((0.5 + 0 + 0 + 1.0) / 4)
    assert StandardizedLoss("mse")(pred, target, std).item() == pytest.approx((0.25 + 1.0) / 4)
    f = ForceLoss("mse")(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor(2.0, dtype=torch.float64))
    assert f.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="--model.loss"):
        StandardizedLoss("huber")


def test_datamodule_hands_the_model_one_summary(cache_dir):
    dm = RMD17DataModule(root=str(FIXTURE), molecule="ethanol", cache_dir=str(cache_dir), num_train=300, num_val=50)
    dm.setup()
    summary = dm.data_summary(StatisticsRequest(targets=("energy",), forces=True, fit_atomref=False))
    stats = summary.statistics
    train = [dm.dataset("train")[i] for i in range(len(dm.dataset("train")))]
    energy = np.array([d.y[0, 0].item() for d in train])
    forces = np.concatenate([d.forces.numpy() for d in train]).astype(np.float64)
    assert stats.names == ("energy",) and stats.units == ("eV",) and stats.pooling == ("sum",)
    assert stats.num_train == 300 and stats.force_unit == "eV/A"
    assert stats.mean[0].item() == pytest.approx(energy.mean() / 9, rel=1e-12)  # ethanol: 9 atoms
    assert stats.std[0].item() == pytest.approx(energy.std(ddof=1), rel=1e-9)
    assert stats.force_rms == pytest.approx(np.sqrt((forces ** 2).mean()), rel=1e-9)
    # the metadata every objective records (objectives/provenance.py)
    assert summary.dataset == "RMD17DataModule" and [t.name for t in summary.targets] == ["energy"]
    assert summary.force_unit == "eV/A" and summary.data_units["energy"] == "eV"
    np.testing.assert_allclose(summary.label_stats["energy"], (energy.mean(), energy.std()), rtol=1e-12)
    assert summary.elements == (1, 6, 8) and summary.data_elements == (1, 6, 8)
    # by default the energy's references are fitted (one composition: they carry its mean energy)
    fitted = dm.data_summary(StatisticsRequest(targets=("energy",), forces=True)).statistics
    assert fitted.fitted_atomref == ("energy",) and abs(fitted.mean[0].item()) < 1e-9
    assert (2 * fitted.atomref[0, 6] + 6 * fitted.atomref[0, 1] + fitted.atomref[0, 8]).item() == pytest.approx(
        energy.mean(), rel=1e-12)
    assert fitted.std[0].item() == pytest.approx(energy.std(ddof=1), rel=1e-9)
    assert dm.data_summary().statistics is None  # metadata only (self-supervised objectives)
    assert dm.data_summary(StatisticsRequest(("energy",), pooling={"energy": "mean"})).statistics.pooling == ("mean",)
    with pytest.raises(ValueError, match="--data.targets"):
        dm.data_summary(StatisticsRequest(targets=("homo",)))
    with pytest.raises(ValueError, match="--model.pooling"):
        dm.data_summary(StatisticsRequest(pooling={"energy": "max"}))
    dm.store.atom_arrays = lambda: ["z", "pos"]  # a dataset without forces
    with pytest.raises(ValueError, match="forces false"):
        dm.data_summary(StatisticsRequest(forces=True))


def test_compute_target_statistics_checks_shapes():
    with pytest.raises(ValueError, match="do not fit 2 targets"):
        compute_target_statistics([TargetInfo("a", "eV")] * 2, np.zeros((3, 1)), np.ones((3, 101)))
