"""Unit tests of the shared adaLN conditioning module (zoo/nn/conditioning.py)."""

from __future__ import annotations

import pytest
import torch

from atomzoo.nn.conditioning import AdaptiveScalarNorm, condition_modules

F, C = 6, 3


def _inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    x = torch.randn(6, F, generator=gen, dtype=dtype)
    u = torch.randn(6, F, generator=gen, dtype=dtype)
    c = torch.randn(3, C, generator=gen, dtype=dtype)
    return x, u, c, batch


def _perturbed(seed: int = 1) -> AdaptiveScalarNorm:
    """A module whose zero-initialised projection was moved, as training would."""
    torch.manual_seed(seed)
    module = AdaptiveScalarNorm(F, C).double()
    with torch.no_grad():
        module.mlp[-1].weight.normal_(0.0, 0.5)
        module.mlp[-1].bias.normal_(0.0, 0.5)
    return module


def test_identity_at_init_and_for_none():
    module = AdaptiveScalarNorm(F, C).double()
    x, u, c, batch = _inputs()
    assert torch.equal(module(x, u, c, batch), u)
    assert module(x, u, None, batch) is u
    shift, scale, gate = module.modulation(x, c, batch)
    for t in (shift, scale, gate):
        assert t.shape == (6, F) and torch.count_nonzero(t) == 0
    assert module.alpha.item() == pytest.approx(0.2)


def test_only_gate_gets_gradient_at_init():
    module = AdaptiveScalarNorm(F, C).double()
    x, u, c, batch = _inputs()
    (module(x, u, c, batch) * torch.randn_like(u)).sum().backward()
    grad = module.mlp[-1].weight.grad  # rows: [shift | scale | gate]
    assert torch.count_nonzero(grad[: 2 * F]) == 0
    assert grad[2 * F :].abs().sum() > 1e-6


def test_trained_module_modulates_per_molecule():
    module = _perturbed()
    x, u, c, batch = _inputs()
    out = module(x, u, c, batch)
    assert (out - u).abs().max() > 1e-3
    c2 = c.clone()
    c2[1] += 1.0  # change molecule 1's condition only
    out2 = module(x, u, c2, batch)
    changed = (out2 - out).abs().amax(dim=1) > 1e-9
    assert changed.tolist() == [False, False, False, True, True, False]


def test_matches_formula():
    module = _perturbed(3)
    x, u, c, batch = _inputs()
    shift, scale, gate = module.modulation(x, c, batch)
    ln = torch.nn.functional.layer_norm
    expected = u + torch.tanh(module.alpha * gate) * (ln(u, (F,), eps=1e-6) * (1 + scale) + shift)
    torch.testing.assert_close(module(x, u, c, batch), expected, rtol=0, atol=1e-12)
    # the MLP input is [c_atom, LN(x)] with LN(x) detached: no gradient reaches x through it
    x.requires_grad_(True)
    module(x, u, c, batch).sum().backward()
    assert x.grad is None or torch.count_nonzero(x.grad) == 0


def test_condition_modules_factory_and_errors():
    assert condition_modules(3, F, 0) is None
    mods = condition_modules(3, F, C)
    assert isinstance(mods, torch.nn.ModuleList) and len(mods) == 3
    assert all(isinstance(m, AdaptiveScalarNorm) for m in mods)
    with pytest.raises(ValueError):
        condition_modules(3, F, -1)
    x, u, c, batch = _inputs()
    with pytest.raises(ValueError):
        mods[0].double()(x[:, :4], u[:, :4], c, batch)
