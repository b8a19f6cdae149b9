"""Weight decay on weight matrices only: which parameters get decay, on each backbone."""

import pytest

from conftest import requires_mace
import torch

from atomzoo.backbones import PaiNN, SchNet
from atomzoo.objectives import Regression, SelfConditionedDenoising
from atomzoo.objectives.param_groups import parameter_groups


def decayed_names(model, weight_decay=0.05):
    optimizer = model.configure_optimizers()[0][0]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == weight_decay and groups["no_decay"]["weight_decay"] == 0.0
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len([p for p in model.parameters() if p.requires_grad])
    return {names[id(p)] for p in groups["decay"]["params"]}, {names[id(p)] for p in groups["no_decay"]["params"]}


@pytest.mark.parametrize("make", [lambda: SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=8, condition_dim=8),
                                  lambda: PaiNN(width=16, num_interactions=2, num_rbf=8, condition_dim=8)])
def test_only_linear_weight_matrices_decay(make):
    model = Regression(make(), targets=["homo"], weight_decay=0.05)
    decay, no_decay = decayed_names(model)
    linear = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert decay == linear  # every Linear weight matrix (backbone, adaLN MLP, heads) and nothing else
    everything = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay == everything - linear
    assert {"backbone.embedding.weight", "backbone.mask_embedding", "backbone.conditioning.input.mask_token",
            "backbone.conditioning.layers.0.alpha", "backbone.conditioning.layers.0.x_norm.weight"} <= no_decay


def test_scd_mask_token_norms_and_frozen_embedding():
    model = SelfConditionedDenoising(SchNet(width=16, num_filters=16, num_interactions=1, num_rbf=8, condition_dim=8), weight_decay=0.05)
    decay, no_decay = decayed_names(model)
    assert "backbone.conditioning.input.mask_token" in no_decay and "backbone.conditioning.input.norm.weight" in no_decay
    assert "projection.atom.0.weight" in no_decay  # a LayerNorm gain: 1-D, never decayed
    assert "projection.atom.1.weight" in decay and "backbone.conditioning.layers.0.mlp.0.weight" in decay
    assert "backbone.embedding.weight" not in decay | no_decay  # frozen in SCD pretraining: not optimised at all


@requires_mace
def test_mace_follows_mace_torch():
    from atomzoo.backbones.mace import MACE

    model = Regression(MACE(num_interactions=2), targets=["homo"], weight_decay=0.01)
    decay, no_decay = decayed_names(model, 0.01)
    backbone_decay = {n.removeprefix("backbone.") for n in decay if n.startswith("backbone.")}
    assert backbone_decay == {n for n, _ in model.backbone.named_parameters()
                              if n.startswith("products.") or (n.startswith("interactions.") and n.endswith(".linear.weight"))}
    assert "backbone.node_embedding.linear.weight" in no_decay
    assert any("conv_tp_weights" in n for n in no_decay) and any("linear_up" in n for n in no_decay)


def test_frozen_backbone_and_bad_decay():
    model = Regression(SchNet(width=16, num_filters=16, num_interactions=1, num_rbf=8), targets=["homo"], freeze_backbone=True)
    groups = parameter_groups(model, 0.1, only=model.trainable_parameters())
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.heads.parameters()}
    with pytest.raises(ValueError, match="--model.weight_decay"):
        parameter_groups(model, -1.0)
