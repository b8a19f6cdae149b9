"""The whole run's progress and time left (:mod:`atomzoo.progress`) and the ``zoo`` command's one-line
notices: the store's first build, what ``init_from`` loaded, where checkpoints and test metrics went
(issue 32, item 4)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from atomzoo import progress
from atomzoo.progress import RunPlan, RunProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A fake ``time`` module for :mod:`atomzoo.progress`: the model advances it by a fixed cost per batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class TimedModel(BoringModel):
    """BoringModel whose training batches cost ``train_s`` and validation/test batches ``eval_s`` on ``clock``."""

    def __init__(self, clock: Clock, train_s: float = 1.0, eval_s: float = 0.25) -> None:
        super().__init__()
        self.clock, self.train_s, self.eval_s = clock, train_s, eval_s

    def training_step(self, batch, batch_idx):
        self.clock.now += self.train_s
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.clock.now += self.eval_s
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.clock.now += self.eval_s
        return super().test_step(batch, batch_idx)


class Record(L.Callback):
    """After the progress bar: batches and validations Lightning ran, and the bar's text at each batch."""

    def __init__(self, bar: RunProgressBar) -> None:
        self.bar, self.batches, self.validations, self.left = bar, 0, 0, []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.batches += 1
        self.left.append((trainer.global_step, self.validations, self.bar.train_progress_bar.run_left))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validations += 1


