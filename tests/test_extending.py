"""Extending the zoo exactly as the docs say: a toy periodic backbone (docs/backbones.md), a toy objective
(docs/objectives.md, "Adding an objective") and a toy dataset (docs/datasets.md, "Adding a dataset"),
each taken verbatim from its page, written into a module of its own and trained through ``zoo fit`` by
class path -- the way a user plugs in code that lives outside the zoo's packages.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from atomzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CU_BULK = ROOT / "tests/data/bad_inputs/periodic-cell/cu_bulk.extxyz"  # 40 periodic Cu structures, energies, forces
QUIET = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar",
         "false", "--trainer.enable_model_summary", "false"]


def example(page: str, marker: str) -> str:
    """The python block after ``<!-- example: marker -->`` on ``docs/<page>``."""
    match = re.search(rf"<!-- example: {marker} -->\s*```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert match, f"docs/{page} lost its '{marker}' example block"
    return match.group(1)


def section_blocks(page: str, heading: str) -> list[str]:
    """Every python block of the section ``## heading`` of ``docs/<page>``."""
    section = (DOCS / page).read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """Write code into ``<tmp>/user_code/<name>.py``, put the folder on ``sys.path`` (as ``PYTHONPATH``
    would), and forget the modules afterwards."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written = []

    def write(name: str, code: str) -> str:
        (folder / f"{name}.py").write_text(code)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_toy_periodic_backbone_as_documented(user_module, cache_dir, tmp_path):
    """docs/backbones.md, "The contract": the class declares its capabilities, passes every contract
    check (periodic images included) and trains a step through ``zoo fit`` by class path on a file of
    periodic structures."""
    from atomzoo.backbones import Backbone
    from atomzoo.backbones.contract import check_backbone

    module = user_module("toy_backbone", example("backbones.md", "toy-periodic-backbone"))
    MyNet = __import__(module).MyNet
    assert issubclass(MyNet, Backbone) and MyNet.periodic and MyNet.supports_mask
    report = check_backbone(lambda: MyNet(width=16))
    assert report == {"shapes": "ok", "symmetries": "ok", "locality": "ok", "max_num_neighbors": "ok", "forces": "ok",
                      "periodic": "ok", "conditioning": "no condition (condition_dim=0)", "masking": "ok",
                      "drop_path": "ok", "element_embedding": "ok", "weight_decay": "generic rule",
                      "renamed_arguments": "none"}
    assert check_backbone(lambda: MyNet(width=16, condition_dim=4))["conditioning"] == "ok"

    cli = run([
        "fit", "-c", str(ROOT / "configs/data/ase_file.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
        "--data.path", str(CU_BULK), "--data.batch_size", "4", "--data.eval_batch_size", "4",
        "--model.backbone.class_path", f"{module}.MyNet", "--model.backbone.init_args.width", "16",
        "--model.backbone.init_args.cutoff", "4.0",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "2", "--trainer.default_root_dir", str(tmp_path),
        *QUIET,
    ])
    assert type(cli.model.backbone).__name__ == "MyNet" and cli.model.forces  # energies and forces of the file
    assert cli.trainer.global_step == 1
    loss = cli.trainer.callback_metrics.get("train/loss")
    assert loss is not None and torch.isfinite(loss)
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert bool(batch.pbc.all()) and batch.cell.shape[-2:] == (3, 3)  # the structures it trained on are periodic


def test_toy_objective_as_documented(user_module, cache_dir, tmp_path):
    """docs/objectives.md, "Adding an objective": ``compute_loss(batch, generator)`` returning a dict with
    ``"loss"`` is all it takes; a few steps through ``zoo fit --model.class_path``, the loss logged."""
    from atomzoo.objectives import Objective

    module = user_module("toy_objective", example("objectives.md", "adding-an-objective"))
    assert issubclass(__import__(module).CentroidDistance, Objective)
    cli = run([
        "fit", "-c", str(ROOT / "configs/data/qm9.yaml"),
        "--model.class_path", f"{module}.CentroidDistance", "--model.init_args.sigma", "0.05",
        "--model.init_args.warmup_steps", "1", "--model.init_args.diagnostics_every_n_steps", "1",
        "--model.init_args.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
        "--model.init_args.backbone.init_args.width", "16", "--model.init_args.backbone.init_args.num_filters", "16",
        "--model.init_args.backbone.init_args.num_interactions", "1",
        "--data.targets", "null", "--data.train_size", "32", "--data.batch_size", "8", "--data.eval_batch_size", "8",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2",
        "--trainer.default_root_dir", str(tmp_path),
        *QUIET,
    ])
    assert type(cli.model).__name__ == "CentroidDistance" and cli.model.sigma == pytest.approx(0.05)
    assert cli.trainer.global_step == 3
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert "train/emb_std" in metrics  # the "embedding" it returned reached the diagnostics


def test_toy_dataset_as_documented(user_module, cache_dir, tmp_path):
    """docs/datasets.md, "Adding a dataset": the AtomsDataModule subclass of its first block, trained
    through ``zoo fit --data <module>.ToyDimers`` as the page says."""
    from atomzoo.datamodules import AtomsDataModule

    blocks = section_blocks("datasets.md", "Adding a dataset")
    module = user_module("toy_dataset", blocks[0])
    assert issubclass(__import__(module).ToyDimers, AtomsDataModule)
    cli = run([
        "fit", "--data", f"{module}.ToyDimers", "--data.targets", "[energy]", "--data.num_train", "48",
        "--data.num_val", "8", "--data.batch_size", "8", "--data.cache_dir", str(cache_dir),
        "-c", str(ROOT / "configs/objectives/regression.yaml"),
        "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "1",
        "--trainer.max_steps", "5", "--trainer.limit_val_batches", "2", "--trainer.default_root_dir", str(tmp_path),
        *QUIET,
    ])
    assert type(cli.datamodule).__name__ == "ToyDimers" and len(cli.datamodule.store) == 64
    assert cli.trainer.global_step == 5
    loss = cli.trainer.callback_metrics.get("train/loss")
    assert loss is not None and torch.isfinite(loss)
