"""SIGTERM (what SLURM, ``timeout`` and ``kill`` send) to a ``zoo fit`` that has not finished ends it with
exit status 143 (128 + 15), not 0, and the benchmark runner does not mark such a cell done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from test_resume import ARGS, ROOT, callbacks_file
from test_runner import STEPS, write_matrix


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting for training to start"
        time.sleep(0.2)


def test_sigterm_ends_an_unfinished_fit_with_status_143(cache_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests/support")}
    record = tmp_path / "a.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomzoo.cli", "fit", *ARGS, "-c", str(callbacks_file(tmp_path, "a", -1)),
         "--trainer.default_root_dir", "a", "--trainer.max_epochs", "1000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 3 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM" in out.splitlines()[-1] and "not finished" in out.splitlines()[-1]


def test_runner_does_not_mark_a_cell_ended_by_sigterm_done(cache_dir, tmp_path):
    path = write_matrix(tmp_path, {"none": None}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["finetune"]["args"] = [*STEPS, "--trainer.max_steps", "100000"]
    path.write_text(yaml.safe_dump(data))
    runner = subprocess.Popen([sys.executable, "-m", "atomzoo.runner", "run", str(path), "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cells = tmp_path / "out/cells"
    try:
        def training() -> list[str]:  # the pids of the cell's zoo fit once its trainer has started
            if not list(cells.rglob("hparams.yaml")):
                return []
            return subprocess.run(["pgrep", "-f", str(cells)], capture_output=True, text=True).stdout.split()

        _wait_for(lambda: bool(training()) or runner.poll() is not None, timeout=180)
        assert runner.poll() is None, runner.communicate()[0][-3000:]
        time.sleep(3.0)  # well inside training
        for pid in training():
            os.kill(int(pid), signal.SIGTERM)
        out, _ = runner.communicate(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 1, out[-3000:]
    assert not list(cells.rglob("DONE.json")), out[-3000:]
    results = tmp_path / "out/results.csv"
    assert not results.exists() or "finetune" not in results.read_text()
