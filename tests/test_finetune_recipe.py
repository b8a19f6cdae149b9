"""Fine-tuning as the references do it: one noisy pass predicting property and noise, the pretrained
noise head and normaliser reused, SCD's per-target weights, drop-path and its schedule."""

import warnings

import pytest

from conftest import requires_mace
import torch
from torch_geometric.data import Batch, Data

from atomzoo.backbones import PaiNN, SchNet
from atomzoo.backbones.base import Backbone
from atomzoo.datamodules.base import TargetInfo
from atomzoo.nn.droppath import DropPath, drop_path_rate, set_drop_path
from atomzoo.objectives import JEPA, Denoising, Regression, SelfConditionedDenoising
from atomzoo.objectives.regression import scd_aux_denoising_weight

warnings.filterwarnings("ignore", message=".*self.log.*")


def tiny_schnet(condition_dim: int = 0):
    return SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=8, cutoff=4.0, condition_dim=condition_dim)


def batch_of_two() -> Batch:
    g = torch.Generator().manual_seed(5)
    mols = [Data(z=torch.tensor([6, 1, 8, 1]), pos=torch.randn(4, 3, generator=g), y=torch.tensor([[0.3]], dtype=torch.float64)),
            Data(z=torch.tensor([7, 1, 1]), pos=torch.randn(3, 3, generator=g), y=torch.tensor([[-0.2]], dtype=torch.float64))]
    return Batch.from_data_list(mols)


def with_stats(model):
    model.fit_statistics([TargetInfo("homo", "eV", "mean")], [[0.1], [0.5], [-0.2]], torch.ones(3, 101))
    return model


def test_one_noisy_pass_predicts_property_and_noise_exactly():
    torch.manual_seed(0)
    model = with_stats(Regression(tiny_schnet(), targets=["homo"], aux_denoising_weight=0.1)).train()
    batch = batch_of_two()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].pos.detach().clone()))
    torch.manual_seed(7)
    loss = model.training_step(batch, 0)
    assert len(seen) == 1  # ONE backbone pass, not a clean and a noisy one
    # by hand, with the same noise: property loss on the noisy pass + 0.1 * MSE(head, noise / 0.005)
    torch.manual_seed(7)
    noise = torch.randn_like(batch.pos) * 0.005
    assert torch.equal(seen[0], batch.pos + noise)
    noisy = batch.clone()
    noisy.pos = batch.pos + noise
    out = model.backbone(noisy)
    pred = model.predict_from_features(out.scalars, noisy)
    head = model.aux_denoising.head(out.scalars, out.vectors, out.graph)
    hand = ((pred - batch.y) / model.std).float().abs().mean() + 0.1 * (head - noise / 0.005).pow(2).mean()
    assert torch.equal(loss, hand)
    # evaluation stays clean
    seen.clear()
    with torch.no_grad():
        model.eval()
        model.validation_step(batch, 0)
    assert torch.equal(seen[0], batch.pos)


def test_aux_off_is_plain_regression():
    torch.manual_seed(0)
    model = with_stats(Regression(tiny_schnet(), targets=["homo"])).train()
    batch = batch_of_two()
    assert model.aux_denoising is None
    assert torch.equal(model.training_step(batch, 0), ((model(batch) - batch.y) / model.std).float().abs().mean())


def save(objective, path, **hparams):
    torch.save({"state_dict": objective.state_dict(), "hyper_parameters": hparams}, path)
    return str(path)


def test_pretrained_denoising_head_and_scale_are_reused(tmp_path):
    torch.manual_seed(0)
    source = Denoising(tiny_schnet(), sigma=0.04)
    path = save(source, tmp_path / "denoising.ckpt", sigma=0.04, head="auto", head_hidden=None)
    model = Regression(tiny_schnet(), targets=["homo"], init_from=path, aux_denoising_weight=0.1)
    for name, tensor in source.head.state_dict().items():
        assert torch.equal(model.aux_denoising.head.state_dict()[name], tensor), name
    noise = torch.randn(5, 3)
    assert torch.equal(model.aux_denoising.normalizer(noise), noise / 0.04)  # pretraining's noise / sigma
    fresh = Regression(tiny_schnet(), targets=["homo"], init_from=path, aux_denoising_weight=0.1,
                       aux_denoising_pretrained_head=False)
    assert not torch.equal(fresh.aux_denoising.head.head.node.weight, source.head.head.node.weight)
    assert torch.equal(fresh.aux_denoising.normalizer(noise), noise / 0.005)


def test_pretrained_scd_head_and_running_moments_are_reused(tmp_path):
    torch.manual_seed(0)
    source = SelfConditionedDenoising(tiny_schnet(condition_dim=8))
    source.target_stats.update(torch.randn(1000, 3) * 0.04 + 0.001)
    path = save(source, tmp_path / "scd.ckpt", sigma=0.04, head="auto", head_hidden=None)
    model = Regression(tiny_schnet(condition_dim=8), targets=["homo"], init_from=path, aux_denoising_weight=0.1)
    norm = model.aux_denoising.normalizer
    assert bool(norm.running) and norm.count.item() == 1000
    noise = torch.randn(6, 3) * 0.005
    expected = (noise - source.target_stats.mean.float()) / source.target_stats.std.float()
    assert torch.allclose(norm(noise), expected, rtol=1e-6, atol=0)
    model.aux_denoising.loss_from_output(model.backbone(batch_of_two()), torch.zeros(7, 3), update=True)
    assert norm.count.item() == 1007  # keeps accumulating in fine-tuning, as the references do


