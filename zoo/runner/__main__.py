"""``zoo-bench run MATRIX.yaml`` / ``zoo-bench report MATRIX.yaml|OUTPUT_DIR`` / ``zoo-bench probe RUN_DIR``
(also ``python -m atomzoo.runner ...``).

Exit status of ``zoo-bench run``: 0 every selected cell finished; 1 a cell failed or was blocked by a
failed pretraining; 2 a user error (one line, :func:`main`); 3 cells deferred past ``--stop-by`` (run the
same command again to continue).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

from .execute import run_cells
from .matrix import Cell, Matrix, expand, load_matrix, select
from .report import estimated_cell_cpu_s, estimated_cpu_h, write_report
from .results import load

#: ``zoo-bench run --quick``: appended to every cell's arguments (last, so they override the matrix's
#: step/epoch caps and validation interval): 2 epochs of 10 batches, validation and test on 2 batches
QUICK_ARGS = ("--trainer.max_steps", "-1", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "10",
              "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
              "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1")


def quick_preset(matrix: Matrix, cells: list[Cell]) -> tuple[Matrix, list[Cell]]:
    """The same matrix at a budget of minutes: the cells of its first seed and of each task's smallest label
    budget only (every backbone, objective, task and mode), each with :data:`QUICK_ARGS`, written to
    ``<output>-quick`` (and ``<cells>-quick``) so that they never mix with the real results; its report
    shows these cells only (``report_with`` is dropped: the other matrices' cells are not in that
    folder). A smoke test of the whole matrix, not a measurement: 20 optimiser steps per cell."""
    first = min(c.seed for c in cells)
    smallest = {}
    for c in cells:
        if c.phase == "finetune":
            smallest[c.target] = min(smallest.get(c.target, c.label_budget), c.label_budget)
    kept = [dataclasses.replace(c, args=[*c.args, *QUICK_ARGS]) for c in cells
            if c.seed == first and (c.phase != "finetune" or c.label_budget == smallest[c.target])]
    renamed = {"output": matrix.output.with_name(matrix.output.name + "-quick"), "report_with": None}
    if matrix.cells is not None:
        renamed["cells"] = matrix.cells.with_name(matrix.cells.name + "-quick")
    return dataclasses.replace(matrix, **renamed), kept


#: errors a user's matrix file or options cause: reported in one line (:func:`main`)
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError, re.error)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``zoo-bench``: returns the exit status. An error the user's matrix file or options cause
    (a missing file, a bad key or value, an ``--only`` that is no regular expression or matches no cell)
    ends the output as one line ``zoo-bench: error: <cause>`` with status 2; with ``ATOMZOO_DEBUG=1`` the
    traceback instead. Other exceptions (bugs) propagate."""
    try:
        return _main(argv)
    except USER_ERRORS as err:
        if os.environ.get("ATOMZOO_DEBUG", "") not in ("", "0"):
            raise
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print("(traceback: run again with ATOMZOO_DEBUG=1)", file=sys.stderr)
        print(f"zoo-bench: error: {message}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-bench",
                                     description="Experiment matrices of the zoo: run, resume, report.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) every cell of a matrix, then write the report")
    run.add_argument("matrix", type=Path)
    run.add_argument("--only", help="regular expression: run only the cells whose id matches")
    run.add_argument("--dry-run", action="store_true",
                     help="print the command of every cell still to run, how many are finished and the CPU hours "
                          "the rest would take (from the finished cells most alike); run nothing")
    run.add_argument("--timeout", type=float, default=None, help="seconds after which a cell counts as failed")
    run.add_argument("--parallel", type=int, default=1,
                     help="cells run at once, each with cpu_count/parallel threads; a fine-tuning cell waits for its pretraining")
    run.add_argument("--threads", type=int, default=None, help="OpenMP/MKL threads of every cell (overrides the share)")
    run.add_argument("--rerun", action="store_true",
                     help="run the selected cells again from scratch even if finished (their rows are replaced)")
    run.add_argument("--commit-results", action="store_true",
                     help="after each finished cell, git-commit the matrix's results.csv (that file only; "
                          "message '<matrix>: cell <id>'); without git it warns and goes on")
    run.add_argument("--stop-by", metavar="TIME",
                     help="start no cell that would not finish by TIME (ISO 8601, e.g. 2026-12-08T06:00, local time "
                          "unless it names a zone; or +90m / +4h from now), judged from the finished cells most "
                          "alike (x 1.25 + 60 s); the rest are deferred to the next run (exit status 3)")
    run.add_argument("--list", action="store_true", help="list cell ids and exit")
    run.add_argument("--quick", action="store_true",
                     help="the matrix's first seed at 20 steps per cell (2 epochs x 10 batches), into <output>-quick: "
                          "minutes, a smoke test of the whole matrix (atomzoo.runner.__main__.quick_preset)")
    report = sub.add_parser("report", help="regenerate the report (results.md, or the matrix's report_name) and "
                                           "its plots from results.csv")
    report.add_argument("source", type=Path,
                        help="the matrix file (its report sections, comparisons and task metrics apply) or the "
                             "output folder holding results.csv (default sections)")
    probe = sub.add_parser("probe", help="probes of frozen pretrained networks (QM9): a run folder (closed-form "
                                         "linear probe) or a matrix file (every finished pretraining cell, clean or corrupted, + "
                                         "random networks: ridge, MLP probe, embedding diagnostics -> probes.csv)")
    probe.add_argument("run", type=Path, help="run folder of a pretraining zoo fit (config.yaml, checkpoints/), "
                                              "or a matrix file")
    probe.add_argument("--random-nets", type=int, default=3, help="matrix: random networks per backbone")
    probe.add_argument("--mlp-steps", type=int, default=3000, help="matrix: training steps of the MLP probe")
    probe.add_argument("--target", default="homo")
    probe.add_argument("--train-size", type=int, default=10000)
    probe.add_argument("--ridge", type=float, default=1e-4, help="ridge strength, relative to the number of molecules")
    probe.add_argument("--random-init", action="store_true", help="probe the same backbone with random weights")
    probe.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "report":
        source = load_matrix(args.source) if args.source.is_file() else args.source
        print(write_report(source))
        return 0
    if args.command == "probe" and args.run.is_file():
        from .probe import probe_matrix

        matrix = load_matrix(args.run)
        print(probe_matrix(matrix, args.target, args.train_size, args.random_nets, args.mlp_steps))
        print(write_report(matrix))
        return 0
    if args.command == "probe":
        from .probe import closed_form_probe

        result = closed_form_probe(args.run, args.target, args.train_size, args.ridge, args.random_init, args.seed)
        print(f"{args.run} ({'random init' if args.random_init else 'pretrained'}): closed-form linear probe, "
              f"{args.target}, n={args.train_size}: test MAE {result['mae']:.1f} {result['unit']} "
              f"on {result['molecules']} molecules")
        return 0
    matrix = load_matrix(args.matrix)
    cells = expand(matrix)
    if args.quick:
        matrix, cells = quick_preset(matrix, cells)
    chosen = select(cells, args.only)
    if not chosen:
        raise ValueError(f"--only {args.only!r} matches none of the {len(cells)} cells of {args.matrix} "
                         f"(zoo-bench run {args.matrix} --list shows their ids)")
    if args.list:
        print("\n".join(c.id for c in chosen))
        return 0
    stop_by = parse_stop_by(args.stop_by) if args.stop_by else None
    outcome = run_cells(matrix, chosen, cells, dry_run=args.dry_run, timeout=args.timeout, parallel=args.parallel,
                        threads=args.threads, rerun=args.rerun, commit_results=args.commit_results, stop_by=stop_by,
                        cell_seconds=expected_wall_s(matrix, cells) if stop_by is not None else None)
    if args.dry_run:
        planned = {c.id: c for c in cells}
        if outcome["planned"]:
            print(estimate_line(matrix, [planned[i] for i in outcome["planned"]], args.parallel))
        return 0
    print(f"done {len(outcome['done'])}, skipped {len(outcome['skipped'])}, failed {len(outcome['failed'])}, "
          f"blocked by a failed pretraining {len(outcome['blocked'])}"
          + (f", deferred past --stop-by {len(outcome['deferred'])} (run the same command again to continue)"
             if outcome["deferred"] else ""))
    if matrix.results_csv.exists():
        print(write_report(matrix))
    return 1 if outcome["failed"] or outcome["blocked"] else 3 if outcome["deferred"] else 0


