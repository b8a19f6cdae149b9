"""The experiment runner: matrix expansion, resumable runs of real cells, report from the CSV alone, and the
committed studies (parity, objective study) as matrices whose finished cells are never rerun."""

from __future__ import annotations

import csv
import json
import dataclasses
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch_geometric.utils import scatter

from atomzoo.runner.__main__ import main as bench_main
from atomzoo.runner.matrix import Comparison, expand, load_matrix, report_scope
from atomzoo.runner.probe import closed_form_probe, probe_matrix
from atomzoo.runner.paired import seeds_needed
from atomzoo.runner.plots import budget_plots, noise_change_plots
from atomzoo.runner.report import (compare_table, final_test_mae, noise_sensitivity_table, noise_table,
                                   pretraining_table, replicate_cpu_h, summary_table, write_report)
from atomzoo.runner.results import finished_cells, load, read_rows, write_rows

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


def test_an_option_a_later_key_would_override_is_refused(tmp_path):
    """A task's args come before common_args and finetune.args in every cell's command, an objective's
    args before common_args and pretrain.args: an option set in both would silently take the later
    value, so the matrix is refused with the key to use (final_args / pretrain_args), which works."""
    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml"})
    data = yaml.safe_load(path.read_text())
    data["common_args"] = ["--data.batch_size", "32", "--trainer.callbacks+=X"]
    data["finetune"].pop("targets")
    data["finetune"]["tasks"] = {"forces": {"args": ["--data.batch_size=10", "--data.molecule", "ethanol"]}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"finetune.tasks.forces.args sets --data.batch_size, which common_args sets "
                                         r"again later .* move it to finetune.tasks.forces.final_args"):
        load_matrix(path)
    data["finetune"]["tasks"] = {"forces": {"args": ["--data.molecule", "ethanol"],
                                            "final_args": ["--data.batch_size", "10"]}}
    data["objectives"]["denoising"] = {"config": "configs/objectives/denoising.yaml",
                                       "args": ["--trainer.max_steps", "7"]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"objectives.denoising.args sets --trainer.max_steps, which pretrain.args "
                                         r"sets again later .* objectives.denoising.pretrain_args"):
        load_matrix(path)
    data["objectives"]["denoising"] = {"config": "configs/objectives/denoising.yaml",
                                       "pretrain_args": ["--trainer.max_steps", "7"]}
    path.write_text(yaml.safe_dump(data))
    cells = expand(load_matrix(path))

    def last_value(args: list[str], option: str) -> str:  # what jsonargparse ends up with: the last one wins
        return [args[k + 1] for k, a in enumerate(args) if a == option][-1]

    assert last_value(next(c for c in cells if c.phase == "finetune").args, "--data.batch_size") == "10"
    assert last_value(next(c for c in cells if c.phase == "pretrain").args, "--trainer.max_steps") == "7"


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
    # one row (scratch): its two seeds' mean, not bold (nothing to be best against)
    assert "homo n=64 (meV)" in report and "| schnet | none | " in report and "**" not in report.split("## Test MAE")[1].split("##")[0]
    assert (out / "mae_schnet_finetune.png").exists()
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
    # a row with fewer seeds than scratch is compared over its own seeds: SCD's seed 0 (18) against
    # scratch's seed 0 (20), -10 %, not against scratch's mean over both seeds (21), -14 %
    table = summary_table(final_test_mae(frame[frame["cell"] != "scd1"]), "finetune")
    assert "18.0 (n = 1) (-10%) [1 seed] |" in table
    # a column with a single row has nothing to be best against: no bold (another task, SCD only)
    frame = pd.concat([frame, pd.DataFrame([{**rows[-1], "cell": "scd_gap", "target": "gap", "metric": "test/gap_mae_meV"}])])
    table = summary_table(final_test_mae(frame), "finetune")
    assert "| 18.0 (n = 1) [1 seed] |" in table and "**18.0 (n = 1)" not in table
    assert "**16.0 ± 1.4** (-24%)" in table  # the HOMO column still marks its best


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


def test_stop_by_defers_the_cells_that_would_not_finish_and_the_next_run_continues(cache_dir, tmp_path, capsys):
    """--stop-by starts no cell whose expected wall time ends after it (a fine-tuning cell whose pretraining is
    deferred waits with it), returns once nothing that fits is left (exit status 3), and the same command
    run later continues; a cell with no finished cell alike (unknown time) is started."""
    import time

    from atomzoo.runner.execute import run_cells

    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    matrix = load_matrix(path)
    cells = expand(matrix)
    outcome = run_cells(matrix, cells, cells, parallel=2, stop_by=time.time() + 600,
                        cell_seconds=lambda c: 10_000.0 if c.phase == "pretrain" else 1.0)
    pretrain, tuned = "pretrain/schnet/denoising/c0", "finetune/schnet/denoising/c0/homo/n64/finetune/s0"
    assert outcome["done"] == ["finetune/schnet/none/c0/homo/n64/finetune/s0"]
    assert sorted(outcome["deferred"]) == [tuned, pretrain] and not outcome["failed"]
    assert not (tmp_path / "out/cells/pretrain").exists()  # never started
    # from the command line: the pretraining has no finished cell alike (started); the fine-tuning's time comes
    # from scratch's fine-tuning (x 1.25 + 60 s > 30 s): deferred
    capsys.readouterr()
    assert bench_main(["run", str(path), "--stop-by", "+0.5m"]) == 3
    assert "deferred past --stop-by 1 (run the same command again to continue)" in capsys.readouterr().out
    assert finished_cells(matrix.results_csv) == {outcome["done"][0], pretrain}
    assert bench_main(["run", str(path)]) == 0
    assert tuned in finished_cells(matrix.results_csv)
    assert bench_main(["run", str(path), "--stop-by", "soon"]) == 2
    assert "zoo-bench: error: --stop-by 'soon': give an ISO 8601 time" in capsys.readouterr().err


def test_stop_by_parses_iso_and_relative_times_and_estimates_each_cell(tmp_path):
    from datetime import datetime, timezone

    from atomzoo.runner.__main__ import expected_wall_s, parse_stop_by

    now = datetime(2026, 12, 7, 20, 0, tzinfo=timezone.utc)
    assert parse_stop_by("+90m", now) - now.timestamp() == 5400
    assert parse_stop_by("+2h", now) - now.timestamp() == 7200
    assert parse_stop_by("+15", now) - now.timestamp() == 900
    assert parse_stop_by("2026-12-07T23:30+00:00", now) - now.timestamp() == 3.5 * 3600
    with pytest.raises(ValueError, match="already past"):
        parse_stop_by("2026-12-07T19:00+00:00", now)
    # a cell's expected wall time: the CPU time of the finished cells most alike x 1.25 + 60 s; one with none
    # alike: the longest of its phase among the cells to run; none of its phase at all: unknown (started)
    from types import SimpleNamespace

    from atomzoo.runner.matrix import Cell

    rows = [{"cell": f"ft/none/s{seed}", "phase": "finetune", "backbone": "painn", "objective": "none",
             "target": "homo", "label_budget": 100, "mode": "finetune", "seed": seed, "corruption_rate": 0.0,
             "corruption": "", "metric": "cpu_s", "step": "", "value": cpu} for seed, cpu in ((0, 400.0), (1, 800.0))]
    write_rows(tmp_path / "results.csv", rows)
    alike = Cell("ft/none/s2", "finetune", "painn", "none", [], "homo", 100, "finetune", 2)
    other = Cell("ft/x/s0", "finetune", "schnet", "denoising", [], "gap", 100, "finetune")
    new = Cell("pretrain/x", "pretrain", "schnet", "denoising", [])
    seconds = expected_wall_s(SimpleNamespace(results_csv=tmp_path / "results.csv"), [alike, other, new])
    assert seconds(alike) == seconds(other) == 600.0 * 1.25 + 60
    assert seconds(new) is None