def test_no_noise_head_in_jepa_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = save(JEPA(tiny_schnet()), tmp_path / "jepa.ckpt")
    model = Regression(tiny_schnet(), targets=["homo"], init_from=path, aux_denoising_weight=0.1)
    assert model.aux_denoising.pretrained_from is None


def test_scd_per_target_weights():
    assert scd_aux_denoising_weight(["homo"]) == 0.1 and scd_aux_denoising_weight(["gap", "lumo"]) == 0.1
    assert scd_aux_denoising_weight(["alpha"]) == 0.2 and scd_aux_denoising_weight(["zpve", "cv"]) == 0.2
    assert scd_aux_denoising_weight(["u0"]) == 0.0 and scd_aux_denoising_weight(["g"]) == 0.0
    assert Regression(tiny_schnet(), targets=["u0"], aux_denoising_weight="auto").aux_denoising is None
    assert Regression(tiny_schnet(), targets=["cv"], aux_denoising_weight="auto").aux_denoising_weight == 0.2
    with pytest.raises(ValueError, match="--model.aux_denoising_weight"):
        Regression(tiny_schnet(), targets=["homo", "u0"], aux_denoising_weight="auto")
    with pytest.raises(ValueError, match="--model.aux_denoising_weight"):
        Regression(tiny_schnet(), targets=["homo"], aux_denoising_weight="scd")


def test_drop_path_is_per_atom_and_off_in_eval():
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    x, v = torch.ones(2000, 4), torch.ones(2000, 3, 4)
    y, w = drop(x, v)
    kept = y[:, 0] != 0
    assert set(y.unique().tolist()) == {0.0, 2.0} and torch.equal(y != 0, kept[:, None].expand_as(y))
    assert torch.equal(w != 0, kept[:, None, None].expand_as(w))  # the same atoms in scalars and vectors
    assert 0.45 < kept.float().mean().item() < 0.55
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("make", [tiny_schnet, lambda: PaiNN(width=16, num_interactions=2, num_rbf=8, cutoff=4.0)])
def test_backbone_drop_path_hook(make):
    backbone = make()
    batch = batch_of_two()
    reference = backbone(batch).scalars
    assert set_drop_path(backbone, 0.5) == 1
    backbone.train()
    torch.manual_seed(0)
    assert not torch.equal(backbone(batch).scalars, reference)
    backbone.eval()
    assert torch.equal(backbone(batch).scalars, reference)


@requires_mace
def test_mace_drop_path_hook_on_residual_updates():
    from atomzoo.backbones.mace import MACE

    torch.manual_seed(0)
    test_backbone_drop_path_hook(lambda: MACE(hidden_irreps="8x0e+8x1o", max_ell=1, num_interactions=2))


def test_drop_path_schedule_and_errors():
    assert drop_path_rate(0, 0.15, 0.1, 3000) == 0.15
    assert drop_path_rate(1500, 0.15, 0.1, 3000) == pytest.approx(0.125)
    assert drop_path_rate(5000, 0.15, 0.1, 3000) == 0.1
    model = Regression(tiny_schnet(), targets=["homo"], drop_path=[0.15, 0.1], warmup_steps=1000)
    assert model.drop_path_steps == 3000  # SCD: learning-rate warmup + 2000 steps
    model.on_train_batch_start(batch_of_two(), 0)
    assert model.backbone.drop_path.p == 0.15

    class NoHook(Backbone):
        def __init__(self):
            super().__init__(width=4, cutoff=3.0)

        def forward(self, data, condition=None):  # pragma: no cover
            raise NotImplementedError

    with pytest.raises(ValueError, match="no drop-path hook"):
        Regression(NoHook(), targets=["homo"], drop_path=0.1)
    with pytest.raises(ValueError, match="--model.drop_path"):
        Regression(tiny_schnet(), targets=["homo"], drop_path=1.5)


def test_checkpoint_without_aux_normaliser_still_loads():
    """Fine-tuned checkpoints written before the aux normaliser existed load (it keeps noise / sigma)."""
    torch.manual_seed(0)
    model = Regression(tiny_schnet(), targets=["homo"], aux_denoising_weight=0.1)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_denoising.normalizer.")}
    checkpoint = {"state_dict": state}
    restored = Regression(tiny_schnet(), targets=["homo"], aux_denoising_weight=0.1)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"], strict=True)
    assert torch.equal(restored.aux_denoising.head.head.node.weight, model.aux_denoising.head.head.node.weight)
    assert restored.aux_denoising.normalizer.scale.item() == 0.005
