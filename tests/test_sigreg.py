"""SIGReg: value on Gaussian vs collapsed embeddings, determinism, and exact DDP equivalence (gloo, 2 CPU processes)."""

from __future__ import annotations

import math
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atomzoo.objectives.sigreg import SIGReg, random_directions, sigreg


def test_gaussian_is_near_zero_collapsed_and_low_rank_are_large():
    torch.manual_seed(0)
    gaussian = sigreg(torch.randn(4096, 64), num_slices=512, step=3)
    # finite-sample expectation for exact N(0, I): sqrt(2 pi) (1 - 1/sqrt(3)) ~= 1.06, independent of N
    assert gaussian.item() < 2.0
    collapsed = sigreg(torch.full((4096, 64), 0.3), num_slices=512, step=3)
    low_rank = sigreg(torch.randn(4096, 2) @ torch.randn(2, 64) / 8.0, num_slices=512, step=3)
    shifted = sigreg(torch.randn(4096, 64) + 1.0, num_slices=512, step=3)
    assert collapsed.item() > 1000 * gaussian.item()
    assert low_rank.item() > 100 * gaussian.item()
    assert shifted.item() > 50 * gaussian.item()
    expected = math.sqrt(2 * math.pi) * (1 - 1 / math.sqrt(3))
    assert abs(gaussian.item() - expected) < 0.5


def test_directions_are_unit_and_seeded_by_step():
    a = random_directions(32, 64, step=5)
    assert a.shape == (32, 64) and torch.allclose(a.norm(dim=0), torch.ones(64), atol=1e-6)
    assert torch.equal(a, random_directions(32, 64, step=5))
    assert not torch.allclose(a, random_directions(32, 64, step=6))


def test_float32_under_low_precision_input_and_gradient():
    z = torch.randn(256, 16, dtype=torch.bfloat16, requires_grad=True)
    value = SIGReg(num_slices=64)(z, step=1)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad.float()).all()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        full = _data()
        n = full.size(0) // world
        half = full[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        value = sigreg(half, num_slices=128, step=11)
        value.backward()
        torch.save({"value": value.detach(), "grad": half.grad}, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(96, 16, generator=g) * 1.5 + 0.3  # not N(0, I): a non-trivial value and gradient


def test_two_process_gloo_equals_single_process_on_concatenated_batch(tmp_path):
    """Statistic identical on every rank and equal to the 1-process value on the whole batch; the
    gradient a rank gets on its rows is world_size x the 1-process gradient (the autograd all-reduce
    sums the ranks' identical upstream gradients), so after DDP's gradient averaging it is exact."""
    world = 2
    path = str(tmp_path / "out")
    mp.spawn(_worker, args=(world, _free_port(), path), nprocs=world, join=True)
    full = _data().requires_grad_(True)
    reference = sigreg(full, num_slices=128, step=11)
    reference.backward()
    n = full.size(0) // world
    for rank in range(world):
        out = torch.load(f"{path}.{rank}")
        assert torch.allclose(out["value"], reference.detach(), rtol=1e-5, atol=1e-5)
        expected = full.grad[rank * n : (rank + 1) * n]
        assert torch.allclose(out["grad"] / world, expected, rtol=1e-4, atol=1e-6)
