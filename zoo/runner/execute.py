"""Runs the cells of a matrix as ordinary ``zoo fit`` processes, resumably.

A cell with rows in ``results.csv`` is finished and never rerun (``rerun`` forces it). An unfinished
cell whose folder holds a checkpoint (a kill, a crash, a timeout) continues from its newest one
(``--ckpt_path``); one without is wiped and started afresh. After each cell its metrics are merged
into ``results.csv`` (:mod:`atomzoo.runner.results`) and ``DONE.json`` is written into its folder;
with ``commit_results`` the CSV is then committed to git, alone (:func:`commit_results_file`). Each
row names the code the cell ran (:func:`code_version`): the commit, and for a checkout with uncommitted
changes the patch of those changes, kept in ``<output>/patches/`` (committed too).

A fine-tuning cell starts from its pretraining cell's final checkpoint (:func:`checkpoint_of`). The
run folders (``cells``) are scratch space, not results: with ``pretrain.keep`` a weights-only copy
of each finished pretraining run is kept beside ``results.csv`` (:func:`kept_checkpoint`, committed
with ``commit_results``), so a fresh checkout fine-tunes from the same weights; a finished
pretraining cell whose run folder and copy are both gone is run again before the cells that need it
(its rows are replaced).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import yaml
from tqdm import tqdm

from ..line_stream import LineStream
from ..training_clock import CLOCK_FILE
from .matrix import Cell, Matrix
from .results import finished_cells, merge_rows, read_rows

LOG_SUBDIR = "run"
#: folder under a matrix's ``output`` with the ``pretrain.keep`` copies (``<cell id>.ckpt``)
KEPT_SUBDIR = "pretrained"


def cell_dir(matrix: Matrix, cell: Cell) -> Path:
    """The cell's folder: ``log.txt`` (its command and output), ``DONE.json`` and the run folder."""
    return matrix.cells_dir / cell.id


def log_dir(matrix: Matrix, cell: Cell) -> Path:
    """Where the cell's Lightning run writes config.yaml, checkpoints/, events and test_metrics.json."""
    return cell_dir(matrix, cell) / LOG_SUBDIR


def checkpoint_of(matrix: Matrix, cell: Cell) -> Path:
    """The final weights of a cell's run, what a fine-tuning cell starts from: the newest of
    ``last.ckpt`` and ``last-step.ckpt`` (``last.ckpt`` when none of the files below exists yet).

    ``zoo`` writes ``last.ckpt`` after each validation and ``last-step.ckpt`` every 500 steps (its
    defaults), so the newest holds the final step when the run ends on a validation or a multiple of
    500 steps: give pretraining runs such a length. (Runs before issue 31 rewrote ``last.ckpt`` only
    when the monitored ``val/loss`` improved; the newest file is right for them too.)

    Only a run that finished (its ``DONE.json`` written) counts: a run killed part-way (a rerun, a
    remake) holds checkpoints of unfinished training. Otherwise -- no finished run folder, as in a
    fresh checkout (the folders are not committed) -- the weights-only copy ``pretrain.keep`` left
    (:func:`kept_checkpoint`) if there is one."""
    found = final_weights(matrix, cell)
    return found if found is not None else log_dir(matrix, cell) / "checkpoints" / "last.ckpt"


def final_weights(matrix: Matrix, cell: Cell) -> Path | None:
    """:func:`checkpoint_of` when that file holds a finished run's weights; ``None`` when none does (the
    cell never finished here, or its run folder is gone or was rerun part-way, and there is no kept copy)."""
    newest = _finished_run_checkpoint(matrix, cell)
    if newest is not None:
        return newest
    kept = kept_checkpoint(matrix, cell)
    return kept if kept.is_file() else None


def _finished_run_checkpoint(matrix: Matrix, cell: Cell) -> Path | None:
    """The newest checkpoint of the cell's run folder if that run finished (``DONE.json``), else ``None``."""
    return resume_point(matrix, cell) if (cell_dir(matrix, cell) / "DONE.json").is_file() else None


