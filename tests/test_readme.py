"""Every command block of README.md, run as a new user would: in a fresh folder that holds only the
repository's inputs (configs/, examples/, tests/data, benchmarks/ without results), one block after the
other, each command as a subprocess; then the files and lines the README says each block produces.

The README states a laptop budget for every training command (minutes). To keep this test near
2 minutes of CPU, every ``zoo fit`` gets :data:`SMOKE` appended (a few batches; the README's own
options are parsed and validated as written), ``examples/md_relax.py`` a shorter trajectory and the
benchmark's ``--quick`` matrix one cell. Measured: 2 min 50 s wall, 1 min 40 s user CPU (one process, 2 shared cores).
``zoo-bench run --quick`` on a whole (small) matrix: :func:`test_quick_preset_runs_a_whole_matrix`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: appended to every ``zoo fit`` of the README: 1 epoch of 3 batches, validation and test on 2 batches
SMOKE = ["--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
         "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", "--trainer.val_check_interval", "1.0",
         "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]
#: appended to other commands, by their start
SHORTER = {"python examples/md_relax.py": ["--time-ps", "0.005", "--fmax", "0.5"],
           "zoo-bench run": ["--only", "^finetune/painn64/none/"]}
#: commands not run here, by their start, with the reason
NOT_RUN = {"pip install": "the install itself (CI's .ci/run does it in a clean environment)",
           "python -m pytest": "the test suite (this test is part of it)"}
#: per README section: files each block must leave in the folder and lines its output must contain
EXPECTED = {
    "Install and run the main job": (["runs/quickstart/version_0/test_metrics.json"], ["test/homo_mae_meV"]),
    "Composing experiments from config files": (
        ["runs/zoo/version_0/checkpoints/last.ckpt", "runs/zoo/version_1/checkpoints/last.ckpt"], ["class_path"]),
    "Pretraining, then fine-tuning": (
        ["runs/pretrain_scd/laptop/checkpoints/last.ckpt", "runs/finetune_homo/from_scd/test_metrics.json"],
        ["test/homo_mae_meV"]),
    "Use a trained force model: predictions, ASE, MD": (
        ["runs/rmd17_fixture_forces/ethanol/checkpoints/last.ckpt", "preds.csv", "preds.atoms.csv"],
        ["zoo predict: wrote 3 molecules to {work}/preds.csv", "drift"]),
    "Benchmark matrices": (["benchmarks/results/objectives_v2-quick/results.csv"], ["done 1, skipped 0, failed 0"]),
}


def command_blocks() -> list[tuple[str, str, list[str]]]:
    """``(section, language, commands)`` of every fenced bash/python block (bash: continuation lines
    joined, comments dropped, ``a && b`` split)."""
    blocks, section = [], ""
    for match in re.finditer(r"^## ([^\n]+)$|^```(bash|python)\n(.*?)^```", README.read_text(), re.M | re.S):
        if match.group(1):
            section = match.group(1).strip()
            continue
        language, body = match.group(2), match.group(3)
        if language == "python":
            blocks.append((section, language, [body]))
            continue
        lines = re.sub(r"\\\n\s*", " ", body).splitlines()
        commands = [part.strip() for line in lines for part in line.split("#", 1)[0].split("&&") if part.strip()]
        blocks.append((section, language, commands))
    return blocks


def fresh_folder(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("configs", "examples", "tests"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    (work / "benchmarks").mkdir()
    for entry in (ROOT / "benchmarks").iterdir():
        if entry.name != "results":
            (work / "benchmarks" / entry.name).symlink_to(entry)
    return work


def test_readme_blocks_are_found():
    sections = {section for section, _, _ in command_blocks()}
    assert set(EXPECTED) <= sections, f"README sections without a block: {set(EXPECTED) - sections}"


@pytest.mark.slow
def test_every_readme_command_block_runs_in_a_fresh_folder(cache_dir, tmp_path):
    work = fresh_folder(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env |= {"ATOMZOO_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}
    ran, output = [], {}
    for section, language, commands in command_blocks():
        for command in commands:
            if language == "python":
                argv = [sys.executable, "-c", command]
            elif any(command.startswith(skip) for skip in NOT_RUN):
                continue
            else:
                argv = shlex.split(command)
                argv += SMOKE if argv[:2] == ["zoo", "fit"] else next(
                    (extra for start, extra in SHORTER.items() if command.startswith(start)), [])
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{section}: {command}\n{done.stderr[-3000:]}"
            output[section] = output.get(section, "") + done.stdout + done.stderr
            ran.append(command)
    for section, (files, lines) in EXPECTED.items():
        for name in files:
            assert (work / name).is_file(), f"{section}: {name} missing"
        for line in lines:
            assert line.format(work=work) in output.get(section, ""), f"{section}: '{line}' not printed"
    assert len(ran) >= 9


@pytest.mark.slow
def test_quick_preset_runs_a_whole_matrix(cache_dir, tmp_path):
    """``zoo-bench run MATRIX --quick``: the first seed's cells, 20 steps each, into <output>-quick; the real
    output folder stays untouched."""
    from atomzoo.runner.__main__ import main as bench_main

    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"""
name: tiny
output: {tmp_path / 'out'}
common_args: [--data.cache_dir, {cache_dir}, --model.backbone.init_args.width, "16",
              --model.backbone.init_args.num_filters, "16", --model.backbone.init_args.num_interactions, "1"]
backbones: {{schnet: {{config: {ROOT / 'configs/backbones/schnet.yaml'}}}}}
objectives: {{none: null, denoising: {ROOT / 'configs/objectives/denoising.yaml'}}}
pretrain: {{data: {ROOT / 'configs/data/qm9.yaml'}, args: [--data.targets, "null", --trainer.max_steps, "5000"]}}
finetune:
  data: {ROOT / 'configs/data/qm9.yaml'}
  objective: {ROOT / 'configs/objectives/regression.yaml'}
  targets: [homo]
  label_budgets: [64, 128]
  seeds: [0, 1]
  args: [--trainer.max_steps, "5000", --trainer.val_check_interval, "1000"]
""")
    assert bench_main(["run", str(matrix), "--quick", "--threads", "1"]) == 0
    import pandas as pd

    rows = pd.read_csv(tmp_path / "out-quick" / "results.csv")
    cells = sorted(rows["cell"].unique())  # seed 0 and label budget 64 only: 2 fine-tuning cells, 1 pretraining
    assert len(cells) == 3 and all(("/n64/" in c and c.endswith("/s0")) or c.startswith("pretrain/") for c in cells)
    steps = rows[rows["metric"] == "steps"].set_index("cell")["value"]
    # 2 epochs of at most 10 batches, whatever the matrix says: 20 steps of pretraining; 64 labels in
    # batches of 32 (configs/data/qm9.yaml) are 2 batches an epoch, so 4 steps of fine-tuning
    assert all(steps[c] == (20 if c.startswith("pretrain/") else 4) for c in cells), steps.to_dict()
    report = (tmp_path / "out-quick" / "results.md").read_text()
    assert "(n = 1)" in report and "± 0.0" not in report
    assert not (tmp_path / "out").exists()
