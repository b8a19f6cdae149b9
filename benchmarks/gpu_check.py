"""The GPU run ready to go: one command that measures what a GPU machine adds and writes it into the docs.

On a machine with CUDA GPUs, ``python benchmarks/gpu_check.py`` (about 5-10 minutes) measures

1. every backbone's training throughput (``configs/backbones/<name>.yaml`` sizes; QM9 batches of
   ``--batch-size`` molecules; the training step of ``benchmarks/backbone_speed.py``: energy readout,
   MSE loss, backward, Adam) in **fp32** (TF32 off), **tf32** (TF32 matmuls and convolutions) and
   **bf16** autocast, for an **energy** loss and for **energy + forces** (double backward):
   molecules/s and peak memory (``torch.cuda.max_memory_allocated``);
2. the **largest batch** that fits, per backbone, forces training in fp32: the batch size is
   doubled until CUDA runs out of memory (or ``--max-batch``);
3. ``--model.compile``: each backbone's energy step compiled (``atomzoo.nn.compile.compile_backbone``)
   against eager, with the time its first steps took (compilation);
4. **DDP over all GPUs** of the node: a tiny model is trained for a few steps with ``zoo fit``, then
   ``zoo test`` runs its checkpoint on one GPU and on all of them (``configs/trainer/ddp.yaml``);
   the test MAE and loss must agree to 1e-5 (evaluation is exact under DDP: every molecule once,
   sample-weighted means);

and writes the tables, the machine and the command into ``docs/performance.md`` between the lines
``<!-- gpu_check: begin -->`` and ``<!-- gpu_check: end -->`` (``--docs`` another file).

``--dry-run`` runs the script on the CPU at toy sizes (one timed step, batches of 4, one doubling,
SchNet, PaiNN and ET -- MACE at its shipped size takes ~10 s a step on a shared CPU -- and DDP as
two gloo processes with ``configs/trainer/ddp_cpu.yaml``) so that the tests
(``tests/test_gpu_check.py``) exercise it and it cannot rot; its numbers mean nothing and it writes
the docs only where ``--docs`` points. The compiled comparison is left out of the dry run
(inductor's first compilation of a backbone takes minutes on a loaded 2-core CPU).

Usage::

    python benchmarks/gpu_check.py                       # on the GPU machine; updates docs/performance.md
    python benchmarks/gpu_check.py --dry-run --docs /tmp/performance.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

BACKBONES = ["schnet", "painn", "mace", "et"]
DRY_BACKBONES = ["schnet", "painn", "et"]
PRECISIONS = ["fp32", "tf32", "bf16"]
MODES = ["energy", "forces"]
BEGIN, END = "<!-- gpu_check: begin -->", "<!-- gpu_check: end -->"
TINY = ["--model.backbone", str(REPO / "configs/backbones/schnet.yaml"),
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.num_rbf", "8"]


class Settings:
    """Sizes of a real run (GPU) or of a dry run (CPU, toy)."""

    def __init__(self, args) -> None:
        import torch

        self.dry = args.dry_run
        if not self.dry and not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device; run on a GPU machine, or --dry-run to exercise the script "
                             "on CPU")
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.steps = 1 if self.dry else args.steps
        self.warmup = 1 if self.dry else 3
        self.batch_size = 4 if self.dry else args.batch_size
        self.max_batch = 8 if self.dry else args.max_batch
        self.backbones = (args.backbones or ",".join(DRY_BACKBONES if self.dry else BACKBONES)).split(",")
        self.compile_backbones = [] if self.dry else self.backbones
        self.gpus = 2 if self.dry else torch.cuda.device_count()


# ----------------------------------------------------------------------------------------- throughput
@contextlib.contextmanager
def precision(name: str, device):
    """fp32 (TF32 off), tf32 (TF32 matmuls and convolutions) or bf16 autocast."""
    import torch

    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def batches_of(settings: Settings, batch_size: int, count: int):
    from backbone_speed import make_batches, read_qm9

    molecules = read_qm9(batch_size * count, stride=7)
    while len(molecules) < batch_size * count:  # large batches: the molecules again
        molecules = molecules + molecules
    return make_batches(molecules, batch_size, count, settings.device)


def time_steps(name: str, mode: str, prec: str, settings: Settings, batches) -> dict:
    """Warm up, then time ``settings.steps`` training steps; molecules/s and peak memory."""
    import torch
    from backbone_speed import make_step

    step, module, batches = make_step(name, settings.device, batches)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    cuda = settings.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def train(i: int) -> None:
        with precision(prec, settings.device):
            loss = step(batches[i % len(batches)], mode == "forces")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for i in range(settings.warmup):
        train(i)
    sync()
    warmup_s = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(settings.steps):
        train(settings.warmup + i)
    sync()
    elapsed = time.perf_counter() - start
    molecules = sum(b.num_graphs for b in batches) / len(batches)
    return {"backbone": name, "mode": mode, "precision": prec, "molecules_per_s": molecules * settings.steps / elapsed,
            "ms_per_step": 1000 * elapsed / settings.steps, "warmup_s": warmup_s,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}  # fmt: skip


def guarded(function, *args, **kwargs) -> dict:
    """``function(...)``, or ``{"error": <one line>}`` (a backbone that cannot run here is a row, not a crash)."""
    try:
        return function(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 -- reported in the table
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"}
    finally:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def throughput(settings: Settings) -> list[dict]:
    batches = batches_of(settings, settings.batch_size, 4)
    rows = []
    for name in settings.backbones:
        for mode in MODES:
            for prec in PRECISIONS:
                row = guarded(time_steps, name, mode, prec, settings, batches)
                rows.append({"backbone": name, "mode": mode, "precision": prec, **row})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def largest_batch(settings: Settings) -> list[dict]:
    """Per backbone: the largest power-of-two multiple of the batch size whose forces step fits."""
    import torch

    rows = []
    for name in settings.backbones:
        size, fitted, error = settings.batch_size, None, None
        while size <= settings.max_batch:
            try:
                time_steps(name, "forces", "fp32", _one_step(settings), batches_of(settings, size, 1))
                fitted = size
            except torch.cuda.OutOfMemoryError:
                break
            except Exception as err:  # noqa: BLE001
                error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                break
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            size *= 2
        rows.append({"backbone": name, "largest_batch": fitted, "limit": settings.max_batch, "error": error})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _one_step(settings: Settings) -> Settings:
    one = Settings.__new__(Settings)
    one.__dict__.update(settings.__dict__, steps=1, warmup=1)
    return one


def compiled(settings: Settings) -> list[dict]:
    batches = batches_of(settings, settings.batch_size, 4)
    rows = []
    for name in settings.compile_backbones:
        eager = guarded(time_steps, name, "energy", "fp32", settings, batches)
        fast = guarded(time_steps, f"{name}+compile", "energy", "fp32", settings, batches)
        rows.append({"backbone": name, "eager_ms": eager.get("ms_per_step"), "compiled_ms": fast.get("ms_per_step"),
                     "compile_warmup_s": fast.get("warmup_s"),
                     "error": fast.get("error") or eager.get("error")})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- DDP
def ddp(settings: Settings, work: Path) -> dict:
    """``zoo fit`` a tiny model, then ``zoo test`` its checkpoint on one device and on all: same metrics."""
    one, many = ("cpu.yaml", "ddp_cpu.yaml") if settings.dry else ("gpu.yaml", "ddp.yaml")
    data = ["-c", str(REPO / "configs/data/qm9.yaml"), "-c", str(REPO / "configs/objectives/regression.yaml"), *TINY,
            "--data.train_size", "64", "--data.num_val", "32", "--data.num_test", "101", "--data.eval_batch_size", "16",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    extra = ["--data.num_workers", "0"] if settings.dry else []

    def zoo(*args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
        result = subprocess.run([sys.executable, "-m", "atomzoo.cli", *args], cwd=work, env=env, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        if result.returncode:
            raise RuntimeError(f"zoo {args[0]} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")

    zoo("fit", *data, "-c", str(REPO / "configs/trainer" / one), *extra, "--trainer.max_steps", "4",
        "--trainer.logger.init_args.save_dir", str(work / "fit"))
    ckpt = str(next((work / "fit").rglob("last.ckpt")))
    metrics = {}
    for label, trainer in (("one", one), ("all", many)):
        zoo("test", *data, "-c", str(REPO / "configs/trainer" / trainer), *extra, "--ckpt_path", ckpt,
            "--trainer.logger.init_args.save_dir", str(work / label))
        metrics[label] = json.loads(next((work / label).rglob("test_metrics.json")).read_text())
    mae = {k: metrics[k]["test/homo_mae_meV"] for k in metrics}
    loss = {k: metrics[k]["test/loss"] for k in metrics}
    exact = all(abs(x["all"] - x["one"]) <= 1e-5 * abs(x["one"]) for x in (mae, loss))
    row = {"processes": settings.gpus, "mae_one_meV": mae["one"], "mae_all_meV": mae["all"], "loss_one": loss["one"],
           "loss_all": loss["all"], "exact": exact}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


# ---------------------------------------------------------------------------------------------- report
def _value(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [BEGIN, "", f"Measured {report['date']} on {machine.get('gpu', machine['cpu'])} "
             f"({report['gpus']} device(s); "
             f"torch {machine['torch']}), `{report['command']}`" + (" -- **dry run on the CPU: toy sizes, the numbers "
             "mean nothing**" if report["dry_run"] else "") + ".", "",
             f"Training throughput (molecules/s; peak memory MB), QM9 batches of {report['batch_size']}:", "",
             "| backbone | loss | fp32 | tf32 | bf16 autocast |", "|---|---|---|---|---|"]  # fmt: skip
    cells = {(r["backbone"], r["mode"], r["precision"]): r for r in report["throughput"]}
    for name in report["backbones"]:
        for mode in MODES:
            row = [name, "energy" if mode == "energy" else "energy + forces"]
            for prec in PRECISIONS:
                r = cells.get((name, mode, prec), {})
                row.append(f"not run ({r['error']})" if "error" in r else
                           f"{r['molecules_per_s']:.0f} ({_value(r.get('peak_memory_mb'), '.0f')})")  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Largest batch that fits (energy + forces, fp32; batch doubled from {report['batch_size']} up to "
              f"{report['max_batch']}):", "", "| backbone | largest batch |", "|---|---|"]  # fmt: skip
    for r in report["largest_batch"]:
        note = f" ({r['error']})" if r["error"] else ""
        lines.append(f"| {r['backbone']} | {r['largest_batch'] or '-'}{note} |")
    lines += ["", "`--model.compile true` (energy step, fp32):", "",
              "| backbone | eager ms/step | compiled ms/step | speed-up | first steps (compilation) s |",
              "|---|---|---|---|---|"]
    if not report["compile"]:
        lines.append("| (not run in a dry run) | | | | |")
    for r in report["compile"]:
        ratio = r["eager_ms"] / r["compiled_ms"] if r["eager_ms"] and r["compiled_ms"] else None
        lines.append(f"| {r['backbone']} | {_value(r['eager_ms'], '.1f')} | {_value(r['compiled_ms'], '.1f')} "
                     f"| {_value(ratio, '.2f')} | {_value(r['compile_warmup_s'], '.1f')}"
                     + (f" ({r['error']})" if r["error"] else "") + " |")  # fmt: skip
    d = report["ddp"]
    if "error" in d:
        lines += ["", f"DDP: not run ({d['error']})."]
    else:
        lines += ["", f"DDP test of one checkpoint (101 molecules) on 1 and on {d['processes']} processes: test MAE "
                  f"{d['mae_one_meV']:.6f} / {d['mae_all_meV']:.6f} meV, loss {d['loss_one']:.6f} / "
                  f"{d['loss_all']:.6f}: "
                  + ("**exact**." if d["exact"] else "**differ** (evaluation is meant to be exact: report it).")]
    return "\n".join(lines + ["", END])


def write_docs(path: Path, text: str) -> None:
    """Replace the block between the markers in ``path`` (appended as a section if absent)."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n## GPU check (`benchmarks/gpu_check.py`)\n\n" + text + "\n"
    path.write_text(new)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes (for the tests)")
    parser.add_argument("--backbones", help=f"comma-separated (default {','.join(BACKBONES)}; dry run "
                                            f"{','.join(DRY_BACKBONES)})")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="timed steps per cell (default 20)")
    parser.add_argument("--batch-size", type=int, default=128, help="QM9 molecules per batch (default 128)")
    parser.add_argument("--max-batch", type=int, default=16384, help="largest batch size tried (default 16384)")
    parser.add_argument("--docs", help="markdown file to write the tables into (default docs/performance.md; "
                                       "a dry run writes only where this points)")  # fmt: skip
    parser.add_argument("--json", help="also write the whole report as JSON")
    args = parser.parse_args(argv)
    settings = Settings(args)
    import torch
    from backbone_speed import machine

    if settings.dry:
        torch.set_num_threads(1)
    started = time.perf_counter()
    report = {"date": datetime.date.today().isoformat(), "machine": machine(settings.device.type),
              "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "dry_run": settings.dry, "gpus": settings.gpus, "backbones": settings.backbones,
              "batch_size": settings.batch_size, "max_batch": settings.max_batch}  # fmt: skip
    report["throughput"] = throughput(settings)
    report["largest_batch"] = largest_batch(settings)
    report["compile"] = compiled(settings)
    with tempfile.TemporaryDirectory() as work:
        report["ddp"] = guarded(ddp, settings, Path(work))
    report["seconds"] = time.perf_counter() - started
    text = markdown(report)
    print(text)
    docs = args.docs or (None if settings.dry else str(REPO / "docs" / "performance.md"))
    if docs:
        write_docs(Path(docs), text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
