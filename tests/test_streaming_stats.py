"""Training statistics in one streaming pass (atomzoo.nn.statistics.StreamingTargetStatistics,
AtomsDataModule.training_statistics / neighbour_statistics): the numbers of the whole-split
computation, least-squares atom references, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from atomzoo.nn.statistics import MAX_Z, StatisticsRequest, StreamingTargetStatistics, TargetInfo


def whole_split(infos, labels, counts, pooling, atomref) -> tuple[np.ndarray, np.ndarray]:
    """The statistics as they were computed before streaming: residuals of the whole split in memory,
    mean (per atom for sum pooling), then the standard deviation (ddof=1) of the spread."""
    labels, counts = np.asarray(labels, np.float64), np.asarray(counts, np.float64)
    n = counts.sum(1)
    mean, std = [], []
    for k, info in enumerate(infos):
        table = np.zeros(counts.shape[1])
        if atomref and info.atomref is not None:
            table[: len(info.atomref)] = info.atomref
        residual = labels[:, k] - counts @ table
        if pooling.get(info.name, info.pooling) == "sum":
            m = (residual / n).mean()
            spread = residual - n * m
        else:
            m = residual.mean()
            spread = residual - m
        mean.append(m)
        std.append(spread.std(ddof=1))
    return np.array(mean), np.array(std)


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, MAX_Z + 1))
    for z, high in ((1, 20), (6, 10), (7, 4), (8, 4), (9, 2)):
        counts[:, z] = rng.integers(0 if z != 6 else 1, high, n)
    per_element = np.zeros(MAX_Z + 1)
    per_element[[1, 6, 7, 8, 9]] = [-13.6, -1029.0, -1485.0, -2042.0, -2713.0]  # eV, energies of ~1e4
    energy = counts @ per_element + rng.normal(0, 2.0, n)
    gap = rng.normal(6.8, 1.3, n)
    return counts, np.stack([energy, gap], 1), per_element


INFOS = [TargetInfo("energy", "eV", "sum", atomref=tuple([0.0] * 6 + [-1028.0])),  # a rough reference for C only
         TargetInfo("gap", "eV", "mean")]


@pytest.mark.parametrize("pooling", [{}, {"energy": "mean", "gap": "sum"}])
@pytest.mark.parametrize("atomref", [True, False])
def test_chunks_give_the_whole_split_numbers(pooling, atomref):
    counts, labels, _ = synthetic(20_000)
    expected_mean, expected_std = whole_split(INFOS, labels, counts, pooling, atomref)
    accumulator = StreamingTargetStatistics(INFOS, pooling, atomref)
    for start in range(0, 20_000, 1_777):  # uneven chunks, the last one short
        accumulator.update(labels[start : start + 1_777], counts[start : start + 1_777])
    stats = accumulator.result()
    assert stats.num_train == 20_000
    np.testing.assert_allclose(stats.mean.numpy(), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(stats.std.numpy(), expected_std, rtol=1e-9)
    assert stats.pooling == tuple(pooling.get(i.name, i.pooling) for i in INFOS)
    assert float(stats.atomref[0, 6]) == (-1028.0 if atomref else 0.0)


def test_least_squares_atom_references_from_normal_equations():
    counts, labels, per_element = synthetic(5_000, seed=1)
    accumulator = StreamingTargetStatistics(INFOS)
    for start in range(0, 5_000, 999):
        accumulator.update(labels[start : start + 999], counts[start : start + 999])
    fitted = accumulator.least_squares_atomref()
    present = [1, 6, 7, 8, 9]
    reference = np.linalg.lstsq(counts[:, present], labels, rcond=None)[0]  # the whole matrix at once
    np.testing.assert_allclose(fitted[:, present].numpy(), reference.T, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(fitted[0, present].numpy(), per_element[present], atol=0.1)  # the truth, to noise
    assert torch.count_nonzero(fitted[:, [0, 2, 3, 4, 5, 10]]) == 0  # absent elements: zero


def test_an_empty_or_single_structure_split():
    accumulator = StreamingTargetStatistics(INFOS)
    stats = accumulator.result()
    assert torch.isnan(stats.mean).all() and torch.equal(stats.std, torch.ones(2))
    counts, labels, _ = synthetic(1)
    accumulator.update(labels, counts)
    assert torch.equal(accumulator.result().std, torch.ones(2))
    with pytest.raises(ValueError, match="do not fit 2 targets"):
        accumulator.update(labels[:, :1], counts)


def test_datamodule_pass_equals_the_whole_split_in_bounded_memory(qm9):
    """QM9's training split (110,000 molecules; U0 with atom references): the streamed statistics are
    those of the whole split in memory, and the pass never holds the [n_train, 101] element counts
    (89 MB): numpy's allocations (traced by tracemalloc) peak below a fifth of that."""
    request = StatisticsRequest(targets=("homo", "u0"))
    infos = qm9.targets_info()
    expected_mean, expected_std = whole_split(infos, qm9.training_labels(), qm9.training_element_counts(MAX_Z), {}, True)
    tracemalloc.start()
    accumulator = qm9.training_statistics(request, chunk=5_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = accumulator.result()
    np.testing.assert_allclose(stats.mean.numpy(), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(stats.std.numpy(), expected_std, rtol=1e-9)
    assert stats.num_train == qm9.splits["train"].size
    full_matrix = qm9.splits["train"].size * (MAX_Z + 1) * 8
    assert peak < full_matrix / 5, (peak, full_matrix)
    summary = qm9.data_summary(request).statistics  # what a model is handed: the same pass (50,000 a chunk)
    torch.testing.assert_close(summary.std, stats.std, rtol=1e-12, atol=0)
    torch.testing.assert_close(summary.mean, stats.mean, rtol=1e-12, atol=0)


def test_neighbour_statistics_count_what_ase_counts(tmp_path):
    from ase.build import molecule
    from ase.io import write
    from ase.neighborlist import neighbor_list

    from atomzoo.datamodules import ASEFileDataModule

    frames = [molecule(name) for name in ("CH4", "C6H6", "CH3CH2OH", "H2O", "C2H6", "CH3COOH")]
    for k, atoms in enumerate(frames):
        atoms.info["energy"] = -float(k)
    write(tmp_path / "m.extxyz", frames)
    dm = ASEFileDataModule(path=str(tmp_path / "m.extxyz"), cache_dir=str(tmp_path / "cache"), forces_key=None,
                           num_train=1.0, num_val=0.0, num_test=0.0)  # fmt: skip
    dm.setup()
    pairs = [len(neighbor_list("i", atoms, 2.0)) for atoms in frames]  # directed pairs within 2 A
    stats = dm.neighbour_statistics(2.0)
    assert stats["mean_neighbours"] == pytest.approx(sum(pairs) / sum(len(a) for a in frames))
    assert stats["max_edges"] == max(pairs) and stats["mean_edges"] == pytest.approx(np.mean(pairs))


ENERGY_ONLY = [TargetInfo("energy", "eV", "sum"), TargetInfo("gap", "eV", "mean")]  # no dataset table


def test_fitted_atom_references_for_energies_without_a_table():
    """A sum-pooled target the dataset has no references for gets least-squares "E0s" (a second pass):
    the residual's spread is then the noise (2 eV), not the composition's (hundreds of eV); a mean-pooled
    target and a target with a dataset table are left alone; fit_atomref=False keeps the mean per atom."""
    from atomzoo.nn.statistics import compute_target_statistics

    counts, labels, per_element = synthetic(5_000, seed=2)
    stats = compute_target_statistics(ENERGY_ONLY, labels, counts)
    present = [1, 6, 7, 8, 9]
    reference = np.linalg.lstsq(counts[:, present], labels[:, 0], rcond=None)[0]
    assert stats.fitted_atomref == ("energy",)
    np.testing.assert_allclose(stats.atomref[0, present].numpy(), reference, rtol=1e-8)
    assert torch.count_nonzero(stats.atomref[1]) == 0  # the gap: mean pooling, no references
    assert abs(float(stats.mean[0])) < 0.05 and 1.8 < float(stats.std[0]) < 2.2  # the 2 eV noise
    plain = compute_target_statistics(ENERGY_ONLY, labels, counts, fit_atomref=False)
    assert plain.fitted_atomref == () and torch.count_nonzero(plain.atomref) == 0 and float(plain.std[0]) > 50
    tabulated = compute_target_statistics(INFOS, labels, counts)  # energy has a (C-only) dataset table
    assert tabulated.fitted_atomref == () and float(tabulated.atomref[0, 6]) == -1028.0
    # streamed in uneven chunks, two passes: the same numbers
    first = StreamingTargetStatistics(ENERGY_ONLY)
    for start in range(0, 5_000, 777):
        first.update(labels[start : start + 777], counts[start : start + 777])
    second = first.refitted()
    for start in range(0, 5_000, 1_234):
        second.update(labels[start : start + 1_234], counts[start : start + 1_234])
    streamed = second.result()
    torch.testing.assert_close(streamed.atomref, stats.atomref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(streamed.std, stats.std, rtol=1e-9, atol=0)
    assert streamed.fitted_atomref == ("energy",)
    # labels missing (a label-free file read for prediction: NaN): nothing to fit, no error
    missing = np.full_like(labels, np.nan)
    assert compute_target_statistics(ENERGY_ONLY, missing, counts).fitted_atomref == ()
    assert StreamingTargetStatistics(ENERGY_ONLY).fittable() == []  # nothing seen yet


def test_regression_takes_and_logs_the_fitted_references(tmp_path, caplog):
    """A model trained on an ASE file's energies starts from least-squares E0s fitted on its training
    split, logged in one line with the values per element."""
    import logging

    from ase.build import molecule
    from ase.io import write

    from atomzoo.backbones import SchNet
    from atomzoo.datamodules import ASEFileDataModule
    from atomzoo.objectives import Regression

    e0 = {1: -13.6, 6: -1029.0, 8: -2042.0}
    frames = [molecule(name) for name in ("CH4", "C6H6", "CH3CH2OH", "H2O", "C2H6", "CH3COOH", "CH3OH", "H2CO")]
    for k, atoms in enumerate(frames):
        atoms.info["energy"] = sum(e0[z] for z in atoms.numbers) + 0.01 * k
    write(tmp_path / "m.extxyz", frames)
    dm = ASEFileDataModule(path=str(tmp_path / "m.extxyz"), cache_dir=str(tmp_path / "cache"), forces_key=None,
                           num_train=1.0, num_val=0.0, num_test=0.0)  # fmt: skip
    dm.setup()
    model = Regression(SchNet(width=16, num_filters=16, num_interactions=1), targets=["energy"])
    with caplog.at_level(logging.INFO):
        model.on_data_summary(dm.data_summary(model.statistics_request()))
    for z, value in e0.items():
        assert float(model.atomref_table[0, z]) == pytest.approx(value, abs=0.05)
    line = next(r.getMessage() for r in caplog.records if "fitted by least squares" in r.getMessage())
    assert line.startswith("zoo: atomref of energy fitted by least squares on 8 training structures (eV per atom): ")
    parsed = dict(item.split() for item in line.split("per atom): ", 1)[1].split(" (--model")[0].split(", "))
    assert set(parsed) == {"H", "C", "O"} and float(parsed["C"]) == pytest.approx(-1029.0, abs=0.05)
    off = Regression(SchNet(width=16, num_filters=16, num_interactions=1), targets=["energy"], fit_atomref=False)
    off.on_data_summary(dm.data_summary(off.statistics_request()))
    assert torch.count_nonzero(off.atomref_table) == 0
