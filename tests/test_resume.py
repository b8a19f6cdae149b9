"""Fault tolerance and determinism: a fit killed with SIGKILL mid-epoch resumes from its last
checkpoint with ``--ckpt_path last`` and continues exactly as an uninterrupted run (same batches in
the same order, same losses: optimizer, scheduler, EMA and data position restored)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
    "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
    "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
    "--model.backbone.init_args.num_interactions", "1", "--data.train_size", "64", "--data.batch_size", "8",
    "--data.eval_batch_size", "16", "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.ema_decay", "0.9", "--model.warmup_steps", "4",
]


def callbacks_file(tmp_path: Path, name: str, kill_at_step: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""trainer:
  callbacks:
  - class_path: lightning.pytorch.callbacks.ModelCheckpoint
    init_args: {{filename: last-step, every_n_train_steps: 3, save_top_k: 1, enable_version_counter: false}}
  - class_path: record_batches.RecordBatches
    init_args: {{path: {tmp_path / name}.jsonl, kill_at_step: {kill_at_step}}}
""")
    return path


def zoo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests/support")}
    return subprocess.run([sys.executable, "-m", "atomzoo.cli", "fit", *ARGS, *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def records(path: Path) -> list[dict]:
    """The recorded batches; every subprocess must have run this checkout's atomzoo, not an installed copy."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {Path(r["atomzoo"]).resolve() for r in rows} == {ROOT / "zoo" / "__init__.py"}
    return rows


@pytest.mark.parametrize("packing", [[], ["--data.max_atoms", "150"]], ids=["fixed", "packed-by-atoms"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(cache_dir, tmp_path, packing):
    """Fixed batches of 8, and batches packed up to 150 atoms (``SizeBalancedSampler``: 7-9 molecules of
    QM9, the epoch's packing seeded by the epoch), both resume at the next batch of the interrupted epoch."""
    a = zoo(tmp_path, "-c", str(callbacks_file(tmp_path, "a", -1)), "--trainer.default_root_dir", "a",
            "--trainer.logger.init_args.save_dir", "a", *packing)
    assert a.returncode == 0, a.stderr[-2000:]
    # killed at step 12, in the middle of the second epoch (about 8 batches per epoch); last checkpoint: step 9
    b = zoo(tmp_path, "-c", str(callbacks_file(tmp_path, "b", 12)), "--trainer.default_root_dir", "b",
            "--trainer.logger.init_args.save_dir", "b", *packing)
    assert b.returncode == -9
    resumed = zoo(tmp_path, "-c", str(callbacks_file(tmp_path, "b", -1)), "--trainer.default_root_dir", "b",
                  "--trainer.logger.init_args.save_dir", "b", "--trainer.logger.init_args.version", "0",
                  "--ckpt_path", "last", *packing)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restored all states" in resumed.stderr + resumed.stdout
    assert "best by None" not in resumed.stderr  # its only ModelCheckpoint has no monitor: no "best" to name

    full, interrupted = records(tmp_path / "a.jsonl"), records(tmp_path / "b.jsonl")
    steps = [r["step"] for r in interrupted]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert steps[restart] == 10  # continued right after the step-9 checkpoint
    stitched = interrupted[: steps[restart] - 1] + interrupted[restart:]
    assert [r["step"] for r in stitched] == [r["step"] for r in full] == list(range(1, len(full) + 1))
    assert len(full) == 24 or packing  # fixed: 3 epochs of 8 batches
    assert [r["idx"] for r in stitched] == [r["idx"] for r in full]  # the same data, in the same order
    np.testing.assert_allclose([r["loss"] for r in stitched], [r["loss"] for r in full], rtol=0, atol=1e-6)


def test_same_seed_same_metrics(cache_dir, tmp_path):
    runs = []
    for name in ("x", "y"):
        result = zoo(tmp_path, "-c", str(callbacks_file(tmp_path, name, -1)), "--trainer.default_root_dir", name,
                     "--trainer.logger.init_args.save_dir", name, "--test_after_fit", "true",
                     "--trainer.limit_test_batches", "2")
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(json.loads(next((tmp_path / name).rglob("test_metrics.json")).read_text()))
    # identical up to float32 rounding: intra-op threading can reorder a reduction (seen once: one
    # training loss differed in its last bit while the test metrics were bit-identical)
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert runs[0][key] == pytest.approx(runs[1][key], rel=1e-6, abs=1e-9)
    x, y = records(tmp_path / "x.jsonl"), records(tmp_path / "y.jsonl")
    assert [r["idx"] for r in x] == [r["idx"] for r in y]
    np.testing.assert_allclose([r["loss"] for r in x], [r["loss"] for r in y], rtol=1e-6)


def test_a_pretraining_run_resumes_from_its_checkpoint(cache_dir, tmp_path):
    """``zoo fit --ckpt_path`` of a self-supervised objective: its checkpoint records the data's linked
    ``targets`` (the CLI links them into every objective), which Denoising does not take; the resumed
    run must drop them, not fail with "unexpected keyword argument 'targets'", and continue the step count."""
    from atomzoo.cli import run

    args = [
        "fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/denoising.yaml"),
        "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "1", "--data.train_size", "64", "--data.batch_size", "8",
        "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]
    first = run([*args, "--trainer.max_steps", "8"])
    (ckpt,) = Path(first.trainer.log_dir).glob("checkpoints/last.ckpt")
    resumed = run([*args, "--trainer.max_steps", "12", "--ckpt_path", str(ckpt)])
    assert resumed.trainer.global_step == 12
    assert type(resumed.model).__name__ == "Denoising"


def test_last_checkpoint_follows_every_validation_not_only_improvements(cache_dir, tmp_path):
    """``last.ckpt`` is rewritten after each validation (docs/training.md), also when ``val/loss`` did not
    improve, so ``--ckpt_path last`` never throws away the steps since the last improvement."""
    import torch

    # lr 0: the weights never change, val/loss is the same after every epoch, so it improves only once
    run = zoo(tmp_path, "--trainer.default_root_dir", "c", "--trainer.logger.init_args.save_dir", "c",
              "--model.lr", "0", "--model.ema_decay", "null")
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = (tmp_path / "c").glob("*/version_0/checkpoints")
    (best,) = folder.glob("best-*.ckpt")
    assert torch.load(best, weights_only=False)["global_step"] == 8  # the first validation stays the best
    last = torch.load(folder / "last.ckpt", weights_only=False)
    assert last["global_step"] == 24  # 3 epochs of 8 batches: the newest validation, not the best one
    assert last["epoch"] == 2
