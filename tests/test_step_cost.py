"""benchmarks/step_cost.py: the per-step CPU cost behind "equal pretraining compute" rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_cost  # noqa: E402

TINY = {"width": 16, "num_filters": 16, "num_interactions": 1, "num_rbf": 8, "cutoff": 4.0}


def test_equal_cpu_steps_scale_inversely_with_the_cost_per_step():
    costs = {"world_model": [0.6, 0.6], "denoising": [0.3, 0.4], "jepa": [0.9]}
    lines = step_cost.table(costs, "world_model", 1500, 100).splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert rows["world_model"] == ["600 (600-600)", "1.00", "1,500"]
    # 1500 x 0.6 / 0.35 = 2,571 -> nearest multiple of 100
    assert rows["denoising"] == ["350 (300-400)", "0.58", "2,600"]
    assert rows["jepa"] == ["900", "1.50", "1,000"]


def test_replace_changes_the_last_value_or_appends():
    args = ["--trainer.max_steps", "5", "-c", "x.yaml", "--trainer.max_steps", "1500"]
    assert step_cost._replace(args, "--trainer.max_steps", "20") == args[:-1] + ["20"]
    assert step_cost._replace(["-c", "x.yaml"], "--trainer.max_steps", "20") == ["-c", "x.yaml", "--trainer.max_steps", "20"]


def test_measures_a_matrix_objective_with_real_runs(cache_dir, tmp_path):
    matrix = {
        "name": "tiny", "output": str(tmp_path / "out"),
        "backbones": {"schnet": {"config": str(ROOT / "configs/backbones/schnet.yaml"), "overrides": TINY}},
        "objectives": {"none": None, "denoising": str(ROOT / "configs/objectives/denoising.yaml")},
        "pretrain": {"data": str(ROOT / "configs/data/qm9.yaml"),
                     "args": ["--data.targets", "null", "--trainer.max_steps", "1000", "--data.batch_size", "8",
                              "--trainer.enable_model_summary", "false"]},
        "finetune": {"data": str(ROOT / "configs/data/qm9.yaml"), "objective": str(ROOT / "configs/objectives/regression.yaml"),
                     "targets": ["homo"], "label_budgets": [64], "seeds": [0]},
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    raw = step_cost.measure(str(path), ["denoising"], short=1, long=4)
    (short, long), = raw["denoising"]
    assert 0 < short < long  # CPU time grows with the steps: each run trained for the steps asked
    assert step_cost.per_step(raw, 1, 4)["denoising"] == [pytest.approx((long - short) / 3)]
    assert not (tmp_path / "out").exists()  # nothing is written under the matrix's cells
    with pytest.raises(SystemExit, match="no pretraining cell of objective 'none'"):
        step_cost.measure(str(path), ["none"], short=1, long=4)


def test_every_run_gets_the_thread_count_and_backbone_asked_for(tmp_path, monkeypatch):
    """Each timed run's OpenMP/MKL threads are ``--threads`` (default 1, the queue's ``--threads 1``) whatever
    the caller's environment says: a cost measured with another count does not size a cell; it runs on
    ``--backbone`` (default the matrix's first)."""
    import json
    import subprocess
    from types import SimpleNamespace

    matrix = {
        "name": "tiny", "output": str(tmp_path / "out"),
        "backbones": {"schnet": {"config": str(ROOT / "configs/backbones/schnet.yaml"), "overrides": TINY},
                      "painn": {"config": str(ROOT / "configs/backbones/painn.yaml"),
                                "overrides": {"width": 16, "num_interactions": 1, "num_rbf": 8, "cutoff": 4.0}}},
        "objectives": {"denoising": str(ROOT / "configs/objectives/denoising.yaml")},
        "pretrain": {"data": str(ROOT / "configs/data/qm9.yaml"), "args": ["--trainer.max_steps", "1000"]},
        "finetune": {"data": str(ROOT / "configs/data/qm9.yaml"), "objective": str(ROOT / "configs/objectives/regression.yaml"),
                     "targets": ["homo"], "label_budgets": [64], "seeds": [0]},
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))
    seen, backbones = [], []

    def fake_run(args, cwd, capture_output, text, env):
        seen.append((env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]))
        backbones.append(args[args.index("--model.backbone") + 1])
        folder = Path(args[args.index("--trainer.default_root_dir") + 1])
        folder.mkdir(parents=True)
        steps = int(args[args.index("--trainer.max_steps") + 1])
        (folder / step_cost.CLOCK_FILE).write_text(json.dumps({"cpu_s": 0.5 * steps}))
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    raw = step_cost.measure(str(path), ["denoising"], short=2, long=6)
    assert raw == {"denoising": [(1.0, 3.0)]} and seen == [("1", "1")] * 2
    assert all(b.endswith("schnet.yaml") for b in backbones)  # the matrix's first backbone
    seen.clear(), backbones.clear()
    step_cost.measure(str(path), ["denoising"], short=2, long=6, threads=2, backbone="painn")
    assert seen == [("2", "2")] * 2 and all(b.endswith("painn.yaml") for b in backbones)
    with pytest.raises(SystemExit, match="--backbone 'et' is not one of the matrix's backbones"):
        step_cost.measure(str(path), ["denoising"], short=2, long=6, backbone="et")
    with pytest.raises(SystemExit):
        step_cost.main([str(path), "--objectives", "denoising", "--threads", "0"])
