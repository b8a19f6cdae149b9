"""Every command block of README.md, run as a new user would, by ``benchmarks/readme_check.py``: in a
fresh folder that holds only the repository's inputs, one block after the other, each command as a
subprocess; then the files and lines the README says each block produces (``readme_check.EXPECTED``).

In the default suite the blocks run one README section per test, each section in its own fresh folder
(a section's commands use only that section's earlier ones), at a smoke budget (``--smoke``: every ``zoo fit`` 1 epoch of 3
batches, the README's own options still parsed and validated; ``md_relax.py`` a shorter trajectory; the
benchmark's ``--quick`` matrix one cell); its duration is in docs/testing.md. At the README's stated
budgets, with ``ATOMZOO_README_BUDGET=1`` (about 20 min of CPU: too long for the suite; measured in
docs/results.md, "README command blocks at their stated budgets")::

    ATOMZOO_README_BUDGET=1 OMP_NUM_THREADS=1 python -m pytest -q -p no:xdist tests/test_readme.py -k stated

``zoo-bench run --quick`` on a whole (small) matrix: :func:`test_quick_preset_runs_a_whole_matrix`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_check", ROOT / "benchmarks" / "readme_check.py")
readme_check = sys.modules.setdefault("readme_check", importlib.util.module_from_spec(_spec))  # for its dataclass
_spec.loader.exec_module(readme_check)

#: CPU minutes (children's user + system time) a block may take at its stated budget: the README's
#: "finishes on a laptop CPU in minutes"
STATED_BLOCK_CPU_MIN = 10


def test_readme_blocks_are_found():
    blocks = readme_check.command_blocks()
    sections = {block.section for block in blocks}
    assert set(readme_check.EXPECTED) <= sections, f"README sections without a block: {set(readme_check.EXPECTED) - sections}"
    commands = [c for block in blocks for c in block.commands]
    assert sum(c.startswith("zoo fit") for c in commands) >= 6 and any(c.startswith("zoo-bench run") for c in commands)


def test_smoke_budget_is_appended_only_with_smoke():
    """The stated budget runs a command exactly as the README writes it; the smoke budget appends."""
    command = "zoo fit -c configs/quickstart.yaml"
    assert readme_check.argv_of(command, "bash", smoke=False) == ["zoo", "fit", "-c", "configs/quickstart.yaml"]
    assert readme_check.argv_of(command, "bash", smoke=True)[4:] == readme_check.SMOKE
    assert readme_check.argv_of("pip install -e .", "bash", smoke=False) is None


def run_and_check(tmp_path: Path, cache_dir: Path, smoke: bool, only: str | None = None) -> list:
    work = readme_check.fresh_folder(tmp_path)
    env = dict(os.environ) | {"ATOMZOO_CACHE": str(cache_dir)}
    blocks, output = readme_check.run_blocks(work, smoke=smoke, env=env, timeout_s=600 if smoke else 3600,
                                             only=only)
    failed = [f"{b.section}: {b.failed}" for b in blocks if b.failed]
    assert not failed, failed[0]
    assert readme_check.missing_outputs(work, output, only=only) == []
    assert sum(len(b.ran) for b in blocks) >= (9 if only is None else 1)
    return blocks


#: README sections with a command the smoke run executes (the install and test commands are not run). Each
#: section's blocks depend only on that section's earlier commands, so every section runs in its own fresh
#: folder and pytest-xdist can spread them over its workers.
RUN_SECTIONS = sorted({b.section for b in readme_check.command_blocks()
                       if any(readme_check.argv_of(c, b.language, smoke=True) for c in b.commands)})


def test_every_section_with_expected_outputs_is_run():
    assert set(readme_check.EXPECTED) <= set(RUN_SECTIONS) and len(RUN_SECTIONS) >= 7


@pytest.mark.slow
@pytest.mark.parametrize("section", RUN_SECTIONS)
def test_every_readme_command_block_runs_in_a_fresh_folder(section, cache_dir, tmp_path):
    run_and_check(tmp_path, cache_dir, smoke=True, only=f"^{re.escape(section)}$")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ATOMZOO_README_BUDGET") != "1",
                    reason="the README's stated budgets take about 20 min of CPU: ATOMZOO_README_BUDGET=1 runs them")
def test_every_readme_command_block_finishes_at_its_stated_budget(cache_dir, tmp_path):
    blocks = run_and_check(tmp_path, cache_dir, smoke=False)
    slow = [f"{b.section}: {b.cpu_s / 60:.1f} CPU min" for b in blocks if b.cpu_s > 60 * STATED_BLOCK_CPU_MIN]
    assert not slow, slow


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
