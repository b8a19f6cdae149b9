"""SCD's condition dropout drops the condition of ``condition_dropout`` of the molecules (0.2: one in five
sees only the mask token), not of the rest (issue 31: ``< p`` turned into ``> p`` -- 80 % dropped --
passed all 35 SCD and conditioning tests)."""

import torch
from torch_geometric.data import Batch, Data

from atomzoo.backbones import PaiNN
from atomzoo.objectives import SelfConditionedDenoising


def dropped_fraction(p: float, molecules: int = 400) -> float:
    torch.manual_seed(0)
    model = SelfConditionedDenoising(PaiNN(width=8, num_interactions=1, num_rbf=4, cutoff=3.0, condition_dim=8),
                                     condition_dropout=p).train()  # fmt: skip
    seen = []
    denoise = model.denoise

    def spy(noisy, condition, drop=None):
        seen.append(torch.zeros(condition.size(0), dtype=torch.bool) if drop is None else drop)
        return denoise(noisy, condition, drop)

    model.denoise = spy
    batch = Batch.from_data_list([Data(z=torch.tensor([1, 1]), pos=torch.tensor([[0.0, 0, 0], [0, 0, 0.74]]))
                                  for _ in range(molecules)])  # fmt: skip
    model.compute_loss(batch, torch.Generator().manual_seed(1))
    (drop,) = seen
    assert drop.shape == (molecules,)
    return float(drop.float().mean())


def test_condition_dropout_drops_that_fraction_of_the_molecules():
    assert 0.14 < dropped_fraction(0.2) < 0.26  # 400 molecules: binomial sd 0.02
    assert dropped_fraction(0.0) == 0.0 and dropped_fraction(1.0) == 1.0