def kept_checkpoint(matrix: Matrix, cell: Cell) -> Path:
    """Where ``pretrain.keep`` stores a pretraining cell's final weights: ``<output>/pretrained/<cell id>.ckpt``
    (:func:`atomzoo.model_files.write_weights_only`: no optimiser state; 1.0 MB for PaiNN 64 x 3 with SCD's heads)."""
    return matrix.output / KEPT_SUBDIR / f"{cell.id}.ckpt"


def keep_checkpoint(matrix: Matrix, cell: Cell, commit: bool = False) -> Path | None:
    """Write the :func:`kept_checkpoint` copy of a finished pretraining cell's newest run checkpoint (and,
    with ``commit``, git-commit that file alone); ``None`` when the run folder holds no finished run."""
    from ..model_files import write_weights_only

    source = _finished_run_checkpoint(matrix, cell)
    if source is None:
        return None
    kept = write_weights_only(source, kept_checkpoint(matrix, cell))
    if commit:
        commit_results_file(kept, f"{matrix.name}: pretrained weights of cell {cell.id}")
    return kept


def resume_point(matrix: Matrix, cell: Cell) -> Path | None:
    """The newest checkpoint an unfinished cell left behind (``last.ckpt`` or ``last-step.ckpt``), if any."""
    folder = log_dir(matrix, cell) / "checkpoints"
    saved = sorted(folder.glob("last*.ckpt"), key=lambda f: (f.stat().st_mtime, f.name == "last.ckpt"))
    return saved[-1] if saved else None


def command(matrix: Matrix, cell: Cell, cells_by_id: dict[str, Cell], resume: Path | None = None) -> list[str]:
    """The full ``zoo fit`` command line of a cell (the one place it is built)."""
    folder = cell_dir(matrix, cell)
    args = [sys.executable, "-m", "atomzoo.cli", "fit", *cell.args,
            "--trainer.logger.class_path", "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.init_args.save_dir", str(folder.parent),
            "--trainer.logger.init_args.name", folder.name,
            "--trainer.logger.init_args.version", LOG_SUBDIR,
            "--trainer.default_root_dir", str(folder),
            "--trainer.enable_progress_bar", "false"]
    if cell.depends_on:
        args += ["--model.init_from", str(checkpoint_of(matrix, cells_by_id[cell.depends_on]))]
    if resume is not None:
        args += ["--ckpt_path", str(resume)]
    return args


