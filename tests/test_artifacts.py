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


@pytest.mark.parametrize("kind", ["displacement", "duplicate_atoms", "label_noise"])
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
        else:
            changed.append(not torch.equal(a.y, b.y))
    assert sum(changed) == 100
    # static: the same molecules, the same way, every epoch
    again = dm.dataset("train")
    assert all(torch.equal(train[i].pos, again[i].pos) and torch.equal(train[i].y, again[i].y) for i in range(20))
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
