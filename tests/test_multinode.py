"""Multi-node launches rehearsed on one machine: torchrun with c10d rendezvous, and SLURM's variables.

Each launch starts two "nodes" of one process each (gloo on localhost, CPU) with the commands of
docs/training.md ("Rehearsing a multi-node launch on one machine"), read from the doc itself, plus a
tiny model and a few molecules. Each must end with the test metrics and final weights of one
process training on the same global batch (twice the per-process batch): the DDP sampler gives
rank ``r`` molecules ``r, r + 2, ...`` of the seeded permutation, so the two ranks' batches together
are the one process's batch, and DDP's gradient average over two equal halves is its gradient.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "training.md"
TINY = ["--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.num_rbf", "8"]
SMALL = ["--data.train_size", "64", "--data.num_val", "32", "--data.num_test", "101", "--data.eval_batch_size", "16",
         "--trainer.max_steps", "4", "--model.init_args.warmup_steps", "1", "--model.init_args.lr", "5e-3",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TIMEOUT = 600


def doc_command(marker: str) -> str:
    """The fenced ``bash`` block of docs/training.md's rehearsal section that contains ``marker``,
    backslash continuations joined."""
    section = DOC.read_text().split("### Rehearsing a multi-node launch on one machine", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if marker in b]
    assert len(blocks) == 1, f"docs/training.md: expected one rehearsal block with {marker!r}, found {len(blocks)}"
    return blocks[0].replace("\\\n", " ")


def split_command(text: str, **values: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=value ... program args`` -> (environment assignments, argv), ``$NAME`` replaced by ``values``."""
    for name, value in values.items():
        text = text.replace(f"${name}", value)
    assert "$" not in text, f"unreplaced variable in {text!r}"
    words = shlex.split(text, comments=True)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    program = {"zoo": [sys.executable, "-m", "atomzoo.cli"],
               "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[words[0]]
    return env, program + words[1:]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def base_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any launcher's variables, with the DumpWeights callback importable."""
    launcher = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_", "SLURM_", "TORCHELASTIC", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    env["PYTHONPATH"] = str(ROOT / "tests/support")
    env["OMP_NUM_THREADS"] = "1"
    return env


def callbacks(tmp_path: Path, prefix: str) -> list[str]:
    path = tmp_path / f"{prefix}-callbacks.yaml"
    path.write_text("trainer:\n  callbacks:\n"
                    "  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                    "    init_args: {monitor: val/loss, mode: min, save_top_k: 1}\n"
                    "  - class_path: record_batches.DumpWeights\n"
                    f"    init_args: {{prefix: {tmp_path / prefix}}}\n")
    return ["-c", str(path)]


def outputs(tmp_path: Path) -> list[str]:
    """Logs and checkpoints under ``tmp_path/logs`` (the commands run in the checkout, for the doc's relative paths)."""
    return ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.default_root_dir", str(tmp_path)]


def run_all(commands: list[tuple[dict[str, str], list[str]]], cwd: Path) -> None:
    """Start every command at once (the "nodes"), wait for all; each must exit 0."""
    processes = [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for env, argv in commands]
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-4000:]


def results(tmp_path: Path, save_dir: str, prefix: str) -> tuple[dict, dict]:
    metrics = json.loads(next((tmp_path / save_dir).rglob("test_metrics.json")).read_text())
    return metrics, torch.load(tmp_path / f"{prefix}0.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process(cache_dir, tmp_path_factory) -> tuple[dict, dict]:
    """One process, the global batch of 32 of the two-node runs (batches of 16 per process)."""
    tmp = tmp_path_factory.mktemp("one")
    _, argv = split_command(doc_command("torchrun"), PORT="0")
    fit = argv[argv.index("fit"):]
    ddp = fit.index("configs/trainer/ddp_cpu.yaml")
    fit = fit[: ddp - 1] + fit[ddp + 1:]  # one process: Lightning's default CPU trainer
    for option, value in (("--trainer.num_nodes", "1"), ("--data.batch_size", "32")):
        fit[fit.index(option) + 1] = value
    env = base_env(tmp)
    run_all([(env, [sys.executable, "-m", "atomzoo.cli", *fit, *TINY, *SMALL, *callbacks(tmp, "one"),
                    *outputs(tmp)])], cwd=ROOT)
    return results(tmp, "logs", "one")


def check_same(tmp_path: Path, one: tuple[dict, dict]) -> None:
    """Rank 0's test metrics and final weights are the one process's; rank 1 ended with rank 0's weights."""
    metrics, weights = results(tmp_path, "logs", "rank")
    other = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(weights[k], other[k]) for k in weights if not k.endswith(("running_mean", "running_var")))
    reference_metrics, reference_weights = one
    assert metrics["test/homo_mae_meV"] > 0
    assert metrics["test/homo_mae_meV"] == pytest.approx(reference_metrics["test/homo_mae_meV"], rel=1e-5)
    assert metrics["test/loss"] == pytest.approx(reference_metrics["test/loss"], rel=1e-5)
    assert weights.keys() == reference_weights.keys()
    start = torch.load(tmp_path / "rank0_start.pt", weights_only=True)
    assert max(float((weights[k] - start[k]).abs().max()) for k in start if k.startswith("backbone.")) > 1e-3
    for name, value in weights.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, reference_weights[name], rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(value, reference_weights[name]), name


@pytest.mark.slow  # ~45 s on the loaded 2-core VM (its fixture ~30 s more)
def test_torchrun_two_nodes_match_one_process(one_process, tmp_path):
    """Two torchrun agents ("nodes") meet through c10d rendezvous on localhost; one process each."""
    env, argv = split_command(doc_command("torchrun"), PORT=free_port())
    assert "--nnodes" in argv and argv[argv.index("--nnodes") + 1] == "2"
    assert argv[argv.index("--nproc-per-node") + 1] == "1"
    extra = [*TINY, *SMALL, *callbacks(tmp_path, "rank"), *outputs(tmp_path)]
    node = ({**base_env(tmp_path), **env}, [*argv, *extra])
    run_all([node, node], cwd=ROOT)
    check_same(tmp_path, one_process)


@pytest.mark.slow  # ~60 s on the loaded 2-core VM
def test_slurm_two_tasks_match_one_process(one_process, tmp_path):
    """Two tasks with the variables srun sets (Lightning's SLURMEnvironment), one per "node"."""
    port = free_port()
    extra = [*TINY, *SMALL, *callbacks(tmp_path, "rank"), *outputs(tmp_path)]
    tasks = []
    for r in ("0", "1"):
        env, argv = split_command(doc_command("SLURM_PROCID"), r=r, PORT=port)
        assert env["SLURM_NTASKS"] == "2" and env["SLURM_NODEID"] == r
        tasks.append(({**base_env(tmp_path), **env}, [*argv, *extra]))
    run_all(tasks, cwd=ROOT)
    check_same(tmp_path, one_process)