def test_failed_pretraining_blocks_its_finetuning(cache_dir, tmp_path, capsys):
    path = write_matrix(tmp_path, {"none": None, "broken": "configs/objectives/no_such_objective.yaml"}, seeds=(0,))
    assert bench_main(["run", str(path), "--parallel", "2"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "failed 1" in out and "blocked by a failed pretraining 1" in out
    # not a terminal (a log file): the cell bar writes whole lines, no carriage-return redraws
    assert "\r" not in captured.err and "cell" in captured.err and len(captured.err.splitlines()) >= 2
    cells = tmp_path / "out/cells"
    assert "no_such_objective.yaml" in (cells / "pretrain/schnet/broken/c0/log.txt").read_text()
    assert not (cells / "finetune/schnet/broken").exists()
    assert (cells / "finetune/schnet/none/c0/homo/n64/finetune/s0/DONE.json").exists()  # the rest still runs


def test_kept_pretraining_weights_survive_a_fresh_checkout(cache_dir, tmp_path):
    """pretrain.keep: a weights-only copy beside results.csv (also for a cell finished before the key was
    set); with the run folders gone, fine-tuning starts from it and the pretraining is not run again."""
    from atomzoo import model_files

    path = write_matrix(tmp_path, {"denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["seeds"] = [0]  # ids end in /p0, as in the benchmark's matrices
    path.write_text(yaml.safe_dump(data))
    assert bench_main(["run", str(path), "--only", "^pretrain/"]) == 0
    out = tmp_path / "out"
    kept = out / "pretrained/pretrain/schnet/denoising/c0/p0.ckpt"
    assert not kept.exists()  # no copy without the key
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["keep"] = True
    path.write_text(yaml.safe_dump(data))
    assert bench_main(["run", str(path), "--only", "^pretrain/"]) == 0  # finished: skipped, but its copy is written
    run_ckpt = out / "cells/pretrain/schnet/denoising/c0/p0/run/checkpoints/last.ckpt"
    full, slim = torch.load(run_ckpt, weights_only=False), torch.load(kept, weights_only=False)
    assert "optimizer_states" in full and "optimizer_states" not in slim and "loops" not in slim
    assert slim["state_dict"].keys() == full["state_dict"].keys()
    assert all(torch.equal(slim["state_dict"][k], v) for k, v in full["state_dict"].items())
    assert kept.stat().st_size < run_ckpt.stat().st_size
    assert model_files.read(kept).kind == "checkpoint"
    pretrain_rows = pd.read_csv(out / "results.csv")
    shutil.rmtree(out / "cells")  # a fresh checkout: run folders are not committed
    assert bench_main(["run", str(path)]) == 0
    finetune = out / "cells/finetune/schnet/denoising/c0/p0/homo/n64/finetune/s0"
    assert f"--model.init_from {kept}" in (finetune / "log.txt").read_text().splitlines()[0]
    assert (finetune / "DONE.json").exists() and not (out / "cells/pretrain").exists()  # not run again
    after = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(after[after["phase"] == "pretrain"].reset_index(drop=True), pretrain_rows,
                                  check_dtype=False)
    # the shipped-models script exports from the copy too (no pretraining run folder in this checkout)
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_pretrained", ROOT / "benchmarks" / "export_pretrained.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    written = export.export_all(out / "cells", out / "results.csv", tmp_path / "models", pattern="^pretrain/")
    assert [w.name for w in written] == ["schnet-denoising-qm9-p0.safetensors"]
    assert json.loads(export.card_path(written[0]).read_text())["source_checkpoint"] == str(kept)
    exported = model_files.read(written[0]).backbone_weights
    assert len(exported) > 5 and all(torch.equal(v, slim["state_dict"][f"backbone.{k}"]) for k, v in exported.items())


def test_lost_pretraining_weights_are_made_again(cache_dir, tmp_path, capsys):
    """Without pretrain.keep, a finished pretraining cell whose run folder holds no finished run (here: a
    rerun killed part-way, its checkpoints those of unfinished training; or the folder gone) runs again
    before its fine-tuning, instead of blocking it or handing it unfinished weights; its rows are
    replaced, not duplicated."""
    path = write_matrix(tmp_path, {"denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["args"] += ["--trainer.val_check_interval", "1"]  # a validation curve to compare the remake on
    path.write_text(yaml.safe_dump(data))
    assert bench_main(["run", str(path), "--only", "^pretrain/"]) == 0
    out = tmp_path / "out"
    first = pd.read_csv(out / "results.csv").query("metric == 'wall_s'")["value"].item()
    (out / "cells/pretrain/schnet/denoising/c0/DONE.json").unlink()  # its checkpoints stay
    assert bench_main(["run", str(path), "--only", "^finetune/"]) == 0
    printed = capsys.readouterr().out
    assert "is finished but its weights are gone" in printed
    # the remade run is compared with the earlier one: same seed, same code -> the same validation losses
    remake = pd.read_csv(out / "results.csv").query("phase == 'pretrain'").set_index("metric")["value"]
    checks, diff = int(remake["remake_val_checks"]), float(remake["remake_val_loss_max_abs_diff"])
    assert checks >= 1 and diff < 1e-4, (checks, diff)
    assert (f"pretraining cell pretrain/schnet/denoising/c0 run again: val/loss identical to the earlier run's at all "
            f"{checks} validations" in printed) == (diff == 0)
    assert (out / "cells/pretrain/schnet/denoising/c0/DONE.json").exists()
    assert (out / "cells/finetune/schnet/denoising/c0/homo/n64/finetune/s0/DONE.json").exists()
    rows = pd.read_csv(out / "results.csv")
    assert (rows["metric"] == "wall_s").sum() == 2  # one row per cell: the pretraining's were replaced ...
    assert rows.query("phase == 'pretrain' and metric == 'wall_s'")["value"].item() != first  # ... by the new run's
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["keep"] = "yes"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="pretrain.keep must be true or false"):
        load_matrix(path)


def test_user_errors_end_in_one_line_naming_the_option(tmp_path, capsys, monkeypatch):
    """A bad option or a missing matrix file: exit status 2 and one line ``zoo-bench: error: ...`` naming it,
    no traceback (ATOMZOO_DEBUG=1 raises instead)."""
    path = write_matrix(tmp_path, {"none": None})
    for argv, says in ((["run", str(path), "--parallel", "0"], "--parallel must be at least 1"),
                       (["run", str(path), "--only", "(", "--list"], "--only '(' is not a regular expression"),
                       (["run", str(path), "--only", "nothing-like-this"],
                        "--only 'nothing-like-this' matches none of the"),
                       (["report", str(tmp_path / "absent.yaml")], "absent.yaml"),
                       (["run", str(tmp_path / "absent.yaml")], "matrix file")):
        capsys.readouterr()
        assert bench_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("zoo-bench: error: ") and says in err[-1], (argv, err)
        assert not any("Traceback" in line for line in err)
    monkeypatch.setenv("ATOMZOO_DEBUG", "1")
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
    assert "20.0 ± 0.0 | 22.0 ± 0.0 | 26.0 ± 1.4 | +30.0% | 31.0 ± 1.4 |" in lines[2]
    # per replicate: the clean MAE, then each kind's change at the largest rate, seed by seed (scd: clean only)
    from atomzoo.runner.report import noise_seed_table

    assert noise_seed_table(final_test_mae(pd.DataFrame(rows))).splitlines()[2:] == [
        "| painn | homo (meV) | 1000 | denoising | clean MAE | 20.0 | 20.0 |",
        "| painn | homo (meV) | 1000 | denoising | corruption 0.3 change | +5.0 | +7.0 |"]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    report = write_report(tmp_path).read_text()
    assert "## Noise robustness" in report and "noise_painn_homo_n1000.png" in report
    assert (tmp_path / "noise_painn_homo_n1000.png").stat().st_size > 0
    assert "noise_change_painn_homo_n1000.png" in report and (tmp_path / "noise_change_painn_homo_n1000.png").exists()
    # a stage matrix sharing this output writes a report of its own, results.md and its plots untouched
    main_report = (tmp_path / "results.md").read_text()
    stage = dataclasses.replace(load_matrix(write_matrix(tmp_path, {"none": None})),
                                output=tmp_path, report=("summary", "noise", "plots"), report_name="results_noise")
    text = write_report(stage).read_text()
    assert write_report(stage) == tmp_path / "results_noise.md"
    assert "## Noise robustness" in text and "](results_noise_noise_painn_homo_n1000.png)" in text
    assert (tmp_path / "results_noise_noise_painn_homo_n1000.png").stat().st_size > 0
    assert (tmp_path / "results.md").read_text() == main_report
    # the corrupted rows gone, the report's noise plots go with them; other files and reports' plots stay
    (tmp_path / "mine.png").write_bytes(b"x")
    pd.DataFrame([r for r in rows if r["corruption_rate"] == 0]).to_csv(tmp_path / "results.csv", index=False)
    report = write_report(tmp_path).read_text()
    assert "noise_painn_homo_n1000.png" not in report and not (tmp_path / "noise_painn_homo_n1000.png").exists()
    assert not (tmp_path / "noise_change_painn_homo_n1000.png").exists()
    assert (tmp_path / "mae_painn_finetune.png").exists() and (tmp_path / "mine.png").exists()
    assert (tmp_path / "results_noise_noise_painn_homo_n1000.png").exists()


def test_noise_section_compares_the_embedding_diagnostics_clean_and_corrupted():
    """Each pretraining run's diagnostic is the mean of its last 5 logged points; clean (shared) -> corrupted per kind."""
    from atomzoo.runner.report import noise_embedding_table

    rows = []
    for kind, rate, seeds, level in (("", 0.0, (0, 1), 1.0), ("displacement", 0.3, (0,), 3.0)):
        for seed in seeds:
            for step in range(10):  # the first 5 points (value 100) are before the tail
                value = 100.0 if step < 5 else level + seed
                for metric in ("curve:train/emb_std", "curve:train/emb_erank", "curve:train/emb_sigreg"):
                    rows.append({"cell": f"pretrain/painn/denoising/{kind}{rate}/p{seed}", "phase": "pretrain",
                                 "backbone": "painn", "objective": "denoising", "corruption_rate": rate,
                                 "corruption": kind, "seed": seed, "metric": metric, "step": 50 * step, "value": value})
    table = noise_embedding_table(pd.DataFrame(rows)).splitlines()
    train_row = table[2]
    assert len(table) == 3 and "std: clean -> corrupted" in table[0]
    assert table[2] == ("| painn | denoising | displacement | 0.3 | 1.50 ± 0.71 -> 3.00 (n = 1) "
                        "| 1.50 ± 0.71 -> 3.00 (n = 1) | 1.50 ± 0.71 -> 3.00 (n = 1) |")
    assert noise_embedding_table(pd.DataFrame([r for r in rows if r["corruption_rate"] == 0])) == ""
    # on the clean validation molecules: each run's last validation, only runs that logged it (clean seed 1 here)
    assert noise_embedding_table(pd.DataFrame(rows), "val") == ""
    for kind, rate, seed, values in (("", 0.0, 1, (9.0, 2.0)), ("displacement", 0.3, 0, (7.0, 4.0))):
        for step, value in zip((999, 1999), values):  # the last validation counts
            for metric in ("curve:val/emb_std", "curve:val/emb_erank", "curve:val/emb_sigreg"):
                rows.append({"cell": f"pretrain/painn/denoising/{kind}{rate}/p{seed}", "phase": "pretrain",
                             "backbone": "painn", "objective": "denoising", "corruption_rate": rate,
                             "corruption": kind, "seed": seed, "metric": metric, "step": step, "value": value})
    table = noise_embedding_table(pd.DataFrame(rows), "val").splitlines()
    assert table[2] == ("| painn | denoising | displacement | 0.3 | 2.00 (n = 1) -> 4.00 (n = 1) "
                        "| 2.00 (n = 1) -> 4.00 (n = 1) | 2.00 (n = 1) -> 4.00 (n = 1) |")
    assert noise_embedding_table(pd.DataFrame(rows)).splitlines()[2] == train_row  # train/emb_* unchanged


def test_matrices_sharing_an_output_keep_separate_reports(tmp_path):
    """The stages of a study share one output folder (one results.csv): each names its own report, so one
    stage's report never overwrites another's (report_name), and a bad name is refused."""
    by_output: dict[Path, list[str]] = {}
    for path in sorted((ROOT / "benchmarks/matrices").glob("*.yaml")):
        matrix = load_matrix(path)
        by_output.setdefault(matrix.output, []).append(matrix.report_name)
    shared = {out: names for out, names in by_output.items() if len(names) > 1}
    assert Path("benchmarks/results/objectives_v2") in shared
    for out, names in shared.items():
        assert len(set(names)) == len(names), (out, names)
    path = write_matrix(tmp_path, {"none": None})
    raw = yaml.safe_load(path.read_text())
    for bad in ("results.md", "../elsewhere", ""):
        path.write_text(yaml.safe_dump({**raw, "report_name": bad}))
        with pytest.raises(ValueError, match="report_name must be a file name"):
            load_matrix(path)


def test_report_with_limits_a_stage_report_to_its_own_and_the_named_matrices_cells(tmp_path):
    """Stages sharing one results.csv: a matrix with ``report_with`` reports its own cells and those of the
    matrices it names (probes: their pretraining cells and the random networks of their backbones), not
    the other stages' rows; without the key every row is shown; a wrong file or output is refused."""
    main = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml"}, seeds=(0, 1))
    raw = yaml.safe_load(main.read_text())
    (tmp_path / "stage").mkdir()
    stage_path = tmp_path / "stage/stage.yaml"
    stage_raw = {**raw, "finetune": {**raw["finetune"], "targets": ["gap"]}, "report_name": "results_stage",
                 "report": ["summary", "probes"], "report_with": ["../matrix.yaml"]}
    stage_path.write_text(yaml.safe_dump(stage_raw))
    stage, main_matrix = load_matrix(stage_path), load_matrix(main)
    rows = []
    for cell in expand(main_matrix) + expand(stage) + [dataclasses.replace(expand(stage)[-1], id="other/stage/s0",
                                                                           target="u0")]:
        if cell.phase == "finetune":
            rows.append({**cell.labels, "metric": f"test/{cell.target}_mae_meV", "step": "", "value": 10.0})
    output = main_matrix.output
    output.mkdir(parents=True)
    write_rows(output / "results.csv", rows)
    probe_rows = [{"model": model, "backbone": backbone, "objective": objective, "seed": 0, "features": "backbone",
                   "metric": "ridge_mae", "target": "homo", "value": value, "commit": ""}
                  for model, backbone, objective, value in (
                      ("pretrain/schnet/denoising/c0/p0", "schnet", "denoising", 1.0),
                      ("pretrain/other/denoising/c0/p0", "other", "denoising", 2.0),
                      ("random/schnet/r0", "schnet", "random init", 3.0),
                      ("random/other/r0", "other", "random init", 4.0))]
    pd.DataFrame(probe_rows).to_csv(output / "probes.csv", index=False)
    assert {c.id for c in expand(main_matrix) + expand(stage)} == report_scope(stage)
    text = write_report(stage).read_text()
    assert text.startswith("# tiny (results_stage)")
    assert "homo n=64" in text and "gap n=64" in text and "u0" not in text
    assert "| schnet | denoising |" in text and "| schnet | random init |" in text and "| other |" not in text
    # its own cells only
    stage_path.write_text(yaml.safe_dump({**stage_raw, "report_with": []}))
    text = write_report(load_matrix(stage_path)).read_text()
    assert "gap n=64" in text and "homo n=64" not in text and "u0" not in text
    # no report_with: every row of results.csv, every probe
    stage_path.write_text(yaml.safe_dump({k: v for k, v in stage_raw.items() if k != "report_with"}))
    text = write_report(load_matrix(stage_path)).read_text()
    assert "homo n=64" in text and "gap n=64" in text and "u0 n=64" in text and "| other | random init |" in text
    stage_path.write_text(yaml.safe_dump({**stage_raw, "report_with": ["matrix.yaml"]}))
    with pytest.raises(ValueError, match="report_with names .*matrix.yaml.*relative to the matrix file's folder"):
        load_matrix(stage_path)
    main.write_text(yaml.safe_dump({**raw, "output": str(tmp_path / "elsewhere")}))
    stage_path.write_text(yaml.safe_dump(stage_raw))
    with pytest.raises(ValueError, match="whose output .*elsewhere is not this matrix's"):
        write_report(load_matrix(stage_path))


def test_several_corruption_kinds_expand_to_one_cell_per_kind_and_rate(tmp_path):
    """``corruption: {kinds: [...]}``: clean pretraining once (shared by every kind), then one cell per kind
    x nonzero rate, each passing its kind to the DataModule; a single ``kind`` keeps the ids it always had."""
    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["corruption"] = {"kinds": ["missing_hydrogens", "wrong_element"], "rates": [0.0, 0.1, 0.3]}
    path.write_text(yaml.safe_dump(data))
    cells = expand(load_matrix(path))
    pre = {c.id: c for c in cells if c.phase == "pretrain"}
    assert sorted(pre) == ["pretrain/schnet/denoising/c0", "pretrain/schnet/denoising/c0.1-missing_hydrogens",
                           "pretrain/schnet/denoising/c0.1-wrong_element", "pretrain/schnet/denoising/c0.3-missing_hydrogens",
                           "pretrain/schnet/denoising/c0.3-wrong_element"]
    cell = pre["pretrain/schnet/denoising/c0.3-wrong_element"]
    assert cell.args[cell.args.index("--data.corruption") + 1] == "wrong_element" and cell.corruption == "wrong_element"
    assert "--data.corruption" not in pre["pretrain/schnet/denoising/c0"].args
    ft = [c for c in cells if c.phase == "finetune" and c.objective == "denoising"]
    assert len(ft) == 5 and all(c.depends_on in pre and pre[c.depends_on].corruption == c.corruption for c in ft)
    assert {c.labels["corruption"] for c in ft} == {"", "missing_hydrogens", "wrong_element"}
    data["pretrain"]["corruption"] = {"kinds": ["garble"], "rates": [0.1]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="kinds .'garble'. not among"):
        load_matrix(path)
    data["pretrain"]["corruption"] = {"kind": "displacement", "rates": [0.0, 0.1]}
    path.write_text(yaml.safe_dump(data))
    assert "pretrain/schnet/denoising/c0.1" in {c.id for c in expand(load_matrix(path))}


def finetune_maes(objective: str, values: list[float], rate: float = 0.0, kind: str = "", budget: int = 1000,
                  target: str = "homo") -> list[dict]:
    """results.csv rows of fine-tuning cells (PaiNN, one per seed 0, 1, ...) whose test MAE is ``values``."""
    return [{"cell": f"{objective}{rate}{kind}{budget}{target}{seed}", "phase": "finetune", "backbone": "painn",
             "objective": objective, "target": target, "label_budget": budget, "mode": "finetune", "seed": seed,
             "corruption_rate": rate, "corruption": kind, "metric": f"test/{target}_mae_meV", "step": "", "value": value}
            for seed, value in enumerate(values)]


def test_noise_table_pairs_each_kind_with_clean_pretraining():
    """Per artifact kind: the MAE at each rate (clean shared), and the paired change at the largest rate
    with its 95 % interval; a change the interval does not exclude zero for is 'no'."""
    rows = []

    def add(objective, rate, kind, values):
        rows.extend(finetune_maes(objective, values, rate, kind))

    add("none", 0.0, "", [30.0, 31.0, 32.0])
    add("denoising", 0.0, "", [20.0, 21.0, 22.0])
    add("denoising", 0.3, "wrong_element", [25.0, 26.1, 26.9])    # +5, +5.1, +4.9: resolved
    add("denoising", 0.3, "missing_hydrogens", [19.0, 23.0, 21.0])  # -1, +2, -1: not resolved
    lines = noise_table(final_test_mae(pd.DataFrame(rows))).splitlines()
    assert len(lines) == 4
    wrong = next(line for line in lines if "wrong_element" in line)
    assert ("| 21.0 ± 1.0 | 26.0 ± 1.0 | +23.8% | 31.0 ± 1.0 | +5.00 [+4.75, +5.25] meV | yes, worse | "
            "+5.2 meV (+25.0%) |") in wrong  # the upper end, also as % of the same seeds' clean mean (21.0)
    missing = next(line for line in lines if "missing_hydrogens" in line)
    # a zero mean: no number of seeds resolves it; the largest degradation allowed: 4.303 * sd(1.73) / sqrt(3)
    assert missing.endswith("| no | +4.3 meV (+20.5%) |") and "+0.00 [" in missing
    # one corrupted seed so far: its relative change is against its own seed's clean run (20.0), not the
    # mean of all three clean seeds (21.0), which would mix the seeds' luck in
    rows = [r for r in rows if r["corruption"] != "missing_hydrogens" and not (r["corruption"] and r["seed"] > 0)]
    table = noise_table(final_test_mae(pd.DataFrame(rows))).splitlines()
    wrong = next(line for line in table if "wrong_element" in line)
    assert "| 21.0 ± 1.0 | 25.0 (n = 1) | +25.0% |" in wrong and "| +5.00 (n = 1) meV | – |" in wrong


def test_noise_table_says_how_many_seeds_would_resolve_a_change(tmp_path):
    """An unresolved paired change gives the seeds that would resolve it at the measured spread, and the
    paired-change plot is drawn for every backbone x target x budget with corrupted pretraining."""
    rows = []

    def add(objective, rate, kind, values):
        rows.extend(finetune_maes(objective, values, rate, kind))

    add("none", 0.0, "", [30.0, 31.0, 32.0])
    for objective in ("denoising", "scd"):
        add(objective, 0.0, "", [20.0, 21.0, 22.0])
        add(objective, 0.3, "displacement", [21.0, 24.0, 21.5])  # +1, +3, -0.5: unresolved at 3 seeds
    diffs = [1.0, 3.0, -0.5]
    needed = seeds_needed(statistics.fmean(diffs), statistics.stdev(diffs))
    assert needed is not None and needed > 3
    lines = noise_table(final_test_mae(pd.DataFrame(rows))).splitlines()
    mean, half = statistics.fmean(diffs), 4.303 * statistics.stdev(diffs) / 3 ** 0.5
    upper = f"| {mean + half:+.1f} meV ({100 * (mean + half) / 21.0:+.1f}%) |"
    assert len(lines) == 4 and all(line.endswith(f"| no ({needed}) {upper}") for line in lines[2:])
    # with the cells' CPU times: each missing replicate costs a corrupted and a clean pretraining + fine-tuning
    timing = [{**r, "cell": f"{r['cell']}", "metric": "cpu_s", "step": None, "value": 600.0}
              for r in rows if r["objective"] == "denoising"]
    timing += [{"cell": f"pretrain/{kind}{seed}", "phase": "pretrain", "backbone": "painn", "objective": "denoising",
                "corruption_rate": rate, "corruption": kind, "seed": seed, "metric": "cpu_s", "step": None,
                "value": cpu}
               for rate, kind, cpu in ((0.0, "", 1800.0), (0.3, "displacement", 3000.0)) for seed in (0, 1, 2)]
    frame = pd.DataFrame(rows + timing)
    line = next(line for line in noise_table(final_test_mae(frame), replicate_cpu_h(frame)).splitlines()
                if "| denoising |" in line)
    assert line.endswith(f"| no ({needed}, ~{(needed - 3) * (600 + 3000 + 600 + 1800) / 3600:.1f} CPU h more) {upper}"), line
    scd = next(line for line in noise_table(final_test_mae(frame), replicate_cpu_h(frame)).splitlines()
               if "| scd |" in line)
    assert scd.endswith(f"| no ({needed}) {upper}")  # no times recorded: no hours
    paths = noise_change_plots(final_test_mae(pd.DataFrame(rows)), tmp_path, prefix="x_")
    assert [p.name for p in paths] == ["x_noise_change_painn_homo_n1000.png"] and paths[0].stat().st_size > 0
    clean_only = [r for r in rows if r["corruption_rate"] == 0]
    assert noise_change_plots(final_test_mae(pd.DataFrame(clean_only)), tmp_path) == []


def test_noise_sensitivity_compares_each_objectives_change_with_denoisings(tmp_path):
    """A difference of paired changes per seed: an objective the artifact costs more than denoising in
    every seed is resolved 'more'; a kind denoising was not pretrained with has no row."""
    rows = []

    def add(objective, rate, kind, values):
        rows.extend(finetune_maes(objective, values, rate, kind))

    add("none", 0.0, "", [30.0, 31.0, 32.0])
    add("denoising", 0.0, "", [20.0, 21.0, 22.0])
    add("denoising", 0.3, "displacement", [21.0, 22.0, 23.5])  # changes +1, +1, +1.5
    add("scd", 0.0, "", [19.0, 20.0, 21.0])
    add("scd", 0.3, "displacement", [23.0, 24.1, 25.4])        # changes +4, +4.1, +4.4: 3, 3.1, 2.9 more
    add("scd", 0.3, "wrong_element", [19.0, 20.0, 21.0])       # denoising has no wrong_element run
    table = noise_sensitivity_table(final_test_mae(pd.DataFrame(rows)), "denoising")
    lines = table.splitlines()
    assert len(lines) == 3, table
    assert lines[2].startswith("| painn | displacement 0.3 | homo (meV) | 1000 | scd | +4.17 | +1.17 | +3.00 [")
    assert lines[2].endswith("| 3 | yes, more |")
    assert noise_sensitivity_table(final_test_mae(pd.DataFrame(rows)), "jepa_ema") == ""
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    report = write_report(tmp_path).read_text()
    assert "### Which objective is more sensitive to which artifact than denoising" in report
    assert lines[2] in report
    # unresolved, with the cells' CPU times: the missing replicates cost a corrupted and a clean run of both
    add("jepa", 0.0, "", [20.0, 21.0, 22.0])
    add("jepa", 0.3, "displacement", [21.0, 24.0, 22.0])  # changes +1, +3, 0: minus denoising's 0, +2, -1.5
    timing = [{**r, "metric": "cpu_s", "step": None, "value": 600.0} for r in rows
              if r["objective"] in ("jepa", "denoising") and r["corruption"] in ("", "displacement")]
    timing += [{"cell": f"pretrain/{o}/{kind}/{seed}", "phase": "pretrain", "backbone": "painn", "objective": o,
                "corruption_rate": rate, "corruption": kind, "seed": seed, "metric": "cpu_s", "step": None,
                "value": 1200.0} for o in ("jepa", "denoising") for rate, kind in ((0.0, ""), (0.3, "displacement"))
               for seed in (0, 1, 2)]
    frame = pd.DataFrame(rows + timing)
    diffs = [0.0, 2.0, -1.5]
    needed = seeds_needed(statistics.fmean(diffs), statistics.stdev(diffs))
    table = noise_sensitivity_table(final_test_mae(frame), "denoising", replicate_cpu_h(frame))
    jepa = next(line for line in table.splitlines()
                if "| jepa |" in line)
    assert jepa.endswith(f"| 3 | no ({needed}, ~{(needed - 3) * 4 * (600 + 1200) / 3600:.1f} CPU h more) |"), jepa


def test_budget_plot_draws_the_paired_change_against_scratch_per_label_budget(tmp_path):
    """One plot per backbone x target x mode fine-tuned at two or more label budgets; none for a single
    budget or without scratch."""
    rows = []

    def add(objective, budget, values, target="homo"):
        rows.extend(finetune_maes(objective, values, budget=budget, target=target))

    for budget, scale in ((100, 3.0), (1000, 1.0)):
        add("none", budget, [30.0 * scale, 31.0 * scale])
        add("denoising", budget, [25.0 * scale, 27.0 * scale])
    add("none", 1000, [10.0, 11.0], target="gap")  # one budget: no plot
    add("denoising", 1000, [9.0, 10.0], target="gap")
    paths = budget_plots(final_test_mae(pd.DataFrame(rows)), tmp_path, prefix="p_")
    assert [p.name for p in paths] == ["p_budget_painn_homo_finetune.png"] and paths[0].stat().st_size > 0
    no_scratch = [r for r in rows if r["objective"] != "none"]
    assert budget_plots(final_test_mae(pd.DataFrame(no_scratch)), tmp_path) == []
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    assert "](budget_painn_homo_finetune.png)" in write_report(tmp_path).read_text()


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


def test_committed_studies_are_finished_cells_of_their_matrices(tmp_path, capsys):
    """The parity study and the objective study are matrices of this runner: every cell of each is
    finished in its committed results.csv (nothing would be rerun), and the report regenerates the
    committed results.md exactly (the parity table of docs/benchmarks.md)."""
    for name, count in (("parity", 106), ("objective_study", 3)):
        matrix = load_matrix(ROOT / f"benchmarks/matrices/{name}.yaml")
        committed = ROOT / matrix.output
        assert {c.id for c in expand(matrix)} == finished_cells(committed / "results.csv")
        assert len(expand(matrix)) == count
        copy = dataclasses.replace(matrix, output=tmp_path / name)
        copy.output.mkdir()
        shutil.copy(committed / "results.csv", copy.output / "results.csv")
        assert write_report(copy).read_text() == (committed / "results.md").read_text()
    capsys.readouterr()
    assert bench_main(["run", str(ROOT / "benchmarks/matrices/parity.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith("106 cells selected, 106 finished "
                                                   "(rows in benchmarks/results/parity/results.csv), 0 to run")


def test_class_path_backbones_tasks_grids_and_comparisons(tmp_path):
    """What the parity study needs, as general matrix features: backbones by class path, tasks with a
    data config, metric and per-backbone init_args of their own, grids with their own seeds and budgets."""
    matrix = {
        "name": "pairs", "output": str(tmp_path / "out"), "pythonpath": ["benchmarks"],
        "backbones": {"ours": {"class_path": "atomzoo.backbones.SchNet", "init_args": {"width": 16, "cutoff": 5.0}},
                      "ref": {"class_path": "parity_adapters.PygSchNet", "init_args": {"width": 16, "cutoff": 5.0}}},
        "compare": {"schnet": {"backbone": ["ours", "ref"]}},
        "finetune": {"objective": "configs/objectives/regression.yaml", "data": "configs/data/qm9.yaml",
                     "tasks": {"homo": {"args": ["--data.targets", "[homo]"], "metric": "test/homo_mae_meV"},
                               "forces": {"data": "configs/data/rmd17.yaml", "metric": "test/forces_mae_meV_per_A",
                                          "overrides": {"ref": {"num_rbf": 8}}}},
                     "label_budgets": [1000], "seeds": [0, 1, 2], "args": ["--trainer.max_steps", "600"],
                     "grids": [{"tasks": ["homo"], "seeds": [0, 1, 2, 3, 4]},
                               {"tasks": ["forces"], "label_budgets": [300]}]},
    }
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(matrix))
    cells = expand(load_matrix(path))
    assert len(cells) == 2 * 5 + 2 * 3 and not any(c.phase == "pretrain" for c in cells)
    ref = next(c for c in cells if c.backbone == "ref" and c.target == "forces")
    assert ref.id == "finetune/ref/none/c0/forces/n300/finetune/s0"
    assert ref.args[:4] == ["-c", "configs/data/rmd17.yaml", "-c", "configs/objectives/regression.yaml"]
    assert ref.args[4:6] == ["--model.backbone.class_path", "parity_adapters.PygSchNet"]
    assert ref.args[ref.args.index("--model.backbone.init_args.num_rbf") + 1] == "8"  # the task's override
    ours = next(c for c in cells if c.backbone == "ours" and c.target == "homo")
    assert "--model.backbone.init_args.num_rbf" not in ours.args and "[homo]" in ours.args
    for bad, message in ((dict(matrix, compare={"x": {"backbone": ["ours", "nope"]}}), "compare.x.backbone must name"),
                         (dict(matrix, typo=1), r"unknown key\(s\) \['typo'\]"),
                         (dict(matrix, finetune={**matrix["finetune"], "grids": [{"tasks": ["u0"]}]}),
                          r"grids\[0\].tasks names \['u0'\]")):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=message):
            load_matrix(path)


def test_compare_table_pairs_by_seed_and_applies_the_acceptance_line(tmp_path):
    rows = []

    def add(backbone, target, values, wall=10.0):
        for seed, value in enumerate(values):
            labels = {"cell": f"{backbone}/{target}/{seed}", "phase": "finetune", "backbone": backbone,
                      "objective": "none", "target": target, "label_budget": 1000, "mode": "finetune", "seed": seed,
                      "corruption_rate": 0.0, "step": ""}
            metrics = {"test/homo_mae_meV": value, "wall_s": wall, "max_steps": 600, "batch_size": 32}
            rows.extend({**labels, "metric": metric, "value": v} for metric, v in metrics.items())

    add("ours", "good", [10.0, 12.0, 14.0])
    add("ref", "good", [11.0, 12.0, 13.0], wall=20.0)
    add("ours", "bad", [20.0, 21.0, 22.0])
    add("ref", "bad", [11.0, 12.0, 13.0])
    add("ours", "few", [10.0])
    add("ref", "few", [11.0, 12.0])
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    frame = load(tmp_path / "results.csv")
    metrics = {t: "test/homo_mae_meV" for t in ("good", "bad", "few")}
    lines = compare_table(frame, [Comparison("x", "backbone", "ours", "ref")], metrics).splitlines()
    assert lines[2] == ("| x | bad | test/homo_mae_meV | 600 x 32 (1000) | 21.0 +- 1.0 (3) | 12.0 +- 1.0 (3) | "
                        "+9.0 +- 0.0 (3) | **no** | 10 / 10 |")
    assert lines[3].endswith("| (< 3 seeds) | 10 / 10 |") and "-1.0 +- nan (1)" in lines[3]
    assert lines[4] == ("| x | good | test/homo_mae_meV | 600 x 32 (1000) | 12.0 +- 2.0 (3) | 12.0 +- 1.0 (3) | "
                        "+0.0 +- 1.0 (3) | yes | 10 / 20 |")


def test_pretraining_only_matrix_with_curves_and_probe(cache_dir, tmp_path):
    """A pretraining-only matrix (the objective study's shape) with curves in the report; its cell's
    compute settings are recorded; ``zoo-bench probe`` fits the closed-form probe of its backbone."""
    matrix = {
        "name": "ssl", "output": str(tmp_path / "out"), "report": ["probes", "pretraining", "curves"],
        "backbones": {"schnet": {"config": str(ROOT / "configs/backbones/schnet.yaml"), "overrides": TINY}},
        "objectives": {"denoising": str(ROOT / "configs/objectives/denoising.yaml"),
                       "jepa_sigreg": str(ROOT / "configs/objectives/jepa_sigreg.yaml"),
                       "scd": str(ROOT / "configs/objectives/scd.yaml")},
        "pretrain": {"data": str(ROOT / "configs/data/qm9.yaml"),
                     "args": ["--data.targets", "null", *STEPS, "--trainer.val_check_interval", "1"]},
    }
    path = tmp_path / "ssl.yaml"
    matrix["report"].append("noise")
    matrix["pretrain"]["corruption"] = {"kinds": ["wrong_element"], "rates": [0.0, 0.5]}
    path.write_text(yaml.safe_dump(matrix))
    assert bench_main(["run", str(path)]) == 0
    out, cell = tmp_path / "out", tmp_path / "out/cells/pretrain/schnet/denoising/c0"
    rows = read_rows(out / "results.csv")
    settings = {r["metric"]: r["value"] for r in rows if r["step"] == ""}
    clean = "pretrain/schnet/denoising/c0"
    settings = {r["metric"]: r["value"] for r in rows if r["step"] == "" and r["cell"] == clean}
    assert settings["max_steps"] == "3" and settings["batch_size"] == "8" and float(settings["wall_s"]) > 0
    assert sorted(int(r["step"]) for r in rows if r["metric"] == "curve:val/loss" and r["cell"] == clean) == [0, 1, 2]
    report = (out / "results.md").read_text()
    assert "## Pretraining curves" in report and "### pretrain/schnet/denoising/c0" in report
    assert "| backbone | pretraining |" in report and "## Cost" not in report  # only the sections asked for
    result = closed_form_probe(cell / "run", "homo", train_size=64)
    assert result["unit"] == "meV" and result["molecules"] > 10000 and 0 < result["mae"] < 5000
    # the matrix's probes: every finished pretraining cell and 2 random networks, into probes.csv
    probes = probe_matrix(load_matrix(path), train_size=64, random_nets=2, mlp_steps=30, val_size=64, limit=256)
    frame = pd.read_csv(probes, keep_default_na=False)
    assert set(frame["model"]) == {"pretrain/schnet/denoising/c0", "pretrain/schnet/jepa_sigreg/c0",
                                   "pretrain/schnet/scd/c0", "random/schnet/r0", "random/schnet/r1",
                                   "pretrain/schnet/denoising/c0.5-wrong_element", "pretrain/schnet/jepa_sigreg/c0.5-wrong_element",
                                   "pretrain/schnet/scd/c0.5-wrong_element"}  # the networks pretrained on corrupted data too
    assert set(zip(frame["model"], frame["corruption_rate"].astype(str), frame["corruption"])) >= {
        ("pretrain/schnet/scd/c0.5-wrong_element", "0.5", "wrong_element"), ("pretrain/schnet/scd/c0", "0.0", ""),
        ("random/schnet/r0", "", "")}
    noise_rows = frame[frame["corruption_rate"].astype(str) == "0.5"]
    for name in ("jepa_sigreg", "scd"):  # JEPA's projector output; SCD's condition (its embed)
        rows = frame[frame["objective"] == name]
        assert set(zip(rows["features"], rows["metric"])) == {
            ("backbone", "ridge_mae"), ("backbone", "mlp_mae"), ("projector", "ridge_mae"),
            *((f, m) for f in ("backbone", "projector") for m in ("emb_std", "emb_erank", "emb_sigreg"))}, name
    assert "projector" not in set(frame[frame["objective"] == "denoising"]["features"])
    mae = frame[frame["metric"].isin(["ridge_mae", "mlp_mae"])]["value"].astype(float)
    assert ((mae > 0) & (mae < 5000)).all()
    random = frame[(frame["objective"] == "random init") & (frame["metric"] == "ridge_mae")]["value"].astype(float)
    assert random.nunique() == 2  # two different random networks
    stamp = probes.stat().st_mtime_ns
    probe_matrix(load_matrix(path), train_size=64, random_nets=2, mlp_steps=30, val_size=64, limit=256)
    assert probes.stat().st_mtime_ns == stamp  # every model already probed: nothing recomputed
    bench_main(["report", str(path)])
    report = (out / "results.md").read_text()
    assert "## Probes of the frozen pretrained networks" in report and "| schnet | random init | 2 |" in report
    assert "| schnet | denoising | 1 |" in report  # the clean networks only: the corrupted ones are not averaged in
    # the noise section pairs each corrupted network's probes with its clean twin's (same seed)
    assert "### Probes of the frozen backbones, clean -> corrupted pretraining" in report
    line = next(x for x in report.splitlines() if x.startswith("| schnet | denoising | wrong_element 0.5 | 1 |"))
    ridge = {c: float(frame[(frame["model"] == f"pretrain/schnet/denoising/{c}") & (frame["metric"] == "ridge_mae")
                            & (frame["features"] == "backbone")]["value"].iloc[0]) for c in ("c0", "c0.5-wrong_element")}
    assert line.split("|")[5].strip() == f"{ridge['c0.5-wrong_element'] - ridge['c0']:+.1f} (n = 1)"
    assert " -> " in line.split("|")[7] and len(noise_rows) > 0
    # a fresh checkout: run folders gone, pretrain.keep copies in place -> the same probes, from the copies
    matrix["pretrain"]["keep"] = True
    path.write_text(yaml.safe_dump(matrix))
    assert bench_main(["run", str(path)]) == 0  # every cell finished: only the copies are written
    shutil.rmtree(out / "cells")
    before = pd.read_csv(probes, keep_default_na=False)
    again_models = ["pretrain/schnet/scd/c0", "random/schnet/r1"]
    before[~before["model"].isin(again_models)].to_csv(probes, index=False)
    probe_matrix(load_matrix(path), train_size=64, random_nets=2, mlp_steps=30, val_size=64, limit=256)
    again = pd.read_csv(probes, keep_default_na=False)
    for model in again_models:
        old, new = (f[f["model"] == model].set_index(["features", "metric"])["value"].astype(float).sort_index()
                    for f in (before, again))
        pd.testing.assert_series_equal(old, new, rtol=1e-4)
    # weights lost (no run folder, no copy): that network is left out with one line saying how to remake it
    lost = "pretrain/schnet/jepa_sigreg/c0.5-wrong_element"
    (out / "pretrained" / f"{lost}.ckpt").unlink()
    again[again["model"] != lost].to_csv(probes, index=False)
    messages = []
    probe_matrix(load_matrix(path), train_size=64, random_nets=2, mlp_steps=30, val_size=64, limit=256,
                 log=messages.append)
    assert lost not in set(pd.read_csv(probes, keep_default_na=False)["model"])
    assert messages == [f"not probed: 1 finished pretraining cells whose weights are gone (no finished run folder "
                        f"under {out / 'cells'}, no pretrain.keep copy under {out / 'pretrained'}): {lost}; remake "
                        "one with zoo-bench run MATRIX --only '^<id>$' --rerun to probe it"]


def test_noise_probes_table_pairs_each_corrupted_network_with_its_clean_twin(tmp_path):
    """The noise section's probe table: per seed, corrupted minus clean probe MAE of the same pretraining seed,
    paired t over seeds (a seed without its clean twin is left out); diagnostics as clean -> corrupted means;
    the clean table of the probes section never averages corrupted networks in."""
    from atomzoo.runner.paired import paired_interval
    from atomzoo.runner.probe import PROBE_COLUMNS, noise_probes_table, probes_table

    rows = []
    clean = {0: 250.0, 1: 254.0, 2: 251.0}
    corrupt = {0: 255.0, 1: 256.0, 2: 257.5, 3: 260.0}  # seed 3 has no clean twin
    for rate, values in ((0.0, clean), (0.3, corrupt)):
        for seed, ridge in values.items():
            model = f"pretrain/painn/denoising/c{rate:g}" + ("-wrong_element" if rate else "") + f"/p{seed}"
            for metric, value in (("ridge_mae", ridge), ("mlp_mae", ridge + 10), ("emb_erank", 20.0 - 5 * rate)):
                rows.append({"model": model, "backbone": "painn", "objective": "denoising", "seed": seed,
                             "features": "backbone", "metric": metric, "target": "homo", "value": value,
                             "commit": "x", "corruption_rate": rate, "corruption": "wrong_element" if rate else ""})
    rows.append({**rows[0], "model": "random/painn/r0", "objective": "random init", "corruption_rate": "",
                 "corruption": ""})
    write_rows(tmp_path / "probes.csv", rows, PROBE_COLUMNS)
    table = noise_probes_table(tmp_path).splitlines()
    assert len(table) == 3
    mean, half = paired_interval([5.0, 2.0, 6.5])
    cells = [c.strip() for c in table[2].split("|")]
    assert cells[1:5] == ["painn", "denoising", "wrong_element 0.3", "3"]
    assert cells[5] == cells[6] == f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"
    assert cells[7] == "20 -> 18.5"
    assert "| painn | denoising | 3 | 251.7 ± 2.08 |" in probes_table(tmp_path)  # clean seeds 0-2 only
    assert noise_probes_table(tmp_path, models={"pretrain/painn/denoising/c0/p0"}) == ""  # out of scope


def test_ridge_and_mlp_probes_recover_a_known_readout():
    """The probes fit what the features determine: a target that is the mean over atoms of a nonlinear
    per-atom function is read almost exactly by the MLP probe, and its linear part by the ridge probe."""
    from atomzoo.runner.probe import Features, mlp_probe_mae, ridge_mae

    generator = torch.Generator().manual_seed(0)

    def split(molecules):
        sizes = torch.randint(3, 9, (molecules,), generator=generator)
        index = torch.repeat_interleave(torch.arange(molecules), sizes)
        atoms = torch.randn(len(index), 8, generator=generator)
        per_atom = atoms[:, 0] + 0.5 * torch.tanh(atoms[:, 1])
        y = scatter(per_atom, index, 0, reduce="mean").double().numpy()
        pooled = scatter(atoms, index, 0, reduce="mean").double().numpy()
        return Features(atoms, index, pooled, None, y)

    train, val, test = split(2000), split(200), split(500)
    spread = float(np.abs(test.y - test.y.mean()).mean())
    linear = scatter(test.atoms[:, 0], test.index, 0, reduce="mean").double().numpy()
    assert ridge_mae(train.pooled, train.y, test.pooled, test.y) < 0.3 * spread
    assert ridge_mae(train.pooled, train.y, test.pooled, linear) < 0.3 * spread  # reads the linear part
    assert mlp_probe_mae(train, val, test, steps=600, batch_size=64, lr=3e-3) < 0.1 * spread
    shuffled = Features(train.atoms, train.index, train.pooled, None, np.random.default_rng(0).permutation(train.y))
    assert ridge_mae(shuffled.pooled, shuffled.y, test.pooled, test.y) > 0.8 * spread  # no signal, no fit


def test_unfinished_cell_resumes_from_its_checkpoint(cache_dir, tmp_path, capsys):
    """A cell whose rows are missing but whose folder holds a checkpoint continues from it (same model,
    same test MAE) instead of starting over; a cell with rows is finished, folder or not."""
    path = write_matrix(tmp_path, {"none": None}, seeds=(0,))
    assert bench_main(["run", str(path)]) == 0
    out = tmp_path / "out"
    cell = out / "cells/finetune/schnet/none/c0/homo/n64/finetune/s0"
    mae = [r["value"] for r in read_rows(out / "results.csv") if r["metric"] == "test/homo_mae_meV"]
    write_rows(out / "results.csv", [])  # as if killed after the last checkpoint, before its rows were written
    assert bench_main(["run", str(path)]) == 0
    attempts = (cell / "log.txt").read_text()
    assert "--ckpt_path" not in attempts.splitlines()[0]  # the first attempt's log is kept, the resume appended
    assert f"--ckpt_path {cell / 'run/checkpoints'}" in attempts
    assert [r["value"] for r in read_rows(out / "results.csv") if r["metric"] == "test/homo_mae_meV"] == mae
    shutil.rmtree(cell)
    capsys.readouterr()
    assert bench_main(["run", str(path), "--dry-run"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.endswith(f"1 cells selected, 1 finished (rows in {out / 'results.csv'}), 0 to run")


def test_finished_pretraining_without_its_weights_is_planned_again(tmp_path, capsys):
    """--dry-run shows the remake: a finished pretraining cell with no weights runs again before its fine-tuning."""
    path = write_matrix(tmp_path, {"denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    matrix = load_matrix(path)
    labels = next(c for c in expand(matrix) if c.phase == "pretrain").labels
    write_rows(matrix.results_csv, [{**labels, "metric": "wall_s", "step": "", "value": 1.0}])
    assert bench_main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pretraining cell pretrain/schnet/denoising/c0 is finished but its weights are gone" in out
    commands = [line for line in out.splitlines() if "atomzoo.cli fit" in line]
    assert len(commands) == 2 and "--model.init_from" not in commands[0] and "--model.init_from" in commands[1]
    assert "0 finished" in out and "2 to run (1 of them finished, run again" in out
    assert "# cost: unknown (no finished cell of the same phase and backbone or objective" in out  # no CPU time recorded


def test_dry_run_estimates_the_cpu_hours_from_the_finished_cells_most_alike(tmp_path):
    """Each cell to run costs the median CPU time of the finished cells most like it: the same kind at another
    seed, else the same objective on another task or backbone (counted as rough), else nothing (unknown, not
    zero)."""
    from atomzoo.runner.matrix import Cell
    from atomzoo.runner.report import estimated_cpu_h

    def row(cell, phase, objective, cpu, target="", budget="", mode="", rate=0.0, kind=""):
        return {"cell": cell, "phase": phase, "backbone": "painn", "objective": objective, "target": target,
                "label_budget": budget, "mode": mode, "seed": 0, "corruption_rate": rate, "corruption": kind,
                "metric": "cpu_s", "step": "", "value": cpu}

    rows = [row("pretrain/denoising/p0", "pretrain", "denoising", 3600.0),
            row("pretrain/denoising/wrong/p0", "pretrain", "denoising", 1800.0, rate=0.3, kind="wrong_element"),
            row("ft/none/s0", "finetune", "none", 360.0, "homo", 100, "finetune"),
            row("ft/none/s1", "finetune", "none", 720.0, "homo", 100, "finetune"),
            row("ft/none/s2", "finetune", "none", 900.0, "homo", 100, "finetune"),
            row("ft/denoising/s0", "finetune", "denoising", 600.0, "homo", 100, "finetune")]
    rows.append({**rows[-1], "cell": "ft/denoising/s9", "metric": "resumed", "value": 1.0})  # resumed, no clock
    rows.append({**rows[-1], "metric": "cpu_s", "value": 99999.0})  # so its whole CPU time is unknown: ignored
    write_rows(tmp_path / "results.csv", rows)
    frame = load(tmp_path / "results.csv")
    todo = [Cell("ft/none/s3", "finetune", "painn", "none", [], "homo", 100, "finetune", 3),  # 720 (median)
            Cell("ft/denoising/gap", "finetune", "painn", "denoising", [], "gap", 100, "finetune"),  # 600, rough
            Cell("pretrain/denoising/p1", "pretrain", "painn", "denoising", []),  # 3600: the clean one
            Cell("pretrain/denoising/wrong/p1", "pretrain", "painn", "denoising", [], corruption_rate=0.3,
                 corruption="wrong_element"),  # 1800: the same corruption
            # no SchNet cell finished: PaiNN's denoising pretraining runs (median of 3600 and 1800), rough
            Cell("pretrain/schnet/p0", "pretrain", "schnet", "denoising", []),
            Cell("pretrain/schnet/scd/p0", "pretrain", "schnet", "scd", [])]  # no SchNet, no SCD finished: unknown
    hours, unknown, rough = estimated_cpu_h(frame, todo)
    assert (unknown, rough) == (1, 2)
    assert hours == pytest.approx((720 + 600 + 3600 + 1800 + 2700) / 3600)


def test_pretrain_seeds_pairing_order_and_early_stopping_arguments(tmp_path):
    """Pretraining seeds: fine-tuning seed k starts from pretraining seed k ("same"), or from each of a
    list; ``order: seeds`` runs replicate by replicate (scratch, then each objective's pretraining
    and fine-tuning); an objective's ``pretrain_args`` come last; early stopping monitors the task's MAE."""
    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml",
                                   "denoising_long": {"config": "configs/objectives/denoising.yaml",
                                                      "pretrain_args": ["--trainer.max_steps", "6"]}}, seeds=(0, 1))
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["seeds"] = [0, 1]
    data["finetune"]["early_stopping"] = {"patience": 5}
    data["order"] = "seeds"
    data["objectives"] = {k: data["objectives"][k] for k in ("none", "denoising", "denoising_long")}
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # the matrix's objective order is the run order
    cells = expand(load_matrix(path))
    assert [c.id for c in cells] == [
        "finetune/schnet/none/c0/homo/n64/finetune/s0",
        "pretrain/schnet/denoising/c0/p0", "finetune/schnet/denoising/c0/p0/homo/n64/finetune/s0",
        "pretrain/schnet/denoising_long/c0/p0", "finetune/schnet/denoising_long/c0/p0/homo/n64/finetune/s0",
        "finetune/schnet/none/c0/homo/n64/finetune/s1",
        "pretrain/schnet/denoising/c0/p1", "finetune/schnet/denoising/c0/p1/homo/n64/finetune/s1",
        "pretrain/schnet/denoising_long/c0/p1", "finetune/schnet/denoising_long/c0/p1/homo/n64/finetune/s1"]
    by_id = {c.id: c for c in cells}
    assert by_id["finetune/schnet/denoising/c0/p1/homo/n64/finetune/s1"].depends_on == "pretrain/schnet/denoising/c0/p1"
    pre = by_id["pretrain/schnet/denoising_long/c0/p1"]
    assert pre.args[-4:] == ["--trainer.max_steps", "6", "--seed_everything", "1"] and pre.seed == 1
    ft = by_id["finetune/schnet/denoising/c0/p1/homo/n64/finetune/s1"]
    assert ft.labels["pretrain_seed"] == 1 and ft.labels["seed"] == 1
    assert ft.args[ft.args.index("--trainer.callbacks.monitor") + 1] == "val/homo_mae_meV"
    assert ft.args[ft.args.index("--trainer.callbacks.patience") + 1] == "5"
    assert by_id["finetune/schnet/none/c0/homo/n64/finetune/s0"].labels["pretrain_seed"] == ""
    data["finetune"]["pretrain_seeds"] = [0, 1]  # every fine-tuning seed from every pretraining seed
    data["order"] = "matrix"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cells = expand(load_matrix(path))
    assert sum(c.objective == "denoising" and c.phase == "finetune" for c in cells) == 4
    assert cells[0].phase == "pretrain"  # matrix order: pretraining first
    for bad, message in (({"pretrain_seeds": "same", "seeds": [0, 3]}, r"fine-tuning seeds \[3\] are not among"),
                         ({"early_stopping": {"patience": 3, "typo": 1}}, r"unknown key\(s\) \['typo'\]"),
                         ({"early_stopping": {"min_delta": 1}}, "needs|must be a mapping with 'patience'")):
        path.write_text(yaml.safe_dump({**data, "finetune": {**data["finetune"], **bad}}))
        with pytest.raises(ValueError, match=message):
            load_matrix(path)


def _git_repo(folder: Path) -> Path:
    import subprocess

    folder.mkdir(parents=True)
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=folder, check=True)
    return folder


def test_a_cell_run_with_uncommitted_changes_records_them_as_a_patch(tmp_path):
    """code_version: a clean checkout is its commit; a dirty one is ``<commit>+dirty:<h>`` with the
    difference kept as ``<patches>/<h>.diff``, which applied to that commit gives the code that ran."""
    import subprocess

    from atomzoo.runner.execute import code_version

    repo = _git_repo(tmp_path / "repo")
    (repo / "model.py").write_text("width = 64\n")
    (repo / "benchmarks/results").mkdir(parents=True)
    (repo / "benchmarks/results/results.csv").write_text("cell\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "one"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    patches = tmp_path / "patches"
    (repo / "benchmarks/results/results.csv").write_text("cell\nx\n")  # results are not code
    assert code_version(repo, patches) == head and not patches.exists()
    (repo / "model.py").write_text("width = 128\n")
    version = code_version(repo, patches)
    commit, name = version.split("+dirty:")
    assert commit == head and len(name) == 12 and sorted(p.name for p in patches.iterdir()) == [f"{name}.diff"]
    assert code_version(repo, patches) == version  # the same changes: the same patch, written once
    assert code_version(repo) == f"{head}+dirty"
    # the patch holds the code change and nothing of benchmarks/results; applied to the commit it gives the
    # code that ran
    patch = (patches / f"{name}.diff").read_text()
    assert "width = 128" in patch and "results.csv" not in patch
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    subprocess.run(["git", "apply", str(patches / f"{name}.diff")], cwd=clone, check=True)
    assert (clone / "model.py").read_text() == "width = 128\n"


def test_early_stopping_cpu_time_provenance_and_committed_results(cache_dir, tmp_path):
    """One real fine-tuning cell under early stopping (min_delta so large that only the first check
    counts as an improvement: it must stop after 1 + patience checks, well before its cap), with
    --commit-results: its row records CPU time, steps, how it ended, the code version and the command,
    and results.csv is committed alone."""
    import subprocess

    repo = _git_repo(tmp_path / "repo")
    (repo / "other.txt").write_text("staged, not to be committed by the runner")
    subprocess.run(["git", "add", "other.txt"], cwd=repo, check=True)
    path = write_matrix(tmp_path, {"none": None}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["output"] = str(repo / "out")
    data["finetune"]["args"] = [*STEPS, "--trainer.max_steps", "40", "--trainer.val_check_interval", "2",
                                "--trainer.check_val_every_n_epoch", "null"]
    data["finetune"]["early_stopping"] = {"patience": 2, "min_delta": 1.0e9}
    path.write_text(yaml.safe_dump(data))
    before = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert bench_main(["run", str(path), "--commit-results"]) == 0
    rows = read_rows(repo / "out/results.csv")
    final = {r["metric"]: r for r in rows if r["step"] == ""}
    assert float(final["cpu_s"]["value"]) > 1.0 and final["resumed"]["value"] == "0"
    # the run's checkpointed training clock: one attempt, part of the process's CPU time (no start-up or test)
    assert float(final["train_attempts"]["value"]) == 1 and final["train_clock_complete"]["value"] == "1"
    assert 0 < float(final["train_cpu_s"]["value"]) == float(final["train_attempt_cpu_s"]["value"]) < float(
        final["cpu_s"]["value"])
    assert final["stopped_early"]["value"] == "1" and final["hit_cap"]["value"] == "0"
    # checks after steps 2, 4, 6; the best is the first
    assert final["steps"]["value"] == "6" and final["best_step"]["value"] == "2"
    assert "atomzoo.cli fit" in final["wall_s"]["command"] and "EarlyStopping" in final["wall_s"]["command"]
    # the commit checked out when the cell started: this checkout's HEAD, or a later one where a background job
    # (a benchmark queue committing its results) committed meanwhile
    recorded = {r["commit"].split("+dirty:")[0] for r in rows}
    assert len(recorded) == 1
    for older, newer in ((before, *recorded), (*recorded, "HEAD")):
        assert subprocess.run(["git", "merge-base", "--is-ancestor", older, newer], cwd=ROOT).returncode == 0
    assert any(r["metric"] == "curve:val/homo_mae_meV" for r in rows)  # the validation curve is kept
    log = subprocess.run(["git", "log", "--format=%s", "--name-only"], cwd=repo, capture_output=True, text=True).stdout
    # the results file, committed alone; before it, when this checkout has uncommitted changes, their patch
    dirty = final["wall_s"]["commit"].partition("+dirty:")[2]
    assert log.split() == ["tiny:", "cell", "finetune/schnet/none/c0/homo/n64/finetune/s0", "out/results.csv"] + (
        ["tiny:", "uncommitted", "changes", "cell", "finetune/schnet/none/c0/homo/n64/finetune/s0", "ran", "with",
         f"out/patches/{dirty}.diff"] if dirty else [])
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True)
    assert staged.stdout.split() == ["other.txt"]  # left as it was


def test_commit_results_file_waits_for_the_index_lock_and_never_fails(tmp_path, capsys):
    import threading

    from atomzoo.runner.execute import commit_results_file

    lone = tmp_path / "not_a_repo" / "results.csv"
    lone.parent.mkdir()
    lone.write_text("a\n")
    assert commit_results_file(lone, "m", attempts=2, wait_s=0.01) is False
    assert "could not commit" in capsys.readouterr().out + capsys.readouterr().err
    repo = _git_repo(tmp_path / "repo")
    (repo / "results.csv").write_text("a\n")
    lock = repo / ".git/index.lock"
    lock.write_text("")
    threading.Timer(0.5, lock.unlink).start()
    assert commit_results_file(repo / "results.csv", "m: cell x", attempts=5, wait_s=0.3) is True
    assert commit_results_file(repo / "results.csv", "m: cell x") is True  # nothing new: fine


def _finetune_rows(values: dict[str, list[float]], budget: int = 1000) -> list[dict]:
    rows = []
    for objective, maes in values.items():
        for seed, value in enumerate(maes):
            rows.append({"cell": f"{objective}/{seed}", "phase": "finetune", "backbone": "painn",
                         "objective": objective, "target": "homo", "label_budget": budget, "mode": "finetune", "seed": seed,
                         "corruption_rate": 0.0, "metric": "test/homo_mae_meV", "step": "", "value": value})
    return rows


def test_paired_table_interval_resolution_and_seeds_needed():
    from atomzoo.runner.paired import t_quantile
    from atomzoo.runner.report import paired_table

    rows = _finetune_rows({"none": [30.0, 32.0, 31.0], "denoising": [25.0, 27.0, 26.5], "scd": [25.5, 26.0, 27.0],
                           "jepa": [29.0]})
    table = paired_table(final_test_mae(pd.DataFrame(rows))).splitlines()
    # denoising - none: diffs -5, -5, -4.5: mean -4.83, sd 0.289, half-width 4.303 * 0.289 / sqrt(3) = 0.72
    assert "| denoising | none | -4.83 [-5.55, -4.12] meV | -15.6% | 3 | yes, better | – |" in table[2]
    scd_vs_den = next(line for line in table if "| scd | denoising |" in line)
    # diffs +0.5, -1.0, +0.5: mean 0, not resolved; seeds needed for a zero mean: none
    assert "| 3 | no |" in scd_vs_den and "+0.00 [" in scd_vs_den
    jepa = next(line for line in table if "| jepa | none |" in line)
    assert "-1.00 (n = 1) meV" in jepa and "± 0" not in jepa and jepa.endswith("| 1 | – | – |")
    assert round(t_quantile(2), 3) == 4.303 and round(t_quantile(4), 3) == 2.776
    assert abs(t_quantile(1000) - 1.962) < 1e-3
    # n with t(0.975, n-1) * sd / sqrt(n) < |mean|: sd 1, mean 1 -> n = 7 (2.447/sqrt(7) = 0.925; n = 6: 1.05)
    assert seeds_needed(1.0, 1.0) == 7 and seeds_needed(0.0, 1.0) is None
    # with the cells' CPU times: the replicates still missing times one replicate's measured cost
    rows = _finetune_rows({"none": [30.0, 32.0, 31.0], "denoising": [29.0, 32.5, 29.5]})
    timing = [{**r, "metric": "cpu_s", "step": None, "value": 360.0 if r["objective"] == "none" else 720.0}
              for r in rows]
    timing += [{"cell": f"pretrain/painn/denoising/c0/p{seed}", "phase": "pretrain", "backbone": "painn",
                "objective": "denoising", "corruption_rate": 0.0, "seed": seed, "metric": "cpu_s", "step": None,
                "value": cpu} for seed, cpu in ((0, 3600.0), (1, 5400.0), (2, None))]  # seed 2: no time recorded
    frame = pd.DataFrame(rows + [r for r in timing if r["value"] is not None])
    costs = replicate_cpu_h(frame)
    line = next(line for line in paired_table(final_test_mae(frame), costs=costs).splitlines()
                if "| denoising |" in line)
    diffs = [-1.0, 0.5, -1.5]
    needed = seeds_needed(statistics.fmean(diffs), statistics.stdev(diffs))
    per_replicate = (720 + (3600 + 5400) / 2 + 360) / 3600  # fine-tuning + pretraining, and scratch's fine-tuning
    assert line.endswith(f"| no | {needed} (~{(needed - 3) * per_replicate:.1f} CPU h more) |"), line
    assert paired_table(final_test_mae(frame)).splitlines()[2].endswith(f"| no | {needed} |")  # no frame: no hours


def test_spread_intervals_follow_chi_square_and_pitman_morgan():
    """A row's std interval is chi-square's; the ratio of two paired stds has the Pitman-Morgan interval: at
    each bound the Pitman-Morgan t statistic (correlation of x / sqrt(lambda) + y and x / sqrt(lambda) - y)
    is exactly t(0.975, n-2), and over simulated correlated normal pairs the interval covers the true ratio
    95 % of the time."""
    from atomzoo.runner.paired import spread_interval, spread_ratio, t_quantile

    sd, low, high = spread_interval([1.0, 2.0, 4.0, 3.0, 7.0])
    assert sd == pytest.approx(statistics.stdev([1.0, 2.0, 4.0, 3.0, 7.0]))
    # df 4: chi2(0.975) = 11.143, chi2(0.025) = 0.4844
    assert low / sd == pytest.approx((4 / 11.1433) ** 0.5, rel=1e-4)
    assert high / sd == pytest.approx((4 / 0.48442) ** 0.5, rel=1e-4)
    assert spread_interval([3.0])[1:] == (None, None)

    x = np.array([170.5, 166.0, 168.8, 161.6, 171.3])
    y = np.array([161.8, 162.8, 163.4, 165.3, 166.4])
    ratio, low, high = spread_ratio(list(x), list(y))
    assert ratio == pytest.approx(x.std(ddof=1) / y.std(ddof=1))
    assert low < ratio < high
    for bound in (low, high):
        u, v = x / bound + y, x / bound - y
        r = np.corrcoef(u, v)[0, 1]
        assert abs(r) * (len(x) - 2) ** 0.5 / (1 - r * r) ** 0.5 == pytest.approx(t_quantile(len(x) - 2), rel=1e-6)
    rng = np.random.default_rng(0)
    covered, trials = 0, 2000
    for _ in range(trials):
        a = rng.normal(size=6)
        pair = (2.0 * (0.6 * a + 0.8 * rng.normal(size=6)), a)  # true std ratio 2, correlation 0.6
        _, lo, hi = spread_ratio(list(pair[0]), list(pair[1]))
        covered += lo <= 2.0 <= hi
    assert 0.93 < covered / trials < 0.97
    assert spread_ratio([1.0, 2.0], [2.0, 5.0])[1:] == (None, None)  # two pairs: no interval
    with pytest.raises(ValueError, match="same length"):
        spread_ratio([1.0, 2.0, 3.0], [1.0, 2.0])


def test_spread_table_compares_each_row_with_the_references():
    from atomzoo.runner.paired import spread_interval
    from atomzoo.runner.report import spread_table

    steady = [30.1, 30.0, 30.2, 29.9, 30.1, 30.0]
    rows = _finetune_rows({"none": [30.0, 36.0, 28.0, 40.0, 25.0, 33.0], "denoising": steady,
                           "scd": [31.0, 30.0, 35.0, 29.0, 26.0, 34.0], "jepa": [29.0, 30.0]})
    rows += [{**r, "objective": "denoising", "corruption_rate": 0.3, "cell": r["cell"] + "c", "value": 99.0 * i}
             for i, r in enumerate(_finetune_rows({"x": [1.0, 2.0, 3.0]}))]  # corrupted: not in the table
    table = spread_table(final_test_mae(pd.DataFrame(rows)), ("none", "denoising")).splitlines()
    sd, low, high = (f"{v:.2f}" for v in spread_interval(steady))
    own = [line for line in table if line.count("|") == 8]  # one line per row: its std over seeds
    assert f"| painn | homo | 1000 | finetune | denoising | 6 | {sd} [{low}, {high}] meV |" in own
    assert len(own) == 2 + 4  # header, none, denoising, scd, jepa: the corrupted runs are not averaged in
    assert any(line.startswith("| painn | homo | 1000 | finetune | jepa | 2 |") for line in table)
    ratios = {tuple(c.strip() for c in line.split("|")[5:7]): line for line in table
              if line.count("|") == 10 and line.startswith("| painn")}
    # jepa has two seeds: no ratio; scratch is no row of its own; two references paired once (denoising - none)
    assert set(ratios) == {("denoising", "none"), ("scd", "none"), ("scd", "denoising")}
    assert ratios["denoising", "none"].endswith("| yes, steadier |")
    assert ratios["scd", "denoising"].endswith("| yes, more variable |")
    assert ratios["scd", "none"].endswith("| no |")


def test_probes_paired_and_spread_tables_pair_pretraining_seeds(tmp_path):
    from atomzoo.runner.paired import paired_interval, spread_ratio
    from atomzoo.runner.probe import PROBE_COLUMNS, probes_paired_table, probes_spread_table

    values = {"jepa_ema": {"emb_std": [0.68, 0.85, 1.06, 0.28, 1.38], "mlp_mae": [247.0, 249.0, 240.0, 263.0, 257.0],
                           "ridge_mae": [250.0, 251.0, 252.0, 253.0, 254.0]},
              "jepa_sigreg": {"emb_std": [0.47, 0.52, 0.63, 0.60, 0.52], "mlp_mae": [265.0, 255.0, 255.0, 254.0, 259.0],
                              "ridge_mae": [260.0, 261.5, 262.0, 263.2, 264.0]},
              "denoising": {"emb_std": [0.5, 0.6], "mlp_mae": [270.0, 275.0]}}
    rows = []
    for objective, metrics in values.items():
        for metric, per_seed in metrics.items():
            for seed, value in enumerate(per_seed):
                rows.append({"model": f"pretrain/painn/{objective}/c0/p{seed}", "backbone": "painn",
                             "objective": objective, "seed": seed, "features": "backbone", "metric": metric,
                             "target": "homo", "value": value, "commit": "x", "corruption_rate": 0.0, "corruption": ""})
    rows.append({**rows[0], "model": "random/painn/r0", "objective": "random init"})
    rows.append({**rows[0], "model": "pretrain/painn/jepa_ema/c0.3-wrong_element/p0", "value": 50.0,
                 "corruption_rate": 0.3, "corruption": "wrong_element"})
    write_rows(tmp_path / "probes.csv", rows, PROBE_COLUMNS)
    assert probes_spread_table(tmp_path, references=()) == "" == probes_paired_table(tmp_path, references=())
    table = probes_spread_table(tmp_path, references=("denoising", "jepa_ema")).splitlines()
    assert len(table) == 3  # denoising has two seeds: no ratio with it; scratch and random networks: none
    cells = [c.strip() for c in table[2].split("|")]
    assert cells[1:5] == ["painn", "jepa_sigreg", "jepa_ema", "5"]
    ratio, low, high = spread_ratio(values["jepa_sigreg"]["emb_std"], values["jepa_ema"]["emb_std"])
    assert high < 1 and cells[7] == f"**{ratio:.2f} [{low:.2f}, {high:.2f}]**"  # resolved: bold
    ratio, low, high = spread_ratio(values["jepa_sigreg"]["mlp_mae"], values["jepa_ema"]["mlp_mae"])
    assert low < 1 < high and cells[6] == f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
    assert cells[8] == "–"  # eff. rank not probed

    table = probes_paired_table(tmp_path, references=("denoising", "jepa_ema")).splitlines()
    rows = {tuple(c.strip() for c in line.split("|")[2:4]): [c.strip() for c in line.split("|")]
            for line in table[2:]}
    # two seeds of denoising suffice for a paired interval; the reference pair once (jepa_ema - denoising)
    assert set(rows) == {("jepa_ema", "denoising"), ("jepa_sigreg", "denoising"), ("jepa_sigreg", "jepa_ema")}
    cells = rows["jepa_sigreg", "jepa_ema"]
    for column, metric in ((5, "ridge_mae"), (6, "mlp_mae")):
        mean, half = paired_interval([a - b for a, b in zip(values["jepa_sigreg"][metric], values["jepa_ema"][metric])])
        text = f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"
        assert cells[column] == (f"**{text}**" if abs(mean) > half else text)
    assert cells[5].startswith("**+10.1 [") and not cells[6].startswith("**")  # ridge resolved, MLP not
    assert rows["jepa_ema", "denoising"][4:6] == ["2", "–"]  # denoising has no ridge probe


def test_compute_and_finetuning_tables(tmp_path):
    from atomzoo.runner.report import compute_table, finetuning_table

    rows = _finetune_rows({"none": [30.0, 32.0], "scd": [25.0, 27.0]})
    for row in list(rows):
        extra = {"steps": 120, "best_step": 80, "stopped_early": 1, "hit_cap": 0, "cpu_s": 600.0}
        if row["objective"] == "none" and row["seed"] == 1:
            extra.update(steps=200, best_step=200, stopped_early=0, hit_cap=1)
        rows += [{**row, "metric": k, "value": v} for k, v in extra.items()]
    base = {"phase": "pretrain", "backbone": "painn", "objective": "scd", "target": "", "label_budget": 0, "mode": "",
            "corruption_rate": 0.0, "step": ""}
    # seed 0: never resumed (1 h); seed 1: resumed, its clock holds the first attempt's 2 of its 2.5 h of
    # training, the last process took 0.5 h + 0.1 h (start-up): 2.6 h; seed 2: resumed before the clock
    # existed (its last process's 0.2 h is not the run's time): left out of the means
    timing = {0: (("cpu_s", 3600.0), ("resumed", 0)),
              1: (("cpu_s", 2160.0), ("resumed", 1), ("train_cpu_s", 9000.0), ("train_attempt_cpu_s", 1800.0),
                  ("train_clock_complete", 1)),
              2: (("cpu_s", 720.0), ("resumed", 1))}
    for seed in (0, 1, 2):
        rows += [{**base, "cell": f"pre{seed}", "seed": seed, "metric": k, "value": v}
                 for k, v in (("steps", 3000), ("max_steps", 3000), *timing[seed])]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    frame = load(tmp_path / "results.csv")
    compute = compute_table(frame, final_test_mae(frame)).splitlines()
    assert compute[2].startswith("| painn | none | – | – | – | 31.00 [")
    # (1 h + 2.6 h) / 2 = 1.80 h; (1.2 + 3.12) / 2 s per step = 2,160 ms
    # ... with the range over the timed runs
    assert compute[3].startswith("| painn | scd | 3000 | 1.80 (2 of 3 timed) | 2160 (1200-3120) | 26.00 [13.29, 38.71]")
    ends = finetuning_table(frame).splitlines()
    assert ends[2] == "| painn | none | homo | 1000 | finetune | 2 | 1 | 1 | 160 | 140 | 10.0 |"
    assert ends[3] == "| painn | scd | homo | 1000 | finetune | 2 | 2 | 0 | 120 | 80 | 10.0 |"


def test_sigterm_stops_the_run_and_its_cells(cache_dir, tmp_path):
    """``kill PID`` of a runner (a detached background run ignores Ctrl-C) kills its running cell too:
    no training process is left behind."""
    import signal
    import subprocess
    import sys
    import time

    path = write_matrix(tmp_path, {"none": None}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["finetune"]["args"] = [*STEPS, "--trainer.max_steps", "100000"]
    path.write_text(yaml.safe_dump(data))
    runner = subprocess.Popen([sys.executable, "-m", "atomzoo.runner", "run", str(path), "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = str(tmp_path / "out/cells")

    def cells() -> list[str]:
        return subprocess.run(["pgrep", "-f", cell], capture_output=True, text=True).stdout.split()

    deadline = time.time() + 60
    while not cells() and time.time() < deadline:
        time.sleep(0.2)
    assert cells(), "the cell never started"
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(0.5)
    assert cells() == []


def test_noise_study_shares_the_main_study_recipe_and_its_clean_cells():
    """objectives_v2_noise.yaml adds corrupted pretraining to objectives_v2.yaml: every shared setting is
    identical (else its clean cells, which it takes from the main study, would be another recipe's), and
    its clean cells are exactly the main study's cells of the same objectives."""
    main = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2.yaml").read_text())
    noise = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_noise.yaml").read_text())
    for key in ("output", "cells", "common_args", "backbones", "finetune", "order", "curves"):
        assert noise[key] == main[key], key
    # (pretrain.keep: the main cells' weights are kept for the later stages, the corrupted ones for the probes)
    assert {k: v for k, v in noise["pretrain"].items() if k != "corruption"} == main["pretrain"]
    assert all(main["objectives"][name] == spec for name, spec in noise["objectives"].items())
    main_ids = {c.id for c in expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2.yaml"))}
    cells = expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_noise.yaml"))
    clean = {c.id for c in cells if c.corruption_rate == 0}
    assert clean <= main_ids and len(clean) == 3 * (1 + 2 * 4)  # scratch + 4 objectives' pretrain and fine-tune
    corrupted = [c for c in cells if c.corruption_rate > 0]
    assert len(corrupted) == 2 * 4 * 4 * 3 and {c.corruption for c in corrupted} == {
        "displacement", "duplicate_atoms", "missing_hydrogens", "wrong_element"}
    # the force-transfer row fine-tunes the same pretraining cells on ethanol energy + forces
    forces = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_forces.yaml").read_text())
    for key in ("output", "cells", "common_args", "backbones", "pretrain", "order"):
        assert forces[key] == main[key], key
    assert all(main["objectives"][name] == spec for name, spec in forces["objectives"].items())
    cells = expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_forces.yaml"))
    pre = {c.id for c in cells if c.phase == "pretrain"}
    assert pre <= main_ids and len(cells) - len(pre) == 5 * 2 * 3
    assert all(c.depends_on in pre for c in cells if c.phase == "finetune" and c.objective != "none")
    # other targets and label sizes: the same pretraining cells; other backbones: everything else the same
    targets = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_targets.yaml").read_text())
    backbones = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_backbones.yaml").read_text())
    for key in ("output", "cells", "common_args", "pretrain", "order", "curves"):
        assert targets[key] == main[key] == backbones[key], key
    assert targets["backbones"] == main["backbones"] and backbones["finetune"] == main["finetune"]
    # (fine-tuning compiled: the same function to round-off, 1.75x less CPU per step; pretraining stays eager)
    assert targets["finetune"]["args"] == main["finetune"]["args"] + ["--model.compile", "true"]
    assert {k: v for k, v in targets["finetune"].items() if k not in ("targets", "label_budgets", "args")} == {
        k: v for k, v in main["finetune"].items() if k not in ("targets", "label_budgets", "args")}
    cells = expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_targets.yaml"))
    assert {c.id for c in cells if c.phase == "pretrain"} <= main_ids
    assert len([c for c in cells if c.phase == "finetune" and c.id not in main_ids]) == 5 * 8 * 3
    assert len(expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_backbones.yaml"))) == 2 * 9 * 3
    # the references' fine-tuning recipes: the same pretraining cells, objectives_v2's fine-tuning settings but
    # for the recipe of each task (its -c config and final_args: batch 128, the reference's clipping)
    recipes = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_recipes.yaml").read_text())
    for key in ("output", "cells", "common_args", "backbones", "pretrain", "order", "curves"):
        assert recipes[key] == main[key], key
    assert all(main["objectives"][name] == spec for name, spec in recipes["objectives"].items())
    assert {k: v for k, v in recipes["finetune"].items() if k not in ("targets", "tasks")} == {
        k: v for k, v in main["finetune"].items() if k not in ("targets", "tasks")}
    cells = expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_recipes.yaml"))
    pre = {c.id for c in cells if c.phase == "pretrain"}
    assert pre <= main_ids and not ({c.id for c in cells} - pre) & main_ids and len(cells) - len(pre) == 2 * 3 * 3
    # the fine-tuning cap: the same cells and settings, one task whose final_args raise the cap to 8,000 steps
    cap = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_cap.yaml").read_text())
    for key in ("output", "cells", "common_args", "backbones", "pretrain", "order", "curves"):
        assert cap[key] == main[key], key
    assert cap["objectives"] == {k: v for k, v in main["objectives"].items() if k not in ("denoising_eqcpu", "scd_frozen_mask")}
    assert {k: v for k, v in cap["finetune"].items() if k not in ("targets", "tasks", "seeds")} == {
        k: v for k, v in main["finetune"].items() if k not in ("targets", "tasks", "seeds")}
    assert cap["finetune"]["tasks"]["homo_cap8000"]["final_args"] == ["--trainer.max_steps", "8000"]
    cells = expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_cap.yaml"))
    pre = {c.id for c in cells if c.phase == "pretrain"}
    assert pre <= main_ids and not ({c.id for c in cells} - pre) & main_ids and len(cells) - len(pre) == 5
    # question 2 at five replicates: the main table's settings, three of its rows, seeds 3 and 4 only
    q2 = yaml.safe_load((ROOT / "benchmarks/matrices/objectives_v2_q2.yaml").read_text())
    for key in ("output", "cells", "common_args", "backbones", "order", "curves"):
        assert q2[key] == main[key], key
    assert q2["objectives"] == {k: main["objectives"][k] for k in ("none", "jepa_ema", "jepa_sigreg")}
    assert {k: v for k, v in q2["pretrain"].items() if k != "seeds"} == {
        k: v for k, v in main["pretrain"].items() if k != "seeds"}
    assert {k: v for k, v in q2["finetune"].items() if k != "seeds"} == {
        k: v for k, v in main["finetune"].items() if k != "seeds"}
    assert q2["pretrain"]["seeds"] == q2["finetune"]["seeds"] == [3, 4]
    cells = expand(load_matrix(ROOT / "benchmarks/matrices/objectives_v2_q2.yaml"))
    assert len(cells) == 10 and not {c.id for c in cells} & main_ids


def test_every_shipped_matrix_loads_and_expands():
    """Every matrix file under benchmarks/matrices is valid and has cells (a broken one fails here, not in
    the background queue hours later)."""
    paths = sorted((ROOT / "benchmarks/matrices").glob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        assert expand(load_matrix(path)), path


def test_the_residual_world_model_ablation_changes_only_the_predictor():
    """benchmarks/matrices/world_model_residual.yaml is the study's world model with --model.residual true:
    same data, backbone, steps, seeds and shared arguments, one extra option."""
    study = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_study.yaml").read_text())
    ablation = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_residual.yaml").read_text())
    for key in ("common_args", "backbones", "pretrain"):
        assert ablation[key] == study[key], key
    base, residual = study["objectives"]["world_model"], ablation["objectives"]["world_model_residual"]
    assert residual["config"] == base["config"]
    assert residual["args"] == [*base["args"], "--model.residual", "true"]
    assert "finetune" not in ablation
    # the second ablation: the residual one with the predictor reading the history's differences
    second = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_differences.yaml").read_text())
    for key in ("common_args", "backbones", "pretrain"):
        assert second[key] == study[key], key
    differences = second["objectives"]["world_model_differences"]
    assert differences["config"] == base["config"]
    assert differences["args"] == [*residual["args"], "--model.predictor_input", "differences"]
    assert "finetune" not in second


def test_the_1fs_world_model_matrix_changes_only_the_frame_spacing():
    """benchmarks/matrices/world_model_1fs.yaml trains the study's world model and its difference-fed ablation exactly
    as they are, on the same molecules' MD saved every 1 fs: only the data config differs, and that config
    differs from the 5 fs one only in its file and its horizons (same split, so the same test molecules)."""
    study = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_study.yaml").read_text())
    second = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_differences.yaml").read_text())
    fine = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_1fs.yaml").read_text())
    for key in ("common_args", "backbones"):
        assert fine[key] == study[key], key
    assert fine["objectives"] == {"world_model": study["objectives"]["world_model"],
                                  "world_model_differences": second["objectives"]["world_model_differences"]}
    assert {k: v for k, v in fine["pretrain"].items() if k != "data"} == {
        k: v for k, v in study["pretrain"].items() if k != "data"}
    assert fine["pretrain"]["data"] == "configs/data/trajectories_xtb32_1fs.yaml" and "finetune" not in fine
    coarse_data = yaml.safe_load((ROOT / study["pretrain"]["data"]).read_text())["data"]
    fine_data = yaml.safe_load((ROOT / fine["pretrain"]["data"]).read_text())["data"]
    assert fine_data["class_path"] == coarse_data["class_path"]
    changed = {k for k in coarse_data["init_args"] if fine_data["init_args"][k] != coarse_data["init_args"][k]}
    assert changed == {"path", "horizons"} and set(fine_data["init_args"]) == set(coarse_data["init_args"])


def test_the_world_model_studys_equal_cpu_rows_take_their_steps_from_the_measured_step_costs():
    """denoising_eqcpu and jepa_sigreg_eqcpu are their objectives unchanged except for the pretraining steps, and
    those are the steps benchmarks/results/world_model_study/step_cost.md derived (the world model's CPU time)."""
    study = yaml.safe_load((ROOT / "benchmarks/matrices/world_model_study.yaml").read_text())
    table = (ROOT / "benchmarks/results/world_model_study/step_cost.md").read_text()
    measured = {line.split("|")[1].strip(): line.split("|")[4].strip().replace(",", "")
                for line in table.splitlines() if line.startswith("| ") and "objective" not in line}
    assert measured["world_model"] == study["pretrain"]["args"][study["pretrain"]["args"].index("--trainer.max_steps") + 1]
    for base in ("denoising", "jepa_sigreg"):
        row = study["objectives"][f"{base}_eqcpu"]
        assert row["config"] == study["objectives"][base]
        assert set(row) == {"config", "pretrain_args"}
        assert row["pretrain_args"] == ["--trainer.max_steps", measured[base]]
    cells = {c.id: c for c in expand(load_matrix(ROOT / "benchmarks/matrices/world_model_study.yaml"))}
    args = cells["pretrain/painn64/denoising_eqcpu/c0/p0"].args
    assert args[len(args) - 1 - args[::-1].index("--trainer.max_steps") + 1] == measured["denoising"]  # the last one wins


def test_paired_references_come_from_the_matrix(tmp_path):
    """``references`` picks the objectives every row is paired with (the world-model study pairs with the world
    model); an objective the matrix does not have is refused with the key's name."""
    path = write_matrix(tmp_path, {"none": None, "denoising": "configs/objectives/denoising.yaml",
                                   "jepa": "configs/objectives/jepa.yaml"}, seeds=(0, 1))
    data = yaml.safe_load(path.read_text())
    data["references"] = ["none", "jepa"]
    data["report"] = ["paired"]
    path.write_text(yaml.safe_dump(data))
    matrix = load_matrix(path)
    assert matrix.references == ("none", "jepa")
    rows = []
    for objective, values in (("none", (10.0, 12.0)), ("denoising", (9.0, 10.0)), ("jepa", (11.0, 11.5))):
        for seed, value in enumerate(values):
            cell = f"finetune/schnet/{objective}/c0/homo/n64/finetune/s{seed}"
            rows.append({"cell": cell, "phase": "finetune", "backbone": "schnet", "objective": objective,
                         "target": "homo", "label_budget": 64, "mode": "finetune", "seed": seed,
                         "corruption_rate": 0.0, "corruption": "", "pretrain_seed": "", "metric": "test/homo_mae_meV",
                         "step": "", "value": value, "commit": "x", "command": "zoo fit"})
    matrix.output.mkdir(parents=True)
    write_rows(matrix.results_csv, rows)
    text = write_report(matrix).read_text()
    assert "## Paired differences to scratch and to jepa (same fine-tuning seeds)" in text

    def paired_section(text: str) -> list[str]:
        return text.split("### Spread across seeds")[0].splitlines()

    pairs = {(line.split("|")[5].strip(), line.split("|")[6].strip()): line.split("|")[7].strip()
             for line in paired_section(text) if line.startswith("| schnet")}
    assert set(pairs) == {("denoising", "none"), ("denoising", "jepa"), ("jepa", "none")}
    assert pairs["denoising", "jepa"].startswith("-1.75 [")  # (9 - 11 + 10 - 11.5) / 2
    # two references are paired once: the later in the list minus the earlier, never both directions
    data["references"] = ["none", "denoising", "jepa"]
    path.write_text(yaml.safe_dump(data))
    text = write_report(load_matrix(path)).read_text()
    pairs = {(line.split("|")[5].strip(), line.split("|")[6].strip()): line.split("|")[7].strip()
             for line in paired_section(text) if line.startswith("| schnet")}
    assert set(pairs) == {("denoising", "none"), ("jepa", "none"), ("jepa", "denoising")}
    assert pairs["jepa", "denoising"].startswith("+1.75 [")
    data["references"] = ["none", "scd"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="references must be a list of the matrix's objectives"):
        load_matrix(path)


def _merge_many(path: str, prefix: str, count: int) -> None:
    from atomzoo.runner.results import merge_rows

    for k in range(count):
        merge_rows(Path(path), f"{prefix}{k}", [{"cell": f"{prefix}{k}", "metric": "wall_s", "step": "", "value": k}])


def test_two_runners_merging_into_one_results_file_keep_every_row(tmp_path):
    """Matrices that share an output, run at once, write one results.csv: the lock keeps every cell's rows."""
    import multiprocessing

    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_merge_many, args=(str(path), prefix, 60)) for prefix in ("a", "b", "c")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert all(w.exitcode == 0 for w in workers)
    assert finished_cells(path) == {f"{p}{k}" for p in "abc" for k in range(60)}


def test_a_fine_tuning_cell_whose_pretraining_is_done_starts_first(tmp_path):
    """A corruption study's order (each objective's pretraining cells, then their fine-tuning cells): once a
    pretraining is done, its fine-tuning starts before the next pretraining."""
    from atomzoo.runner.execute import launch_order

    path = write_matrix(tmp_path, {"denoising": "configs/objectives/denoising.yaml"}, seeds=(0,))
    data = yaml.safe_load(path.read_text())
    data["pretrain"]["corruption"] = {"kinds": ["displacement", "wrong_element"], "rates": [0.0, 0.3]}
    path.write_text(yaml.safe_dump(data))
    cells = expand(load_matrix(path))
    assert [c.phase for c in cells] == ["pretrain"] * 3 + ["finetune"] * 3  # the matrix order
    done = {cells[0].id}
    order = launch_order(cells[1:], lambda dep: dep in done)
    assert [c.id for c in order] == [cells[3].id, cells[1].id, cells[2].id, cells[4].id, cells[5].id]
    assert launch_order(cells, lambda dep: False) == cells  # nothing ready: matrix order


def test_the_queue_runs_every_stage_of_the_objective_benchmark_once_in_the_issues_order():
    """benchmarks/run_queue.sh lists each objectives_v2 stage sharing the study's output exactly once
    (a stage left out would never run; the paper-scale matrix, another output, is for GPUs), the main
    table first and the force row last, and each listed matrix loads."""
    import re

    script = (ROOT / "benchmarks/run_queue.sh").read_text()
    stages = script.split("for matrix in", 1)[1].split("; do", 1)[0]
    listed = re.findall(r"benchmarks/matrices/(objectives_v2\w*)\.yaml", stages)
    study = {p.stem for p in (ROOT / "benchmarks/matrices").glob("objectives_v2*.yaml")
             if load_matrix(p).output == Path("benchmarks/results/objectives_v2")}
    assert len(listed) == len(set(listed)) and set(listed) == study, (listed, study)
    assert listed[0] == "objectives_v2" and listed[-1] == "objectives_v2_forces"
    assert listed.index("objectives_v2_noise") < listed.index("objectives_v2_targets") < listed.index(
        "objectives_v2_backbones")
