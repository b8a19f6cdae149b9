"""Run every command block of README.md as a new user would, and check what each produces.

    python benchmarks/readme_check.py                      # the README's stated budgets (about 20 min of CPU: docs/results.md)
    python benchmarks/readme_check.py --smoke              # a few batches per training run (docs/testing.md: test_readme.py)
    python benchmarks/readme_check.py --json out.json      # also write the per-block record

A fresh folder holds only the repository's inputs (``configs/``, ``examples/``, ``tests/`` linked,
``benchmarks/`` without ``results/``); the blocks run one after the other in README order, each
command as a subprocess with ``OMP_NUM_THREADS=1`` (the README's advice for a shared machine), the
console scripts of this interpreter's environment first on ``PATH``. Bash blocks are split into
commands (continuation lines joined, comments dropped, ``a && b`` split); a Python block runs as one
``python -c``. ``pip install`` and the test suite itself are not run (:data:`NOT_RUN`).

After the blocks, every file and printed line :data:`EXPECTED` lists for a README section must be
there (the files and lines the README's text says the block produces). Each block's wall and CPU time
(children's user + system, ``os.times``) is printed; with ``--limit-min`` a block that took longer
fails the check. Exit status 0 when every command finished and every output is there, 1 otherwise.

``--smoke`` appends :data:`SMOKE` to every ``zoo fit`` (1 epoch of 3 batches; the README's own
options are still parsed and validated as written) and :data:`SHORTER` to the other long commands:
that is what ``tests/test_readme.py`` runs in the default suite. The stated budgets are run by
``ATOMZOO_README_BUDGET=1 pytest tests/test_readme.py``; their measured times are in
docs/results.md ("README command blocks at their stated budgets").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: appended to every ``zoo fit`` of the README with ``--smoke``: 1 epoch of 3 batches, validation and
#: test on 2 batches
SMOKE = ["--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
         "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", "--trainer.val_check_interval", "1.0",
         "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]
#: appended with ``--smoke`` to other commands, by their start
SHORTER = {"python examples/md_relax.py": ["--time-ps", "0.005", "--fmax", "0.5"],
           "zoo-bench run": ["--only", "^finetune/painn64/none/"],
           "python -m atomzoo.surprise": ["--max-windows", "8"]}
#: commands never run here, by their start, with the reason
NOT_RUN = {"pip install": "the install itself (CI's .ci/run does it in a clean environment)",
           "python -m pytest": "the test suite (tests/test_readme.py is part of it)"}
#: per README section: files its block must leave in the folder and lines its output must contain
#: (``{work}``: the folder); the README's text names each
EXPECTED = {
    "Install and run the main job": (["runs/quickstart/version_0/test_metrics.json"], ["test/homo_mae_meV"]),
    "Composing experiments from config files": (
        ["runs/zoo/version_0/checkpoints/last.ckpt", "runs/zoo/version_1/checkpoints/last.ckpt"], ["class_path"]),
    "Pretraining, then fine-tuning": (
        ["runs/pretrain_scd/laptop/checkpoints/last.ckpt", "runs/finetune_homo/from_scd/test_metrics.json"],
        ["test/homo_mae_meV"]),
    "Pretrained models: list, fine-tune, freeze": (
        [], ["painn64-denoising-qm9-p0", "zoo: step-0 check: the backbone reproduces init_from=painn64-denoising-qm9-p0",
             "test/homo_mae_meV"]),
    "Use a trained force model: predictions, ASE, MD": (
        ["runs/rmd17_fixture_forces/ethanol/checkpoints/last.ckpt", "preds.csv", "preds.atoms.csv"],
        ["zoo predict: wrote 3 molecules to {work}/preds.csv", "drift"]),
    "A world model of molecular dynamics, and its surprise test": (
        ["runs/wm/demo/checkpoints/last.ckpt", "runs/wm/demo/surprise/surprise.md",
         "runs/wm/demo/surprise/surprise.png", "runs/wm/demo/predictability/predictability.md"],
        ["| trained | teleport | violation |", "| persistence | swap |", "| embedding | trained | world_model |"]),
    "Benchmark matrices": (["benchmarks/results/objectives_v2-quick/results.csv"], ["failed 0"]),
}


@dataclass
class Block:
    """One fenced ``bash`` / ``python`` block of the README: its section, language and commands."""

    section: str
    language: str
    commands: list[str]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    ran: list[str] = field(default_factory=list)
    failed: str = ""


def command_blocks(readme: Path = README) -> list[Block]:
    """Every fenced bash/python block of ``readme`` in order (bash: continuation lines joined,
    comments dropped, ``a && b`` split; python: the block's text as one command)."""
    blocks, section = [], ""
    for match in re.finditer(r"^## ([^\n]+)$|^```(bash|python)\n(.*?)^```", readme.read_text(), re.M | re.S):
        if match.group(1):
            section = match.group(1).strip()
            continue
        language, body = match.group(2), match.group(3)
        if language == "python":
            blocks.append(Block(section, language, [body]))
            continue
        lines = re.sub(r"\\\n\s*", " ", body).splitlines()
        commands = [part.strip() for line in lines for part in line.split("#", 1)[0].split("&&") if part.strip()]
        blocks.append(Block(section, language, commands))
    return blocks


def fresh_folder(parent: Path) -> Path:
    """``parent/clone`` with the repository's inputs linked: configs/, examples/, tests/ and benchmarks/
    (its files, not results/)."""
    work = parent / "clone"
    work.mkdir()
    for name in ("configs", "examples", "tests"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    (work / "benchmarks").mkdir()
    for entry in (ROOT / "benchmarks").iterdir():
        if entry.name != "results":
            (work / "benchmarks" / entry.name).symlink_to(entry)
    return work


def argv_of(command: str, language: str, smoke: bool) -> list[str] | None:
    """The argument list a command runs as (``None``: not run, see :data:`NOT_RUN`)."""
    if language == "python":
        return [sys.executable, "-c", command]
    if any(command.startswith(skip) for skip in NOT_RUN):
        return None
    argv = shlex.split(command)
    if not smoke:
        return argv
    if argv[:2] == ["zoo", "fit"]:
        return argv + SMOKE
    return argv + next((extra for start, extra in SHORTER.items() if command.startswith(start)), [])


def run_blocks(work: Path, smoke: bool, env: dict | None = None, timeout_s: float = 3600,
               only: str | None = None) -> tuple[list[Block], dict]:
    """Run every README block in ``work`` (see the module docstring), or those whose section matches the
    regular expression ``only``; returns the blocks (times, commands run, the first failure) and the
    output of each section (stdout + stderr of its commands). Stops at the first command that fails:
    later blocks use earlier blocks' runs."""
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONWARNINGS", None)
    env |= {"OMP_NUM_THREADS": "1", "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}
    blocks = [b for b in command_blocks() if only is None or re.search(only, b.section)]
    output = {}
    for block in blocks:
        start, cpu = time.perf_counter(), os.times()
        for command in block.commands:
            argv = argv_of(command, block.language, smoke)
            if argv is None:
                continue
            print(f"[{block.section}] {command}", file=sys.stderr, flush=True)
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout_s)
            output[block.section] = output.get(block.section, "") + done.stdout + done.stderr
            block.ran.append(command)
            if done.returncode != 0:
                block.failed = f"exit status {done.returncode}: {command}\n{done.stderr[-3000:]}"
                break
        after = os.times()
        block.wall_s = time.perf_counter() - start
        block.cpu_s = (after.children_user - cpu.children_user) + (after.children_system - cpu.children_system)
        if block.failed:
            break
    return blocks, output


def missing_outputs(work: Path, output: dict, only: str | None = None) -> list[str]:
    """What :data:`EXPECTED` lists (for the sections matching ``only``) that the run did not leave
    (files) or print (lines), one line each."""
    problems = []
    for section, (files, lines) in EXPECTED.items():
        if only is not None and not re.search(only, section):
            continue
        problems += [f"{section}: {name} missing" for name in files if not (work / name).is_file()]
        problems += [f"{section}: '{line.format(work=work)}' not printed" for line in lines
                     if line.format(work=work) not in output.get(section, "")]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few batches per training run instead of the stated budget")
    parser.add_argument("--workdir", help="run in WORKDIR/clone (default: a temporary folder, removed afterwards)")
    parser.add_argument("--limit-min", type=float, default=None, help="fail a block that took longer (wall minutes)")
    parser.add_argument("--only", help="run only the blocks whose README section matches this regular expression "
                        "(a block that uses an earlier block's run needs that block too)")
    parser.add_argument("--json", help="write the per-block record (section, commands, wall_s, cpu_s, failed) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = fresh_folder(Path(args.workdir or tmp))
        blocks, output = run_blocks(work, args.smoke, only=args.only)
        problems = [f"{b.section}: {b.failed}" for b in blocks if b.failed]
        problems += [] if problems else missing_outputs(work, output, args.only)
        if args.limit_min is not None:
            problems += [f"{b.section}: {b.wall_s / 60:.1f} min, over --limit-min {args.limit_min}"
                         for b in blocks if b.wall_s > 60 * args.limit_min]
        print(f"\nREADME blocks ({'smoke' if args.smoke else 'stated'} budget, OMP_NUM_THREADS=1, "
              f"load average {os.getloadavg()[0]:.1f}):")
        for b in blocks:
            if b.ran:
                print(f"  {b.section:50s} {b.wall_s / 60:5.1f} min wall {b.cpu_s / 60:5.1f} min CPU  ({len(b.ran)} commands)")
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(b) for b in blocks], indent=1))
        for problem in problems:
            print(f"readme_check: {problem}", file=sys.stderr)
        print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
