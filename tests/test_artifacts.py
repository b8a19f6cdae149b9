"""Dataset artifacts (``atomzoo.datamodules.artifacts``): deliberate training-set corruption for noise-robustness studies."""

import numpy as np
import pytest
import torch

from atomzoo.datamodules import QM9DataModule


def make(cache_dir, kind, rate=0.5, targets=("homo",)):
    dm = QM9DataModule(targets=list(targets), cache_dir=str(cache_dir), train_size=200, num_val=50, num_test=50,
                       num_train=200, corruption=kind, corruption_rate=rate, corruption_scale=0.5)
    dm.setup()
    clean = QM9DataModule(targets=list(targets), cache_dir=str(cache_dir), num_train=200, num_val=50, num_test=50)
    clean.setup()
    return dm, clean


@pytest.mark.parametrize("kind", ["displacement", "duplicate_atoms", "label_noise", "missing_hydrogens", "wrong_element"])
def test_fixed_fraction_of_training_set_is_corrupted(cache_dir, kind):
    dm, clean = make(cache_dir, kind)
    train, ref = dm.dataset("train"), clean.dataset("train")
    changed = []
    for i in range(len(train)):
        a, b = train[i], ref[i]
        if kind == "displacement":
            changed.append(not torch.equal(a.pos, b.pos))
            if changed[-1]:
                assert 0.3 < (a.pos - b.pos).std().item() < 0.7  # scale 0.5 A
        elif kind == "duplicate_atoms":
            changed.append(a.z.numel() == b.z.numel() + 1)
            if changed[-1]:
                assert torch.equal(a.z[:-1], b.z) and (a.pos[-1:] - a.pos[:-1]).norm(dim=-1).min() == pytest.approx(0.05, abs=1e-4)
        elif kind == "missing_hydrogens":
            changed.append(a.z.numel() < b.z.numel())
            if changed[-1]:  # exactly the heavy atoms remain, in order, at their positions
                heavy = b.z != 1
                assert torch.equal(a.z, b.z[heavy]) and torch.equal(a.pos, b.pos[heavy]) and (a.z != 1).all()
                assert a.num_nodes == a.z.numel() and torch.equal(a.y, b.y)  # PyG counts the atoms left
        elif kind == "wrong_element":
            changed.append(not torch.equal(a.z, b.z))
            if changed[-1]:  # one heavy atom relabelled to another of C, N, O, F; geometry untouched
                (k,) = torch.nonzero(a.z != b.z).reshape(-1).tolist()
                assert b.z[k] != 1 and a.z[k].item() in (6, 7, 8, 9) and torch.equal(a.pos, b.pos)
        else:
            changed.append(not torch.equal(a.y, b.y))
    # every QM9 molecule has a hydrogen and a heavy atom, so every selected molecule changes
    assert sum(changed) == 100
    # static: the same molecules, the same way, every epoch
    again = dm.dataset("train")
    assert all(torch.equal(train[i].pos, again[i].pos) and torch.equal(train[i].z, again[i].z)
               and torch.equal(train[i].y, again[i].y) for i in range(20))
    # validation and test are never corrupted
    for split in ("val", "test"):
        assert all(torch.equal(dm.dataset(split)[i].pos, clean.dataset(split)[i].pos) for i in range(10))


def test_label_noise_scale_follows_label_std(cache_dir):
    dm, clean = make(cache_dir, "label_noise", rate=1.0)
    noise = np.array([(dm.dataset("train")[i].y - clean.dataset("train")[i].y).item() for i in range(200)])
    label_std = np.std([clean.dataset("train")[i].y.item() for i in range(200)])
    assert noise.std() == pytest.approx(0.5 * label_std, rel=0.2)


def test_bad_corruption_options():
    with pytest.raises(ValueError, match="--data.corruption"):
        QM9DataModule(corruption="garble")
    with pytest.raises(ValueError, match="corruption_rate"):
        QM9DataModule(corruption="displacement", corruption_rate=1.5)


def test_atom_artifacts_keep_forces_with_their_atoms():
    """Per-atom labels follow the atoms a corruption duplicates or removes."""
    from torch_geometric.data import Data

    from atomzoo.datamodules.artifacts import Corruption

    z = torch.tensor([6, 1, 1, 8])
    pos = torch.arange(12.0).reshape(4, 3)
    forces = -pos
    data = Corruption("missing_hydrogens", 1.0).apply(Data(z=z, pos=pos, forces=forces), 0, None)
    assert data.z.tolist() == [6, 8] and torch.equal(data.forces, -data.pos) and data.pos[1].tolist() == [9.0, 10.0, 11.0]
    data = Corruption("duplicate_atoms", 1.0).apply(Data(z=z, pos=pos, forces=forces), 3, None)
    assert data.z.numel() == 5 and torch.equal(data.forces[-1], data.forces[int(torch.nonzero(
        (data.pos[:-1] - data.pos[-1]).norm(dim=-1) < 0.1).reshape(-1)[0])])
    hydrogen = Corruption("missing_hydrogens", 1.0).apply(Data(z=torch.tensor([1, 1]), pos=pos[:2]), 0, None)
    assert hydrogen.z.tolist() == [1, 1]  # an all-hydrogen molecule keeps its atoms