def fit(tmp_path, clock=None, test_after_fit=False, **trainer_args):
    bar = RunProgressBar(test_after_fit=test_after_fit)
    record = Record(bar)
    options = dict(max_epochs=None, limit_val_batches=2, logger=False, enable_checkpointing=False,
                   enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    trainer = L.Trainer(callbacks=[bar, record], **(options | trainer_args))
    trainer.fit(TimedModel(clock or Clock()))
    return trainer, bar, record


@pytest.mark.parametrize("trainer_args", [
    dict(max_epochs=3, limit_train_batches=5),                                 # validation after each epoch
    dict(max_steps=7, limit_train_batches=5),                                  # max_steps ends mid-epoch
    dict(max_epochs=2, limit_train_batches=5, val_check_interval=2),           # twice an epoch (not at its end)
    dict(max_epochs=5, limit_train_batches=3, check_val_every_n_epoch=2),      # every second epoch
    dict(max_steps=10, limit_train_batches=4, val_check_interval=3, check_val_every_n_epoch=None),  # across epochs
    dict(max_steps=4, limit_train_batches=5, accumulate_grad_batches=2),       # 4 optimizer steps = 8 batches
    dict(max_epochs=2, limit_train_batches=4, limit_val_batches=0),            # no validation
    dict(max_epochs=2, limit_train_batches=6, val_check_interval=0.5),         # a fraction of the epoch
])
def test_the_plan_is_what_lightning_runs(tmp_path, trainer_args):
    """The run's length and validations, computed at the start, equal what Lightning then runs."""
    trainer, bar, record = fit(tmp_path, **trainer_args)
    assert bar.plan.total_batches == record.batches
    assert bar.plan.validations == record.validations
    assert bar.train_progress_bar.n == bar.train_progress_bar.total == record.batches  # one bar, the whole run


def test_the_time_left_counts_training_validations_and_the_test(tmp_path, monkeypatch):
    """With a batch costing 1 s of training and 0.25 s of evaluation (a fake clock), the time left after
    every batch is exactly what the run still has to do: its training batches, its validations (2
    batches each) and, after fit, the test (the 2 test batches of limit_test_batches)."""
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    trainer, bar, record = fit(tmp_path, clock, test_after_fit=True, max_epochs=3, limit_train_batches=4,
                               limit_test_batches=2, num_sanity_val_steps=2)
    assert len(record.left) == 12
    for k, (step, validations, text) in enumerate(record.left, start=1):
        validations_left = 3 - validations
        seconds = (12 - k) * 1.0 + validations_left * 2 * 0.25 + 2 * 0.25
        parts = (["training"] if k < 12 else []) + [f"{validations_left} validation" + "s" * (validations_left != 1)] + ["test"]
        assert text == f"~{progress.tqdm.format_interval(seconds)} left: {', '.join(parts)}", (k, text)


def test_the_time_left_is_measured_before_the_first_validation_from_the_sanity_check():
    """Before any validation ran, a validation is estimated from the sanity check's time per batch."""
    plan = RunPlan(batches_per_epoch=10, total_batches=30, max_epochs=3, val_every=10)
    assert plan.validations == 3 and plan.validations_after(9) == 0 and plan.validations_after(10) == 1
    assert progress.seconds_left(20, 2.0, 2, 3.0, 1.5) == 20 * 2.0 + 2 * 3.0 + 1.5
    assert progress.seconds_left(20, None, 2, 3.0, 1.5) is None  # nothing measured yet: "measuring"


@pytest.mark.parametrize("lines", [True, False])
def test_in_a_log_file_the_bar_writes_whole_lines_at_its_interval(tmp_path, monkeypatch, capsys, lines):
    """Line mode (stdout not a terminal: a batch job's log): no carriage return; a line at the first
    batch, then at most one per ``line_interval`` (here 3.5 s of a fake clock, batches of 1 s,
    validations of 0.5 s), one after each validation with the time left updated, one at the end; no
    sanity-check or validation bar. On a terminal (``lines=False``) tqdm redraws with carriage returns."""
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    bar = RunProgressBar(lines=lines, line_interval=3.5)
    trainer = L.Trainer(callbacks=[bar], max_epochs=3, limit_train_batches=4, limit_val_batches=2, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        accelerator="cpu", devices=1)
    trainer.fit(TimedModel(clock))
    out = capsys.readouterr().out
    if not lines:
        assert "\r" in out
        return
    assert "\r" not in out and "\x1b" not in out
    found = [re.match(r"Epoch (\d)/3: +\d+%\|[# \d]+\| (\d+)/12 batches \[\d\d:\d\d elapsed, ~\d\d:\d\d left: (.*);", line)
             for line in out.splitlines()]
    assert all(found), out
    # batch 1 (first, clock 1.5 s); 4 after validation 1 (5.0 s); 8 when due (9.0 s) and after validation 2;
    # 12 at the end and after the last validation
    assert [(int(m[2]), m[3]) for m in found] == [
        (1, "training, 3 validations"), (4, "training, 2 validations"), (8, "training, 2 validations"),
        (8, "training, 1 validation"), (12, "1 validation"), (12, "done")]
    with pytest.raises(ValueError, match="line_interval must be > 0"):
        RunProgressBar(line_interval=0)


def test_without_a_known_length_the_bar_is_lightnings_per_epoch_bar(tmp_path):
    """An iterable dataset without a length: no plan, Lightning's own bar, no error."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(torch.randn(6, 32))

    class StreamModel(TimedModel):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(Stream(), batch_size=2)

    bar = RunProgressBar()
    trainer = L.Trainer(callbacks=[bar], max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    trainer.fit(StreamModel(Clock()))
    assert bar.plan is None and trainer.global_step == 6


def zoo(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("zoo", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    small = ["--model.init_args.backbone.init_args.width", "16", "--model.init_args.backbone.init_args.num_filters", "16",
             "--model.init_args.backbone.init_args.num_interactions", "1"]
    cmd = [exe, "fit", "-c", str(ROOT / "configs/experiments/rmd17_fixture_forces.yaml"),
           "--data.init_args.root", str(ROOT / "tests/data/md17_fixture"), "--data.init_args.cache_dir", str(cache),
           *small, "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "2", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow  # two `zoo fit` processes: 40 s on a quiet core, 150 s at a load of 7 on 2 cores
def test_zoo_fit_shows_the_whole_run_and_says_where_things_went(tmp_path):
    """A tiny ``zoo fit`` (console script, test after fit from the experiment config): the training bar
    counts the run's 3 x 4 batches with the time left of training, validations and test; one line each
    for the store's first build, the checkpoints and the test metrics; a second run fine-tuned from the
    first says what init_from loaded and builds no store; ``--trainer.enable_progress_bar false`` works."""
    cache = tmp_path / "cache"
    first = zoo("--trainer.max_epochs", "3", cwd=tmp_path, cache=cache)
    assert "\r" not in first.stdout  # a pipe, not a terminal: whole lines (line mode)
    bars = [line for line in first.stdout.splitlines() if " batches [" in line]
    assert any(re.match(r"Epoch 3/3: 100%\|.*\| 12/12 batches \[\d\d:\d\d elapsed, ~\d\d:\d\d left: test;", b) for b in bars)
    assert any(re.search(r"\| [1-9]/12 batches \[.*~\d\d:\d\d left: training, 3 validations, test;", b) for b in bars)
    run = tmp_path / "runs/rmd17_fixture_forces/version_0"
    store = next((cache / "rmd17").iterdir())
    assert f"zoo: building the RMD17 store at {store} (first run only; later runs open it)" in first.stderr
    checkpoints = re.search(r"zoo: checkpoints in (\S+): (.*) \(best by val/loss: (best-2-\d+\.ckpt)\)", first.stderr)
    assert checkpoints and Path(checkpoints[1]) == run.resolve() / "checkpoints"
    assert set(checkpoints[2].split(", ")) == {p.name for p in (run / "checkpoints").glob("*.ckpt")} >= {"last.ckpt", checkpoints[3]}
    assert f"zoo: test metrics written to {(run / 'test_metrics.json').resolve()}" in first.stderr
    assert (run / "test_metrics.json").is_file()

    last = run / "checkpoints/last.ckpt"
    second = zoo("--trainer.max_epochs", "1", "--model.init_args.init_from", str(last), "--trainer.enable_progress_bar",
                 "false", cwd=tmp_path, cache=cache)
    assert "zoo: building" not in second.stderr  # the store exists
    tensors = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    backbone = sum(name.startswith("backbone.") for name in tensors)
    assert backbone > 0
    line = f"init_from: loaded {backbone} tensors from {last} (backbone SchNet, skipped {len(tensors) - backbone} non-backbone tensors)"
    assert line in second.stderr
    assert " batches [" not in second.stdout


def test_the_qm9_store_line_gives_its_measured_first_build_time(tmp_path, capsys):
    """QM9's first build has a measured duration (docs/results.md): the line says it; an existing store no line."""
    from types import SimpleNamespace

    from atomzoo.cli import ZooCLI
    from atomzoo.datamodules import QM9DataModule

    holder = SimpleNamespace(datamodule=QM9DataModule(targets=["homo"], cache_dir=str(tmp_path)))
    ZooCLI._announce_store_build(holder)
    path = holder.datamodule.store_path()
    assert f"zoo: building the QM9 store at {path} (first run only, ~7 s; later runs open it)\n" == capsys.readouterr().err
    Path(path).mkdir(parents=True)
    ZooCLI._announce_store_build(holder)
    assert capsys.readouterr().err == ""


def test_a_resumed_run_counts_from_where_it_stopped(tmp_path):
    """Resumed from a checkpoint after 1 of 3 epochs: the bar starts at the 4 batches done, spans all 12,
    and the time left counts the 2 validations still to come, not 3."""
    first, _, _ = fit(tmp_path, max_epochs=1, limit_train_batches=4)
    ckpt = tmp_path / "after-epoch-1.ckpt"
    first.save_checkpoint(ckpt)
    bar = RunProgressBar()
    record = Record(bar)
    trainer = L.Trainer(callbacks=[bar, record], max_epochs=3, limit_train_batches=4, limit_val_batches=2, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        accelerator="cpu", devices=1)
    trainer.fit(TimedModel(Clock()), ckpt_path=ckpt)
    assert record.batches == 8 and bar.train_progress_bar.n == bar.train_progress_bar.total == 12
    assert record.left[0][2].endswith("left: training, 2 validations"), record.left[0]
