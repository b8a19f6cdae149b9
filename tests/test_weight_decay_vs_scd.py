"""How atomzoo's weight-decay groups differ from SCD's (docs/objectives.md, issue 31 "Docs that drift").

SCD (TyJPerez/SelfConditionedDenoisingAtoms, ``models/ET_models/scd_model.py``,
``get_parameter_groups``) decides by parameter name; atomzoo (``atomzoo.objectives.param_groups``) by
module type and shape. On SCD's own adaLN block (``models/modules/conditioning.py``, ``adaLN2``: a
LayerNorm inside ``nn.Sequential``) and an ET-style attention layer norm and trainable RBF, SCD's rule
decays the LayerNorm gains and the RBF centres, atomzoo's does not; on the weight matrices both agree.
"""

import torch
from torch import nn

from atomzoo.objectives.param_groups import decayed_parameters


def scd_decays(name: str, weight_decay_on_head: bool = False) -> bool:
    """SCD's ``get_parameter_groups`` rule for one parameter name (transcribed)."""
    no_wd_flags = ["bias", "norm", "alpha"]
    no_wd_modules = ["mask_token", "prior_model", ".embedding.", "neighbor_embedding_module", "_norm", ".norm.",
                     "alpha"]  # fmt: skip
    if not weight_decay_on_head:
        no_wd_modules.append("scalar_head")
    name = name.lower()
    return not (any(name.endswith(f) for f in no_wd_flags) or any(m in name for m in no_wd_modules))


class SCDLikeBlock(nn.Module):
    """SCD's adaLN2 layout (x_norm, fc = Linear, SiLU, LayerNorm, Linear; alpha), an ET attention layer's
    ``layernorm`` and trainable RBF ``means`` / ``betas``, and a ``scalar_head``."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.x_norm = nn.LayerNorm(dim)
        self.fc = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.LayerNorm(dim), nn.Linear(dim, 3 * dim))
        self.alpha_x = nn.Parameter(torch.tensor(0.2))
        self.layernorm = nn.LayerNorm(dim)
        self.means = nn.Parameter(torch.linspace(0, 5, dim))
        self.betas = nn.Parameter(torch.ones(dim))
        self.scalar_head = nn.Linear(dim, 1)


def test_scd_decays_sequential_layernorm_gains_and_rbf_parameters_atomzoo_does_not():
    block = SCDLikeBlock()
    ours = {n for n, p in block.named_parameters() if any(p is q for q in decayed_parameters(block))}
    theirs = {n for n, _ in block.named_parameters() if scd_decays(n)}
    assert ours & theirs == {"fc.0.weight", "fc.3.weight"}  # the weight matrices: both decay them
    assert theirs - ours == {"fc.2.weight", "layernorm.weight", "means", "betas"}  # SCD only
    assert ours - theirs == {"scalar_head.weight"}  # atomzoo decays the head's weight matrix
    assert {"x_norm.weight", "alpha_x", "fc.2.bias"}.isdisjoint(ours | theirs)  # neither decays these