def parse_stop_by(text: str, now: datetime | None = None) -> float:
    """``--stop-by``: an ISO 8601 time (local time unless it names a zone) or ``+N`` minutes, ``+Nm``,
    ``+Nh`` from ``now``, as seconds since the epoch.

    Raises:
        ValueError: neither form, or a time already past.
    """
    now = now or datetime.now().astimezone()
    relative = re.fullmatch(r"\+(\d+(?:\.\d+)?)([mh]?)", text.strip())
    if relative:
        when = now + timedelta(minutes=float(relative[1]) * (60 if relative[2] == "h" else 1))
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"--stop-by {text!r}: give an ISO 8601 time (2026-12-08T06:00) or a time from now "
                             "(+90m, +4h)") from None
        when = when if when.tzinfo else when.astimezone()
    if when <= now:
        raise ValueError(f"--stop-by {text!r} is already past (now {now.isoformat(timespec='minutes')})")
    return when.timestamp()


#: ``--stop-by``: a cell's expected wall time is its estimated CPU time times this, plus STOP_BY_SLACK_S
STOP_BY_MARGIN = 1.25
STOP_BY_SLACK_S = 60.0


def expected_wall_s(matrix: Matrix, cells: list[Cell]):
    """``--stop-by``'s estimate of each cell's wall time (one thread per cell): the CPU time of the finished
    cells most alike (:func:`atomzoo.runner.report.estimated_cell_cpu_s`) x :data:`STOP_BY_MARGIN` +
    :data:`STOP_BY_SLACK_S` (start-up, data loading, a busier machine). ``cells``: all of the matrix's (a
    remade lost pretraining is estimated too); a cell with none alike counts as the longest estimate of
    its phase among them, and as unknown (``None``: it is started) where its phase has none."""
    frame = load(matrix.results_csv) if matrix.results_csv.is_file() else None
    estimates = estimated_cell_cpu_s(frame, cells) if frame is not None else {}
    longest: dict[str, float] = {}
    for cell in cells:
        if estimates.get(cell.id):
            longest[cell.phase] = max(longest.get(cell.phase, 0.0), estimates[cell.id][0])

    def seconds(cell: Cell) -> float | None:
        found = estimates.get(cell.id)
        cpu = found[0] if found else longest.get(cell.phase)
        return None if cpu is None else cpu * STOP_BY_MARGIN + STOP_BY_SLACK_S

    return seconds


def estimate_line(matrix: Matrix, todo: list[Cell], parallel: int) -> str:
    """The dry run's cost line, ``# cost: ~X CPU h for ...``: the CPU hours of ``todo`` estimated from the finished cells most alike
    (:func:`atomzoo.runner.report.estimated_cpu_h`), and the wall hours at ``parallel`` cells at a time."""
    frame = load(matrix.results_csv) if matrix.results_csv.is_file() else None
    hours, unknown, rough = estimated_cpu_h(frame, todo) if frame is not None else (0.0, len(todo), 0)
    if unknown == len(todo):
        return f"# cost: unknown (no finished cell of the same phase and backbone or objective in {matrix.results_csv})"
    return (f"# cost: ~{hours:.1f} CPU h for {len(todo) - unknown} of the {len(todo)} cells to run, at the measured "
            f"CPU time of the finished cells most alike (one thread each), ~{hours / parallel:.1f} h wall at "
            f"--parallel {parallel}" + (f"; {rough} of them only from another objective, task or backbone (rough)" if rough else "")
            + (f"; {unknown} with no finished cell alike not counted" if unknown else ""))


if __name__ == "__main__":
    sys.exit(main())
