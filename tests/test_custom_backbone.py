"""A user's backbone from outside the zoo's packages trains through the CLI with every objective, on
molecules and on periodic structures, and passes the contract checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from atomzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]
CU_BULK = ROOT / "tests/data/bad_inputs/periodic-cell/cu_bulk.extxyz"  # 40 periodic Cu structures, energies, forces
OBJECTIVES = sorted(p for p in (ROOT / "configs/objectives").glob("*.yaml") if p.stem != "finetune")


@pytest.fixture()
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    yield
    sys.modules.pop("custom_backbone", None)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda p: p.stem)
def test_custom_backbone_trains_with_every_objective(objective, cache_dir, tmp_path, examples_on_path):
    supervised = objective.stem == "regression" or objective.stem.startswith("finetune_")  # the reference recipes
    if objective.stem == "world_model":  # trains on windows of a time-ordered trajectory
        data = ["-c", str(ROOT / "configs/data/trajectories.yaml"),
                "--data.path", str(ROOT / "tests/data/trajectories/xtb_qm9_md.extxyz")]
    else:
        data = ["-c", str(ROOT / "configs/data/qm9.yaml"), "--data.targets", "[homo]" if supervised else "null",
                "--data.train_size", "32"]
    cli = run([
        "fit", *data, "-c", str(objective),
        "--model.backbone.class_path", "custom_backbone.DistanceMPNN",
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_interactions", "1",
        "--data.batch_size", "8", "--data.eval_batch_size", "8",
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
    from atomzoo.backbones.contract import check_backbone
    from custom_backbone import DistanceMPNN

    report = check_backbone(lambda: DistanceMPNN(width=16, num_interactions=2))
    assert report == {"shapes": "ok", "symmetries": "ok", "locality": "ok", "max_num_neighbors": "ok", "forces": "ok",
                      "periodic": "ok", "conditioning": "no condition (condition_dim=0)", "masking": "ok",
                      "drop_path": "ok", "element_embedding": "ok", "weight_decay": "generic rule",
                      "renamed_arguments": "none"}
    conditioned = check_backbone(lambda: DistanceMPNN(width=16, num_interactions=2, condition_dim=4))
    assert conditioned["conditioning"] == "ok" and conditioned["periodic"] == "ok"


def test_custom_backbone_trains_on_periodic_structures(cache_dir, tmp_path, examples_on_path):
    """The example declares periodic = True (all its geometry comes from self.graph): an ASE file of
    bulk copper (cell, pbc) trains through ``zoo fit`` with energies and forces, and the batches the
    backbone saw were periodic."""
    cli = run([
        "fit", "-c", str(ROOT / "configs/data/ase_file.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
        "--data.path", str(CU_BULK), "--data.batch_size", "4", "--data.eval_batch_size", "4",
        "--model.backbone.class_path", "custom_backbone.DistanceMPNN",
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_interactions", "1",
        "--model.backbone.init_args.cutoff", "4.0",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
    ])
    assert type(cli.model.backbone).__name__ == "DistanceMPNN" and cli.model.backbone.periodic
    assert cli.trainer.global_step == 2
    loss = cli.trainer.callback_metrics.get("train/loss")
    assert loss is not None and torch.isfinite(loss)
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert bool(batch.pbc.all())
    crystal = cli.model.backbone(batch).scalars
    molecule = batch.clone()
    molecule.pbc = torch.zeros_like(batch.pbc)
    assert not torch.allclose(cli.model.backbone(molecule).scalars, crystal)  # the images are used
