"""Every shipped objective config with every shipped backbone config, through the CLI, as shipped.

Only the data size and the step limits are overridden (and ``--data.targets null`` for the
self-supervised objectives, as their config headers tell users to write); objective and backbone
settings -- ``mask_ratio`` included -- are the files' own. A combination that fails for a user fails
here. The MACE file is built at its shipped size (``128x0e+128x1o``, ``max_ell`` 3, correlation 3);
building it is dominated by mace-torch's Clebsch-Gordan / symmetric-contraction tables, which this
module memoises for the duration of the test (the same tables for every objective), so MACE is
constructed from scratch once instead of six times.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml

from atomzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = sorted((ROOT / "configs/objectives").glob("*.yaml"))
BACKBONES = sorted((ROOT / "configs/backbones").glob("*.yaml"))


def _supervised(objective: Path) -> bool:
    return yaml.safe_load(objective.read_text())["model"]["class_path"].endswith(".Regression")


@pytest.fixture(scope="module", autouse=True)
def _memoised_mace_tables():
    """Cache mace-torch's ``U_matrix_real`` (pure function of irreps / correlation) across builds."""
    try:
        from atomzoo.backbones.mace import import_mace

        import_mace()
        import mace.modules.symmetric_contraction as sc
    except ImportError:  # mace-torch not installed: the MACE cases skip below
        yield
        return
    original = sc.U_matrix_real
    cache: dict = {}

    @functools.wraps(original)
    def cached(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(*args, **kwargs)
        return cache[key]

    sc.U_matrix_real = cached
    yield
    sc.U_matrix_real = original


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda p: p.stem)
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda p: p.stem)
def test_every_objective_with_every_backbone_as_shipped(objective, backbone, cache_dir, tmp_path):
    if backbone.stem == "mace":
        pytest.importorskip("mace")
    cli = run([
        "fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(objective), "--model.backbone", str(backbone),
        *([] if _supervised(objective) else ["--data.targets", "null"]),
        "--data.cache_dir", str(cache_dir), "--data.train_size", "8", "--data.batch_size", "4",
        "--data.eval_batch_size", "4",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ])
    shipped = yaml.safe_load(objective.read_text())["model"]["init_args"]
    if "mask_ratio" in shipped:  # the masking path really ran
        assert cli.model.mask_ratio == shipped["mask_ratio"] > 0
    assert type(cli.model.backbone).__name__ == yaml.safe_load(backbone.read_text())["class_path"].rpartition(".")[2]
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
