"""The benchmark runner: matrix expansion, resumable runs of real cells, report from the CSV alone."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from atomzoo.bench.__main__ import main as bench_main
from atomzoo.bench.matrix import expand, load_matrix
from atomzoo.bench.report import final_test_mae, noise_table, pretraining_table, summary_table, write_report

ROOT = Path(__file__).resolve().parents[1]
TINY = {"width": 16, "num_filters": 16, "num_interactions": 1, "num_rbf": 8, "cutoff": 4.0}
STEPS = ["--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
         "--trainer.enable_model_summary", "false", "--data.eval_batch_size", "16", "--data.batch_size", "8"]


def write_matrix(tmp_path: Path, objectives: dict, seeds=(0, 1), modes=("finetune",)) -> Path:
    matrix = {
        "name": "tiny",
        "output": str(tmp_path / "out"),
        "backbones": {"schnet": {"config": str(ROOT / "configs/backbones/schnet.yaml"), "overrides": TINY}},
        "objectives": objectives,
        "pretrain": {"data": str(ROOT / "configs/data/qm9.yaml"), "args": ["--data.targets", "null", *STEPS]},
        "finetune": {"data": str(ROOT / "configs/data/qm9.yaml"),
                     "objective": str(ROOT / "configs/objectives/regression.yaml"),
                     "targets": ["homo"], "label_budgets": [64], "seeds": list(seeds), "modes": list(modes),
                     "args": STEPS},
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    return path


def test_expansion_counts_and_dependencies(tmp_path):
    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml"},
                        seeds=(0, 1, 2), modes=("finetune", "linear_probe"))
    data = yaml.safe_load(path.read_text())
    data["finetune"]["targets"] = ["homo", "u0"]
    data["finetune"]["label_budgets"] = [100, 1000]
    data["pretrain"]["corruption"] = {"kind": "displacement", "rates": [0.0, 0.2]}
    data["finetune"]["probe_args"] = ["--model.lr", "0.01"]
    path.write_text(yaml.safe_dump(data))
    cells = expand(load_matrix(path))
    pre = [c for c in cells if c.phase == "pretrain"]
    ft = [c for c in cells if c.phase == "finetune"]
    assert len(pre) == 2  # denoising at two corruption rates
    # scratch: 2 targets x 2 budgets x 2 modes x 3 seeds; denoising: the same x 2 rates
    assert len(ft) == 24 + 48
    assert all(c.depends_on in {p.id for p in pre} for c in ft if c.objective == "denoising")
    assert all(c.depends_on is None for c in ft if c.objective == "none")
    probe = next(c for c in ft if c.mode == "linear_probe")
    assert "--model.freeze_backbone" in probe.args and probe.args[probe.args.index("--model.head_hidden") + 1] == "0"
    assert probe.args[-2:] == ["--model.lr", "0.01"]  # probe_args come last, so they win
    assert all("--model.lr" not in c.args for c in ft if c.mode == "finetune")
    corrupted = next(c for c in pre if c.corruption_rate > 0)
    assert corrupted.args[corrupted.args.index("--data.corruption_rate") + 1] == "0.2"
    assert cells.index(pre[0]) < cells.index(ft[0])


def test_bad_matrix_names_the_key(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"backbones": {"a": "x.yaml"}, "objectives": {"none": None}, "finetune": {"data": "d"}}))
    with pytest.raises(ValueError, match="'finetune' needs the key 'objective'"):
        load_matrix(path)


def test_run_resume_and_report(cache_dir, tmp_path):
    """Two real scratch cells run; a rerun skips the finished one and reruns the crashed one."""
    path = write_matrix(tmp_path, {"none": None})
    bench_main(["run", str(path), "--only", "s0$"])
    out = tmp_path / "out"
    crashed = out / "cells/finetune/schnet/none/c0/homo/n64/finetune/s1"
    crashed.mkdir(parents=True)
    (crashed / "log.txt").write_text("half-written leftovers of a killed run")
    assert bench_main(["run", str(path)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results["cell"]) == {"finetune/schnet/none/c0/homo/n64/finetune/s0", "finetune/schnet/none/c0/homo/n64/finetune/s1"}
    maes = results[results["metric"] == "test/homo_mae_meV"]["value"]
    assert len(maes) == 2 and (maes > 0).all()
    cell = out / "cells/finetune/schnet/none/c0/homo/n64/finetune/s0"
    assert (cell / "run/config.yaml").exists()  # every cell is an ordinary, rerunnable zoo run
    assert (crashed / "DONE.json").exists() and "leftovers" not in (crashed / "log.txt").read_text()
    stamp = (cell / "DONE.json").stat().st_mtime
    assert bench_main(["run", str(path)]) == 0
    assert (cell / "DONE.json").stat().st_mtime == stamp  # finished cells are skipped
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sum(r["metric"] == "test/homo_mae_meV" for r in rows) == 2  # no duplicate rows
    report = (out / "results.md").read_text()
    assert "homo n=64 (meV)" in report and "**" in report
    assert (out / "bars_schnet_finetune.png").exists()
    # the report regenerates from the CSV alone
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(out / "results.csv", lone / "results.csv")
    assert "homo n=64" in write_report(lone).read_text()


def test_table_marks_best_and_relative_change(tmp_path):
    rows = []
    for objective, values in {"none": [20.0, 22.0], "denoising": [15.0, 17.0], "scd": [18.0, 18.0]}.items():
        for seed, value in enumerate(values):
            rows.append({"cell": f"{objective}{seed}", "phase": "finetune", "backbone": "painn", "objective": objective,
                         "target": "homo", "label_budget": 1000, "mode": "finetune", "seed": seed,
                         "corruption_rate": 0.0, "metric": "test/homo_mae_meV", "step": "", "value": value})
    frame = pd.DataFrame(rows)
    table = summary_table(final_test_mae(frame), "finetune")
    assert "**16.0 ± 1.4** (-24%)" in table  # denoising: best, 24% below scratch's 21
    assert "18.0 ± 0.0 (-14%)" in table and "21.0 ± 1.4 |" in table


def test_parallel_run_waits_for_pretraining(cache_dir, tmp_path):
    """--parallel 2: scratch and pretraining run side by side; fine-tuning starts after its pretraining."""
    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    assert bench_main(["run", str(path), "--parallel", "2"]) == 0
    cells = tmp_path / "out/cells"
    pretrain_done = (cells / "pretrain/schnet/denoising/c0/DONE.json").stat().st_mtime
    finetune = cells / "finetune/schnet/denoising/c0/homo/n64/finetune/s0"
    assert (finetune / "DONE.json").exists() and (cells / "finetune/schnet/none/c0/homo/n64/finetune/s0/DONE.json").exists()
    assert (finetune / "run/config.yaml").stat().st_mtime >= pretrain_done
    assert "--model.init_from" in (finetune / "log.txt").read_text().splitlines()[0]
    results = pd.read_csv(tmp_path / "out/results.csv")
    assert set(results["phase"]) == {"pretrain", "finetune"}


def test_failed_pretraining_blocks_its_finetuning(cache_dir, tmp_path, capsys):
    path = write_matrix(tmp_path, {"none": None, "broken": "configs/objectives/no_such_objective.yaml"}, seeds=(0,))
    assert bench_main(["run", str(path), "--parallel", "2"]) == 1
    out = capsys.readouterr().out
    assert "failed 1" in out and "blocked by a failed pretraining 1" in out
    cells = tmp_path / "out/cells"
    assert "no_such_objective.yaml" in (cells / "pretrain/schnet/broken/c0/log.txt").read_text()
    assert not (cells / "finetune/schnet/broken").exists()
    assert (cells / "finetune/schnet/none/c0/homo/n64/finetune/s0/DONE.json").exists()  # the rest still runs


def test_parallel_must_be_positive(tmp_path):
    path = write_matrix(tmp_path, {"none": None})
    with pytest.raises(ValueError, match="--parallel must be at least 1"):
        bench_main(["run", str(path), "--parallel", "0"])


def test_noise_table_tracks_mae_against_corruption_rate(tmp_path):
    rows = []

    def add(objective, rate, values):
        for seed, value in enumerate(values):
            rows.append({"cell": f"{objective}{rate}{seed}", "phase": "finetune", "backbone": "painn",
                         "objective": objective, "target": "homo", "label_budget": 1000, "mode": "finetune",
                         "seed": seed, "corruption_rate": rate, "metric": "test/homo_mae_meV", "step": "",
                         "value": value})

    add("none", 0.0, [30.0, 32.0])
    add("denoising", 0.0, [20.0, 20.0])
    add("denoising", 0.1, [22.0, 22.0])
    add("denoising", 0.3, [25.0, 27.0])
    add("scd", 0.0, [18.0, 18.0])  # pretrained at one rate only: not a row of the noise table
    table = noise_table(final_test_mae(pd.DataFrame(rows)))
    lines = table.splitlines()
    assert "rate 0 | rate 0.1 | rate 0.3 | change at max rate | scratch" in lines[0]
    assert len(lines) == 3 and "| denoising |" in lines[2]
    assert "20.0 ± 0.0 | 22.0 ± 0.0 | 26.0 ± 1.4 | +30% | 31.0 ± 1.4 |" in lines[2]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    report = write_report(tmp_path).read_text()
    assert "## Noise robustness" in report and "noise_painn_homo_n1000.png" in report
    assert (tmp_path / "noise_painn_homo_n1000.png").stat().st_size > 0


def test_pretraining_table(tmp_path):
    base = {"phase": "pretrain", "backbone": "painn", "objective": "scd", "target": "", "label_budget": 0, "mode": "",
            "seed": 0, "corruption_rate": 0.1, "cell": "pretrain/painn/scd/c0.1"}
    rows = [{**base, "metric": "wall_s", "step": "", "value": 300.0}]
    rows += [{**base, "metric": "curve:train/loss", "step": s, "value": 1.0 / (s + 1)} for s in (19, 39, 1999)]
    rows += [{**base, "metric": "curve:val/loss", "step": s, "value": v} for s, v in ((1999, 0.25), (999, 0.5))]
    assert "| painn | scd | 0.1 | 2000 | 0.25 | 5.0 |" in pretraining_table(pd.DataFrame(rows))
    # a report while only pretraining cells have finished
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    report = write_report(tmp_path).read_text()
    assert "## Pretraining runs" in report and "Test MAE" not in report
