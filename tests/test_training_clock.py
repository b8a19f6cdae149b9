"""A run's training compute summed over the attempts that resumed one another (:mod:`atomzoo.training_clock`):
what the benchmark's equal-CPU comparisons read, where the last process's ``os.wait4`` time would count
only the last attempt of a resumed cell."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from atomzoo.cli import run
from atomzoo.training_clock import CLOCK_FILE, TrainingClock
from lightning.pytorch.demos.boring_classes import BoringModel

ROOT = Path(__file__).resolve().parents[1]
PROPS = ROOT / "tests/data/bad_inputs/resume-changed-target/props.extxyz"


class BusyModel(BoringModel):
    """BoringModel whose every training batch burns ``busy_s`` of CPU time."""

    def __init__(self, busy_s: float = 0.02) -> None:
        super().__init__()
        self.busy_s = busy_s

    def training_step(self, batch, batch_idx):
        end = time.process_time() + self.busy_s
        while time.process_time() < end:
            pass
        return super().training_step(batch, batch_idx)


def _trainer(tmp_path, clock, **args) -> L.Trainer:
    options = dict(limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    return L.Trainer(callbacks=[clock], **(options | args))


def test_a_resumed_run_adds_the_time_stored_in_its_checkpoint(tmp_path):
    """Attempt 1 trains 10 batches (>= 0.2 CPU s) and is checkpointed; attempt 2 resumes from it and
    trains 10 more: its clock holds both attempts' time, the checkpoint's value included, not only its own."""
    first = TrainingClock()
    trainer = _trainer(tmp_path, first, max_steps=10)
    trainer.fit(BusyModel())
    ckpt = tmp_path / "after-10.ckpt"
    trainer.save_checkpoint(ckpt)
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]["TrainingClock"]
    assert stored["attempts"] == 1 and stored["complete"] is True and stored["cpu_s"] >= 0.2
    assert stored["wall_s"] >= stored["cpu_s"] * 0.5  # one thread of busy work: wall time is of its order

    second = TrainingClock()
    start = time.process_time()
    _trainer(tmp_path, second, max_steps=20).fit(BusyModel(), ckpt_path=ckpt)
    own = time.process_time() - start
    totals = second.totals()
    assert totals["attempts"] == 2 and totals["complete"] is True
    # both attempts, each once: the stored time plus at least attempt 2's 10 busy batches, at most its whole fit
    assert stored["cpu_s"] + 0.2 <= totals["cpu_s"] <= stored["cpu_s"] + own
    assert totals["cpu_s"] - totals["attempt_cpu_s"] == pytest.approx(stored["cpu_s"])  # the checkpoint's share


def test_resuming_a_checkpoint_without_a_clock_marks_the_total_incomplete(tmp_path):
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(BusyModel(0.0))
    ckpt = tmp_path / "old.ckpt"
    trainer.save_checkpoint(ckpt)
    clock = TrainingClock()
    _trainer(tmp_path, clock, max_steps=8).fit(BusyModel(0.0), ckpt_path=ckpt)
    assert clock.totals()["complete"] is False and clock.totals()["attempts"] == 1


def test_zoo_fit_writes_the_clock_and_a_resumed_fit_accumulates_it(tmp_path):
    """Through the CLI: every `zoo fit` carries the clock (no config names it) and writes
    training_clock.json; a fit resumed with --ckpt_path counts 2 attempts and at least the first's time."""
    def fit(steps: str, *extra: str) -> dict:
        run(["fit", "-c", str(ROOT / "configs/data/ase_file.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
             "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
             "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
             "--model.backbone.init_args.num_interactions", "1", "--data.path", str(PROPS),
             "--data.energy_key", "null", "--data.forces_key", "null", "--data.property_keys", "[propA]",
             "--data.targets", "[propA]", "--data.num_train", "0.6", "--data.num_val", "0.2", "--data.batch_size", "8",
             "--trainer.max_steps", steps, "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
             "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.version", "v",
             *extra])  # fmt: skip
        return json.loads((tmp_path / "zoo/v" / CLOCK_FILE).read_text())

    first = fit("3")
    assert first["attempts"] == 1 and first["complete"] is True and first["world_size"] == 1 and first["cpu_s"] > 0
    ckpt = next(tmp_path.rglob("last.ckpt"))
    resumed = fit("6", "--ckpt_path", str(ckpt))
    assert resumed["attempts"] == 2 and resumed["complete"] is True and resumed["cpu_s"] > first["cpu_s"]
    assert resumed["wall_s"] > first["wall_s"]
