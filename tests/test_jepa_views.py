"""JEPA's two views: the context encoder sees the corrupted structure (noised, masked), the target
encoder the clean one -- for the EMA target and for SIGReg's shared encoder (issue 31: giving the
target the corrupted context passed every JEPA test)."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from atomzoo.backbones import SchNet
from atomzoo.objectives import JEPA


def record_inputs(module, seen: list) -> None:
    forward = module.forward

    def spy(data, *args, **kwargs):
        seen.append((data.pos.detach().clone(), getattr(data, "atom_mask", None)))
        return forward(data, *args, **kwargs)

    module.forward = spy


@pytest.mark.parametrize("anti_collapse", ["ema", "sigreg"])
def test_the_target_view_is_the_clean_structure(anti_collapse):
    torch.manual_seed(0)
    model = JEPA(SchNet(width=16, num_filters=16, num_interactions=1, num_rbf=8, cutoff=4.0),
                 anti_collapse=anti_collapse, mask_ratio=0.3, sigreg_slices=16).train()  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    batch = Batch.from_data_list([Data(z=torch.tensor([6, 1, 1, 8]), pos=torch.randn(4, 3, generator=gen))
                                  for _ in range(6)])  # fmt: skip
    seen: list = []
    target = model.backbone if anti_collapse == "sigreg" else model.target_backbone
    record_inputs(target, seen)
    if anti_collapse == "ema":
        context_seen: list = []
        record_inputs(model.backbone, context_seen)
    model.compute_loss(batch, torch.Generator().manual_seed(1))
    clean = [(pos, mask) for pos, mask in seen if torch.equal(pos, batch.pos)]
    assert len(clean) == 1 and clean[0][1] is None  # one pass on the clean, unmasked structure
    context = [(pos, mask) for pos, mask in (context_seen if anti_collapse == "ema" else seen)
               if not torch.equal(pos, batch.pos)]  # fmt: skip
    assert len(context) == 1 and context[0][1] is not None and bool(context[0][1].any())  # noised and masked
