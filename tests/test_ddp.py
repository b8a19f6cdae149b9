"""DDP on the CPU (gloo, 2 processes): exact test metrics and every objective trains.

Lightning launches the extra process by re-running the command, so each case runs ``zoo`` in a
subprocess of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.num_rbf", "8"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
DDP = ["-c", str(ROOT / "configs/trainer/ddp_cpu.yaml")]


def zoo(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env["PYTHONPATH"] = str(ROOT / "tests/support")  # for the DumpWeights callback
    result = subprocess.run([sys.executable, "-m", "atomzoo.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_process_test_mae_equals_one_process(cache_dir, tmp_path):
    """Same checkpoint, 101 test molecules (odd: ranks get 51 and 50; batches of 16 leave uneven last
    batches): identical test MAE *and* test loss, because evaluation is sharded without padding
    (PyTorch's DistributedSampler would repeat a molecule) and every logged quantity is a
    sample-weighted mean (torchmetrics MeanMetric), not a mean of per-batch or per-rank means.
    The exact per-sample mean is the loss of one single batch of all 101 molecules."""
    data = ["-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"), *TINY,
            "--data.train_size", "64", "--data.num_test", "101", "--data.eval_batch_size", "16", *QUIET]
    zoo(tmp_path, "fit", *data, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2",
        "--trainer.logger.init_args.save_dir", "fit")
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    zoo(tmp_path, "test", *data, "--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir", "one")
    zoo(tmp_path, "test", *data, *DDP, "--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir", "two")
    zoo(tmp_path, "test", *data, "--data.eval_batch_size", "101", "--ckpt_path", str(ckpt),
        "--trainer.logger.init_args.save_dir", "whole")
    one = json.loads(next((tmp_path / "one").rglob("test_metrics.json")).read_text())
    two = json.loads(next((tmp_path / "two").rglob("test_metrics.json")).read_text())
    whole = json.loads(next((tmp_path / "whole").rglob("test_metrics.json")).read_text())
    assert one["test/homo_mae_meV"] == pytest.approx(two["test/homo_mae_meV"], rel=1e-6)
    assert one["test/homo_mae_meV"] > 0
    assert two["test/loss"] == pytest.approx(whole["test/loss"], rel=1e-5)
    assert one["test/loss"] == pytest.approx(whole["test/loss"], rel=1e-5)


@pytest.mark.parametrize("objective", ["regression", "denoising", "scd", "jepa", "jepa_sigreg"])
def test_every_objective_trains_under_ddp(objective, cache_dir, tmp_path):
    """Two gloo processes, a few steps, no unused-parameter errors; every parameter and buffer
    (weights, standardisation statistics, EMA targets, running noise statistics) ends identical on
    both ranks, and training moved the weights."""
    targets = "[homo]" if objective == "regression" else "null"
    conditioned = ["--model.backbone.init_args.condition_dim", "8"] if objective == "scd" else []
    callbacks = tmp_path / "dump.yaml"
    callbacks.write_text("trainer:\n  callbacks:\n"
                         "  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n    init_args: {save_last: true}\n"
                         "  - class_path: record_batches.DumpWeights\n"
                         f"    init_args: {{prefix: {tmp_path / 'rank'}}}\n")
    zoo(tmp_path, "fit", "-c", str(callbacks), "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / f"configs/objectives/{objective}.yaml"),
        *TINY, *conditioned, *DDP, "--data.targets", targets, "--data.train_size", "64", "--data.batch_size", "8",
        "--data.eval_batch_size", "16", "--data.num_val", "32", "--trainer.max_steps", "3",
        "--trainer.logger.init_args.save_dir", "logs", *QUIET)
    ckpt = torch.load(next((tmp_path / "logs").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue  # BatchNorm statistics are per rank without SyncBatchNorm (GPU only; configs/trainer/ddp.yaml)
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the two ranks"
    start = torch.load(tmp_path / "rank0_start.pt", weights_only=True)
    assert any(not torch.equal(start[k], rank0[k]) for k in start if k.startswith("backbone."))
