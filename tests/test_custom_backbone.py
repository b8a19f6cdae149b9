"""A user's backbone from outside the zoo's packages trains through the CLI with every objective."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from atomzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = sorted(p for p in (ROOT / "configs/objectives").glob("*.yaml") if p.stem != "finetune")


@pytest.fixture()
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    yield
    sys.modules.pop("custom_backbone", None)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda p: p.stem)
def test_custom_backbone_trains_with_every_objective(objective, cache_dir, tmp_path, examples_on_path):
    supervised = objective.stem == "regression"
    cli = run([
        "fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(objective),
        "--model.backbone.class_path", "custom_backbone.DistanceMPNN",
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_layers", "1",
        "--data.targets", "[homo]" if supervised else "null",
        "--data.train_size", "32", "--data.batch_size", "8", "--data.eval_batch_size", "8",
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
    ])
    assert type(cli.model.backbone).__name__ == "DistanceMPNN"
    if objective.stem == "scd":  # the CLI gave it conditioning (its width) and scd.yaml's drop-path reached it
        assert cli.model.backbone.condition_dim == 16 and cli.model.backbone.drop_path.p == pytest.approx(0.1)
    assert cli.trainer.global_step == 3
    loss = cli.trainer.callback_metrics.get("train/loss")
    assert loss is not None and torch.isfinite(loss)


def test_custom_backbone_passes_the_contract_checks(examples_on_path):
    """What examples/custom_backbone.py's docstring tells users to run, in three lines."""
    from atomzoo.testing import check_backbone
    from custom_backbone import DistanceMPNN

    report = check_backbone(lambda: DistanceMPNN(width=16, num_layers=2))
    assert report == {"shapes": "ok", "symmetries": "ok", "forces": "ok",
                      "conditioning": "no condition (condition_dim=0)", "masking": "ok"}