def read_curves(directory: Path) -> list[tuple[str, int, float]]:
    """All scalar series of the TensorBoard event files in ``directory`` as (tag, step, value); a step
    logged again after a resume keeps its newest value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = {(tag, int(e.step)): float(e.value)
              for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag)}
    return [(tag, step, value) for (tag, step), value in series.items()]


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def code_version(cwd: Path | None = None, patches: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout at ``cwd`` (default: the current directory), with ``+dirty``
    when tracked files outside ``benchmarks/results`` differ from it; ``""`` outside a git checkout.

    With ``patches`` (a folder), a dirty checkout's difference from HEAD (``git diff --binary HEAD``,
    tracked files outside ``benchmarks/results``) is kept as ``<patches>/<h>.diff``, ``h`` the first 12
    hex digits of its SHA-256 (written atomically, once per content), and the version reads
    ``<commit>+dirty:<h>``: ``git checkout <commit> && git apply <h>.diff`` gives the exact code that ran.
    Untracked files are not part of it (nor of ``+dirty``).
    """
    exclude = ("--", ".", ":(exclude)benchmarks/results")
    try:
        head = _git("rev-parse", "HEAD", cwd=cwd)
        if head.returncode != 0:
            return ""
        diff = _git("diff", "--quiet", "HEAD", *exclude, cwd=cwd)
        if diff.returncode != 1:
            return head.stdout.strip()
        if patches is None:
            return head.stdout.strip() + "+dirty"
        text = subprocess.run(["git", "diff", "--binary", "HEAD", *exclude], cwd=cwd, capture_output=True,
                              timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    name = hashlib.sha256(text).hexdigest()[:12]
    path = Path(patches) / f"{name}.diff"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_bytes(text)
        os.replace(tmp, path)
    return f"{head.stdout.strip()}+dirty:{name}"


def patches_dir(matrix: Matrix) -> Path:
    """Where a matrix keeps the uncommitted changes its cells ran with (:func:`code_version`): ``<output>/patches``."""
    return matrix.output / "patches"


def commit_results_file(path: Path, message: str, attempts: int = 5, wait_s: float = 2.0) -> bool:
    """``git add`` and ``git commit -m message -- path``: commit that one file and nothing else (other
    staged changes stay staged, uncommitted). Retries while another git process holds ``index.lock``;
    never raises: on failure (no git, not a checkout, a persistent lock) it warns and returns False.
    Nothing to commit (the file unchanged) counts as success."""
    path = Path(path).resolve()
    why = ""
    for attempt in range(attempts):
        try:
            added = _git("add", "--", path.name, cwd=path.parent)
            if added.returncode == 0:
                if _git("diff", "--cached", "--quiet", "--", path.name, cwd=path.parent).returncode == 0:
                    return True  # already committed as it is
                done = _git("commit", "-q", "-m", message, "--", path.name, cwd=path.parent)
                if done.returncode == 0:
                    return True
                why = (done.stderr or done.stdout).strip()
            else:
                why = added.stderr.strip()
        except (OSError, subprocess.SubprocessError) as err:
            why = str(err)
            break
        if "index.lock" not in why:
            break
        time.sleep(wait_s * (attempt + 1))
    tqdm.write(f"warning: could not commit {path} ({why.splitlines()[-1] if why else 'git failed'}); "
               "the run goes on, the file is written")
    return False


def _arg(args: list[str], name: str) -> str | None:
    """The value after the last ``name`` in ``args`` (``None`` if absent)."""
    found = [k for k, a in enumerate(args[:-1]) if a == name]
    return args[found[-1] + 1] if found else None


def run_progress(run: Path, curves: list[tuple[str, int, float]], args: list[str]) -> dict[str, float]:
    """How a finished run ended, from its logged series ``curves`` (:func:`read_curves`) and its
    arguments ``args``: ``steps`` (optimiser steps: 1 + the last logged training or validation
    step) and, where ``args`` add Lightning's EarlyStopping (:mod:`atomzoo.runner.matrix`), ``stopped_early`` / ``hit_cap`` (0/1:
    Lightning's rule replayed on the monitored validation series -- a check improves when it is below
    the best so far minus ``min_delta``; the run stopped early when the checks since the last
    improvement reached ``patience``) and ``best_step`` (the step in the best checkpoint's name,
    ``best-<epoch>-<step>.ckpt``: the checkpoint ``--test_after_fit`` tests). ``last.ckpt`` is not
    read (before issue 31 it was only rewritten on improvement)."""
    found: dict[str, float] = {}
    fitted = [step for tag, step, _ in curves if tag.startswith(("train/", "val/"))]  # test/ and epoch: step + 1
    if fitted:
        found["steps"] = 1 + max(fitted)
    monitor = _arg(args, "--trainer.callbacks.monitor")
    if monitor is not None and any(a.endswith("EarlyStopping") for a in args):
        patience = int(_arg(args, "--trainer.callbacks.patience") or 3)
        min_delta = abs(float(_arg(args, "--trainer.callbacks.min_delta") or 0.0))
        best, wait = math.inf, 0
        for _, value in sorted((step, value) for tag, step, value in curves if tag == monitor):
            if value < best - min_delta:
                best, wait = value, 0
            else:
                wait += 1
        found["stopped_early"] = int(wait >= patience)
        found["hit_cap"] = 1 - found["stopped_early"]
    names = [re.fullmatch(r"best-\d+-(\d+)(-v\d+)?\.ckpt", f.name) for f in (run / "checkpoints").glob("best-*.ckpt")]
    steps = [int(m.group(1)) for m in names if m]
    if steps:
        found["best_step"] = max(steps)
    return found


def _run_settings(run: Path) -> dict[str, float]:
    """``max_steps`` and ``batch_size`` of a run, from its resolved ``config.yaml`` (those it has)."""
    config = run / "config.yaml"
    if not config.exists():
        return {}
    resolved = yaml.safe_load(config.read_text())
    found = {"max_steps": (resolved.get("trainer") or {}).get("max_steps"),
             "batch_size": ((resolved.get("data") or {}).get("init_args") or {}).get("batch_size")}
    return {k: v for k, v in found.items() if isinstance(v, int | float) and v >= 0}


def collect(matrix: Matrix, cell: Cell, wall_s: float, cpu_s: float | None = None, commit: str = "",
            command_line: str = "", resumed: bool = False) -> list[dict]:
    """Rows for results.csv (:mod:`atomzoo.runner.results`): final test metrics, kept curves, wall and
    CPU time, compute settings, how the run ended, the code version and the command of a finished cell."""
    base = {**cell.labels, "commit": commit}
    rows = [{**base, "metric": "wall_s", "step": "", "value": wall_s, "command": command_line}]
    if cpu_s is not None:
        rows.append({**base, "metric": "cpu_s", "step": "", "value": cpu_s})
    rows.append({**base, "metric": "resumed", "step": "", "value": int(resumed)})
    run = log_dir(matrix, cell)
    curves = read_curves(run)
    progress = run_progress(run, curves, cell.args)
    rows += [{**base, "metric": k, "step": "", "value": v} for k, v in {**_run_settings(run), **progress}.items()]
    clock = run / CLOCK_FILE  # the training compute of all attempts (atomzoo.training_clock)
    if clock.exists():
        timed = json.loads(clock.read_text())
        rows += [{**base, "metric": f"train_{k}", "step": "", "value": float(timed[k])}
                 for k in ("cpu_s", "wall_s", "attempts", "attempt_cpu_s")]
        rows.append({**base, "metric": "train_clock_complete", "step": "", "value": int(bool(timed["complete"]))})
    metrics_file = log_dir(matrix, cell) / "test_metrics.json"
    if metrics_file.exists():
        for name, value in json.loads(metrics_file.read_text()).items():
            rows.append({**base, "metric": name, "step": "", "value": value})
    for tag, step, value in curves:
        if tag.startswith(matrix.curves):
            rows.append({**base, "metric": f"curve:{tag}", "step": step, "value": value})
    return rows


#: the validation curve a pretraining cell run again is compared on with its earlier run
REMAKE_CURVE = "curve:val/loss"


def compare_with_earlier_run(cell: Cell, rows: list[dict], earlier: list[dict]) -> list[dict]:
    """Rows recording how a pretraining cell run again (``--rerun``, or remade because its weights were
    lost) compares with its earlier run, whose rows ``earlier`` (results.csv as read) still holds:
    ``remake_val_checks`` (validations at the same steps in both) and ``remake_val_loss_max_abs_diff``
    (largest |new - earlier| ``val/loss`` over them; 0 means the same training to the logged precision,
    so fine-tunings from either weights start from the same network). One line says which, with the
    earlier run's commit. Nothing when the earlier run logged no ``val/loss``."""
    old = {int(float(r["step"])): float(r["value"]) for r in earlier
           if r["cell"] == cell.id and r["metric"] == REMAKE_CURVE and r["step"] != ""}
    new = {int(float(r["step"])): float(r["value"]) for r in rows if r["metric"] == REMAKE_CURVE and r["step"] != ""}
    common = sorted(set(old) & set(new))
    if not common:
        return []
    diff = max(abs(new[k] - old[k]) for k in common)
    before = next((r["commit"] for r in earlier if r["cell"] == cell.id and r.get("commit")), "")
    tqdm.write(f"pretraining cell {cell.id} run again: val/loss " + (
        f"identical to the earlier run's at all {len(common)} validations" if diff == 0 else
        f"differs from the earlier run's by up to {diff:.3g} over {len(common)} validations (earlier commit "
        f"{before or 'unknown'}): its earlier fine-tunings started from other weights than later ones will"))
    base = {**cell.labels, "commit": rows[0].get("commit", "")}
    return [{**base, "metric": "remake_val_checks", "step": "", "value": len(common)},
            {**base, "metric": "remake_val_loss_max_abs_diff", "step": "", "value": diff}]


def cell_env(matrix: Matrix, parallel: int, threads: int | None) -> dict[str, str]:
    """Environment of a cell's process: the matrix's ``pythonpath`` first on PYTHONPATH; ``threads``
    OpenMP/MKL threads (default with ``parallel`` > 1: the cores shared out, unless already set)."""
    env = dict(os.environ)
    paths = [str(p.resolve()) for p in matrix.pythonpath]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads is not None:
            env[var] = str(threads)
        elif parallel > 1:
            env.setdefault(var, str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


@dataclass
class _Running:
    cell: Cell
    proc: subprocess.Popen
    log: IO[str]
    start: float
    command: str = ""
    commit: str = ""
    resumed: bool = False
    cpu_s: float | None = None


def _reap(job: _Running, block: bool = False) -> int | None:
    """The exit code of ``job``'s process if it has ended (``None`` if not; ``block``: wait for it),
    recording its CPU time (user + system of it and its waited-for children, ``os.wait4``)."""
    if job.proc.returncode is not None:
        return job.proc.returncode
    try:
        pid, status, usage = os.wait4(job.proc.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere
        return job.proc.wait()
    if pid == 0:
        return None
    job.cpu_s = usage.ru_utime + usage.ru_stime
    job.proc.returncode = os.waitstatus_to_exitcode(status)
    return job.proc.returncode


def _remake_lost_pretraining(matrix: Matrix, todo: list[Cell], by_id: dict[str, Cell], finished: set[str],
                             fresh: set[str]) -> list[Cell]:
    """``todo`` with, before the first cell that needs it, every finished pretraining cell whose final
    weights are gone (no run checkpoint, no ``pretrain.keep`` copy): it is run again from scratch
    (added to ``fresh``; its rows are replaced), instead of blocking its fine-tuning cells."""
    queued = {c.id for c in todo}
    out: list[Cell] = []
    for cell in todo:
        dep = cell.depends_on
        if (dep and dep in finished and dep not in fresh and dep not in queued
                and final_weights(matrix, by_id[dep]) is None):
            tqdm.write(f"pretraining cell {dep} is finished but its weights are gone (no finished run in "
                       f"{cell_dir(matrix, by_id[dep])}, no copy at {kept_checkpoint(matrix, by_id[dep])}): running it "
                       "again first (its rows are replaced; pretrain.keep in the matrix keeps a copy)")
            fresh.add(dep)
            queued.add(dep)
            out.append(by_id[dep])
        out.append(cell)
    return out


def launch_order(pending: list[Cell], ready) -> list[Cell]:
    """``pending`` in the order cells are started: matrix order, except that fine-tuning cells whose
    pretraining is done (``ready(id)``) go first. Their results come sooner, and the pretraining's weights
    are needed for less long: a session that stops leaves fewer finished pretraining runs whose
    fine-tuning has not run (with no ``pretrain.keep`` copy, each would be run again)."""
    return sorted(pending, key=lambda c: not (c.depends_on and ready(c.depends_on)))


def run_cells(matrix: Matrix, cells: list[Cell], all_cells: list[Cell], dry_run: bool = False,
              timeout: float | None = None, parallel: int = 1, threads: int | None = None,
              rerun: bool = False, commit_results: bool = False, stop_by: float | None = None,
              cell_seconds: Callable[[Cell], float | None] | None = None) -> dict[str, list[str]]:
    """Run ``cells`` (a selection of ``all_cells``), up to ``parallel`` at once; return ids by outcome.

    Outcomes: ``done``, ``skipped`` (finished earlier: rows in results.csv), ``failed`` and
    ``blocked`` (a fine-tuning cell whose pretraining failed, or was neither selected nor finished
    earlier). Cells start in matrix order, except that a fine-tuning cell whose pretraining is done
    goes first (:func:`launch_order`); a fine-tuning cell waits until its pretraining cell is done; a
    finished pretraining cell whose weights are gone (no finished run, no ``pretrain.keep`` copy) is run
    again first. With ``pretrain.keep``, each pretraining cell that finishes (or finished earlier and
    has no copy yet) gets its weights-only copy (:func:`keep_checkpoint`). ``rerun``: run the selected
    cells again even if finished (from scratch; their rows are replaced). With ``dry_run`` nothing
    runs: the command of every cell still to run is printed, then a ``#`` summary line; the outcome's
    ``planned`` lists those cells (``zoo-bench run --dry-run`` adds their estimated cost). SIGTERM
    (``kill PID``) and Ctrl-C stop the run and kill the running cells (which resume from their
    checkpoints next time). ``commit_results``: after each finished cell, commit ``results.csv`` (that
    path only) with the message ``"<matrix name>: cell <id>"``, and each kept copy alone.

    ``stop_by`` (a time, seconds since the epoch; e.g. the end of a batch job's wall-time allocation):
    a cell is started only if ``cell_seconds(cell)`` (its expected wall time; ``None``: unknown, started)
    ends before it; once no running cell is left and no pending cell fits, the run returns, the cells not
    started listed as ``deferred`` (a fine-tuning cell whose pretraining was deferred too). Rerunning
    the same command later continues with them; no cell is killed part-way.
    """
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    by_id = {c.id: c for c in all_cells}
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": [], "blocked": [], "deferred": []}
    finished = finished_cells(matrix.results_csv)
    fresh = {c.id for c in cells} if rerun else set()
    todo = []
    for cell in cells:
        if cell.id in finished and not rerun:
            outcome["skipped"].append(cell.id)
        else:
            todo.append(cell)
    todo = _remake_lost_pretraining(matrix, todo, by_id, finished, fresh)
    outcome["skipped"] = [c for c in outcome["skipped"] if c not in fresh]
    if dry_run:
        for cell in todo:
            print(" ".join(command(matrix, cell, by_id, None if cell.id in fresh else resume_point(matrix, cell))))
        stray = sorted(finished - set(by_id))
        remade = sum(c.id in finished for c in todo)
        print(f"# {matrix.name}: {len(cells)} cells selected, {len(outcome['skipped'])} finished "
              f"(rows in {matrix.results_csv}), {len(todo)} to run"
              + (f" ({remade} of them finished, run again: --rerun, or pretraining whose weights are gone)"
                 if remade else "")
              + (f"; results.csv also holds {len(stray)} cells this matrix does not define" if stray else ""))
        outcome["planned"] = [c.id for c in todo]
        return outcome
    if outcome["skipped"]:
        print(f"{len(outcome['skipped'])} finished cells skipped (rows in {matrix.results_csv}; "
              "--rerun runs them again)")
    if matrix.pretrain.get("keep"):  # copies of pretraining runs that finished before (or without) pretrain.keep
        for cell in all_cells:
            if (cell.phase == "pretrain" and cell.id in finished and cell.id not in fresh
                    and not kept_checkpoint(matrix, cell).is_file()):
                keep_checkpoint(matrix, cell, commit=commit_results)
    env = cell_env(matrix, parallel, threads)
    pending = list(todo)
    running: list[_Running] = []
    # in a log file (the background queue's), whole lines: one per change of the running cells and one every
    # 5 minutes, instead of a carriage-return redraw every 5 seconds that piles up into one endless line
    lines = not (getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())
    bar = tqdm(total=len(todo), unit="cell", dynamic_ncols=True, file=LineStream(sys.stderr) if lines else None)
    refresh_every = 300.0 if lines else 5.0

    def ready(dep: str) -> bool:
        return dep in outcome["done"] or (dep in finished and dep not in fresh)

    def launch(cell: Cell) -> None:
        folder = cell_dir(matrix, cell)
        resume = None if cell.id in fresh else resume_point(matrix, cell)
        if resume is None and folder.exists():
            shutil.rmtree(folder)  # leftovers of a crashed or killed attempt that saved no checkpoint
        folder.mkdir(parents=True, exist_ok=True)
        cmd = command(matrix, cell, by_id, resume)
        log = open(folder / "log.txt", "a" if resume else "w")  # noqa: SIM115 -- open while the cell runs; closed in finish()
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        commit = code_version(patches=patches_dir(matrix))
        if commit_results and "+dirty:" in commit:
            commit_results_file(patches_dir(matrix) / f"{commit.split(':')[-1]}.diff",
                                f"{matrix.name}: uncommitted changes cell {cell.id} ran with")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running.append(_Running(cell, proc, log, time.perf_counter(), " ".join(cmd), commit, resume is not None))

    def finish(job: _Running, ok: bool) -> None:
        job.log.close()
        wall = time.perf_counter() - job.start
        folder = cell_dir(matrix, job.cell)
        if ok:
            rows = collect(matrix, job.cell, wall, job.cpu_s, job.commit, job.command, job.resumed)
            if job.cell.phase == "pretrain" and job.cell.id in finished:  # a rerun or a remade lost run
                rows += compare_with_earlier_run(job.cell, rows, read_rows(matrix.results_csv))
            merge_rows(matrix.results_csv, job.cell.id, rows)
            (folder / "DONE.json").write_text(json.dumps({"wall_s": wall, "cpu_s": job.cpu_s, **job.cell.labels},
                                                         indent=1))
            outcome["done"].append(job.cell.id)
            if commit_results:
                commit_results_file(matrix.results_csv, f"{matrix.name}: cell {job.cell.id}")
            if job.cell.phase == "pretrain" and matrix.pretrain.get("keep"):
                keep_checkpoint(matrix, job.cell, commit=commit_results)
        else:
            outcome["failed"].append(job.cell.id)
            tqdm.write(f"cell {job.cell.id} failed; see {folder / 'log.txt'}")
        bar.update(1)

    def block(cell: Cell, why: str) -> None:
        outcome["blocked"].append(cell.id)
        pending.remove(cell)
        tqdm.write(f"cell {cell.id} blocked: {why}")
        bar.update(1)

    last_shown, last_refresh = None, time.time()

    def terminate(signum, frame):  # SIGTERM (kill PID): leave like Ctrl-C, through the cleanup below
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()  # (handlers can only be set there)
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        while pending or running:
            for cell in launch_order(pending, ready):
                if len(running) >= parallel:
                    break
                dep = cell.depends_on
                if dep and not ready(dep):
                    waiting = any(c.id == dep for c in pending) or any(j.cell.id == dep for j in running)
                    if not waiting:
                        block(cell, f"its pretraining cell {dep} did not finish")
                    continue
                if dep and final_weights(matrix, by_id[dep]) is None:
                    block(cell, f"its pretraining cell {dep} is finished but its checkpoint "
                                f"{checkpoint_of(matrix, by_id[dep])} is gone "
                                f"(--rerun --only '^{dep}$' makes it again)")
                    continue
                if stop_by is not None:
                    need = cell_seconds(cell) if cell_seconds else None
                    if need is not None and time.time() + need > stop_by:
                        continue  # would not finish in time: deferred unless a shorter wait makes it fit
                pending.remove(cell)
                launch(cell)
            if stop_by is not None and pending and not running:  # nothing left that fits before stop_by
                outcome["deferred"] = [c.id for c in pending]
                tqdm.write(f"{len(pending)} cells deferred: they would not finish before --stop-by "
                           f"{datetime.fromtimestamp(stop_by).isoformat(timespec='minutes')}")
                pending.clear()
                break
            shown = ", ".join(j.cell.id for j in running)
            if shown != last_shown:  # (tqdm's own postfix string is not what was set: compare with ours)
                bar.set_postfix_str(shown)
                last_shown = shown
            elif time.time() - last_refresh > refresh_every:  # (refresh() does not move tqdm's last_print_t)
                bar.refresh()  # keep elapsed/remaining time moving while long cells run
                last_refresh = time.time()
            time.sleep(0.2)
            for job in list(running):
                code = _reap(job)
                if code is None and timeout is not None and time.perf_counter() - job.start > timeout:
                    os.killpg(job.proc.pid, signal.SIGKILL)
                    code = _reap(job, block=True)
                    tqdm.write(f"cell {job.cell.id} ran past --timeout {timeout:g} s and was killed")
                if code is not None:
                    running.remove(job)
                    finish(job, code == 0)
    finally:  # Ctrl-C, SIGTERM or an error here: leave no orphan training processes behind
        for job in running:
            os.killpg(job.proc.pid, signal.SIGKILL)
            _reap(job, block=True)
            job.log.close()
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcome
