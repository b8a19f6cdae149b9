import itertools

import pytest
import torch

from atomzoo.nn.graph import build_graph, radius_graph


def brute_force(pos, batch, cutoff):
    pairs = set()
    for i, j in itertools.permutations(range(pos.size(0)), 2):
        if batch[i] == batch[j] and torch.linalg.norm(pos[i] - pos[j]) < cutoff:
            pairs.add((j, i))
    return pairs


def test_radius_graph_matches_brute_force():
    torch.manual_seed(0)
    counts = [5, 1, 7, 3]
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    pos = torch.randn(batch.numel(), 3) * 2.0
    edge_index = radius_graph(pos, batch, cutoff=2.5)
    got = {(int(s), int(d)) for s, d in edge_index.T}
    assert got == brute_force(pos, batch, 2.5)
    assert len(got) > 0
    # no edge crosses molecules, no self loops, both directions present
    assert torch.all(batch[edge_index[0]] == batch[edge_index[1]])
    assert torch.all(edge_index[0] != edge_index[1])
    assert {(d, s) for s, d in got} == got


def test_isolated_atom_has_no_edges():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [20.0, 0, 0]])
    edge_index = radius_graph(pos, torch.zeros(3, dtype=torch.long), cutoff=5.0)
    assert 2 not in edge_index.flatten().tolist()
    assert edge_index.size(1) == 2


def test_neighbour_cap_is_never_silent():
    pos = torch.randn(10, 3) * 0.1
    batch = torch.zeros(10, dtype=torch.long)
    with pytest.raises(RuntimeError, match="max_num_neighbors"):
        radius_graph(pos, batch, cutoff=5.0, max_num_neighbors=4)
    with pytest.warns(UserWarning, match="max_num_neighbors"):
        edge_index = radius_graph(pos, batch, cutoff=5.0, max_num_neighbors=4, on_overflow="warn")
    assert edge_index.size(1) == 90  # all edges kept


def test_edge_vectors_are_differentiable():
    pos = torch.randn(4, 3, requires_grad=True)
    graph = build_graph(pos, torch.zeros(4, dtype=torch.long), cutoff=10.0)
    graph.length.sum().backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0
    assert torch.allclose(graph.vec, pos[graph.src] - pos[graph.dst])
