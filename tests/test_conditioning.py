"""Unit tests of the shared adaLN conditioning module (zoo/nn/conditioning.py)."""

from __future__ import annotations

import pytest
import torch

from atomzoo.nn.conditioning import AdaptiveLayerNorm, ConditionInput, LayerConditioning, condition_modules

F, C = 6, 3


def _inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    x = torch.randn(6, F, generator=gen, dtype=dtype)
    c = torch.randn(3, C, generator=gen, dtype=dtype)
    return x, c, batch


def test_matches_reference_formula():
    """h = LN(x); [shift, scale, gate] = MLP([c, h]);
    x_mod = tanh(beta h)(1 + scale)/beta + shift; g = tanh(alpha gate); alpha = beta = 0.2 at init."""
    torch.manual_seed(0)
    module = AdaptiveLayerNorm(F, C).double()
    x, c, batch = _inputs()
    assert module.alpha.item() == pytest.approx(0.2) and module.modulate.beta.item() == pytest.approx(0.2)
    x_mod, gate = module(x, c, batch)
    h = module.x_norm(x)
    shift, scale, g = module.mlp(torch.cat([c[batch], h], dim=-1)).chunk(3, dim=-1)
    beta, alpha = module.modulate.beta.detach(), module.alpha.detach()
    torch.testing.assert_close(x_mod, torch.tanh(beta * h) * (1 + scale) / beta + shift, rtol=0, atol=1e-12)
    torch.testing.assert_close(gate, torch.tanh(alpha * g), rtol=0, atol=1e-12)
    # unlike the SCD code, the MLP's input h is not detached: the gradient with respect to x (and so
    # the forces of a conditioned backbone) includes the path through the modulation, and equals
    # finite differences of the output
    x.requires_grad_(True)
    shift = module.modulation(module.x_norm(x), c, batch)[0]
    (grad,) = torch.autograd.grad(shift.sum(), x)
    assert torch.count_nonzero(grad) > 0
    h = 1e-6
    plus, minus = x.detach().clone(), x.detach().clone()
    plus[0, 1] += h
    minus[0, 1] -= h
    with torch.no_grad():
        numeric = (module.modulation(module.x_norm(plus), c, batch)[0].sum()
                   - module.modulation(module.x_norm(minus), c, batch)[0].sum()) / (2 * h)
    assert abs(float(numeric) - float(grad[0, 1])) < 1e-6


def test_not_inert_at_initialisation():
    """The last MLP layer is Xavier-initialised (reference), so at init every part -- shift, scale,
    gate, the condition itself -- gets gradient and the output depends on the condition."""
    torch.manual_seed(0)
    module = AdaptiveLayerNorm(F, C).double()
    x, c, batch = _inputs()
    assert module.mlp[-1].weight.abs().min() > 0 and torch.count_nonzero(module.mlp[-1].bias) == 0
    c.requires_grad_(True)
    x_mod, gate = module(x, c, batch)
    (x_mod * gate).sum().backward()
    grad = module.mlp[-1].weight.grad  # rows: [shift | scale | gate]
    for part in grad.split(F):
        assert part.abs().sum() > 1e-6
    assert (c.grad.abs().sum(dim=1) > 0).all()
    x2, g2 = module(x, c.detach() + torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), batch)
    assert (x2 - x_mod).abs().max() > 1e-3 and (g2 - gate).abs().max() > 1e-3


def test_condition_input_mask_token_and_norm():
    torch.manual_seed(0)
    cond = ConditionInput(C).double()
    assert cond.mask_token.abs().max() > 0  # Xavier-uniform, not zeros
    c = torch.randn(3, C, dtype=torch.float64)
    torch.testing.assert_close(cond(c, 3), torch.nn.functional.layer_norm(c, (C,), cond.norm.weight, cond.norm.bias))
    none = cond(None, 3)
    assert torch.equal(none, cond(cond.mask_token.detach().expand(3, -1).clone(), 3))
    dropped = cond.drop(c, torch.tensor([False, True, False]))
    assert torch.equal(dropped[1], cond.mask_token.detach()) and torch.equal(dropped[[0, 2]], c[[0, 2]])
    with pytest.raises(ValueError, match="condition must have shape"):
        cond(torch.zeros(2, C, dtype=torch.float64), 3)


def test_condition_modules_factory_and_errors():
    assert condition_modules(3, F, 0) is None
    mods = condition_modules(3, F, C)
    assert isinstance(mods, LayerConditioning) and len(mods) == 3
    assert all(isinstance(m, AdaptiveLayerNorm) for m in mods.layers)
    assert {"input.mask_token", "input.norm.weight", "layers.0.x_norm.weight", "layers.2.alpha"} <= set(mods.state_dict())
    with pytest.raises(ValueError):
        condition_modules(3, F, -1)
    x, c, batch = _inputs()
    with pytest.raises(ValueError, match=r"x must be \[N, 6\]"):
        mods[0].double()(x[:, :4], c, batch)
