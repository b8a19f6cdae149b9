"""The learning rate every optimizer step of a real ``Trainer.fit`` uses: linear warm-up, then cosine
to ``min_lr_ratio x lr`` at the end of the run, counted in optimizer steps (not micro-batches), the
same for every parameter group; ``plateau`` warms up the same way and then stays flat."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from atomzoo.backbones import SchNet
from atomzoo.objectives import Regression


class LearningRates(L.Callback):
    """The learning rate of every parameter group at each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def expected(step: int, lr: float, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(qm9, scheduler: str, steps: int, accumulate: int = 1) -> list[list[float]]:
    torch.manual_seed(0)
    backbone = SchNet(width=8, num_filters=8, num_interactions=1, num_rbf=8, cutoff=4.0)
    model = Regression(backbone, targets=["homo", "u0"], lr=1e-3, warmup_steps=4, min_lr_ratio=0.1,
                       scheduler=scheduler, weight_decay=0.01)
    lrs = LearningRates()
    trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, limit_train_batches=64,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[lrs])
    trainer.fit(model, datamodule=qm9)
    assert trainer.global_step == steps
    return lrs.lrs


@pytest.mark.parametrize("accumulate", [1, 2])
def test_warmup_then_cosine_per_optimizer_step(qm9, accumulate):
    lrs = fit(qm9, "cosine", steps=12, accumulate=accumulate)
    assert len(lrs) == 12  # one entry per optimizer step, also under gradient accumulation
    for step, groups in enumerate(lrs):
        assert len(groups) == 2 and groups[0] == groups[1]  # decay and no-decay groups
        assert groups[0] == pytest.approx(expected(step, 1e-3, 4, 12, 0.1), rel=1e-9), step
    assert lrs[3][0] == pytest.approx(1e-3)  # peak at the last warm-up step
    assert lrs[-1][0] < 0.2e-3  # close to the floor at the end


def test_plateau_warms_up_then_holds(qm9):
    lrs = fit(qm9, "plateau", steps=8)
    assert [g[0] for g in lrs[:4]] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    assert [g[0] for g in lrs[4:]] == pytest.approx([1e-3] * 4)
