"""``python -m atomzoo.bench run MATRIX.yaml`` / ``python -m atomzoo.bench report OUTPUT_DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .matrix import expand, load_matrix, select
from .report import write_report
from .runner import run_cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atomzoo.bench", description="Benchmark matrices of the zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) every cell of a matrix, then write the report")
    run.add_argument("matrix", type=Path)
    run.add_argument("--only", help="regular expression: run only the cells whose id matches")
    run.add_argument("--dry-run", action="store_true", help="print the command of every cell still to run")
    run.add_argument("--timeout", type=float, default=None, help="seconds after which a cell counts as failed")
    run.add_argument("--parallel", type=int, default=1,
                     help="cells run at once, each with cpu_count/parallel threads; a fine-tuning cell waits for its pretraining")
    run.add_argument("--list", action="store_true", help="list cell ids and exit")
    report = sub.add_parser("report", help="regenerate results.md and the plots from results.csv")
    report.add_argument("output", type=Path)
    args = parser.parse_args(argv)

    if args.command == "report":
        print(write_report(args.output))
        return 0
    matrix = load_matrix(args.matrix)
    cells = expand(matrix)
    chosen = select(cells, args.only)
    if args.list:
        print("\n".join(c.id for c in chosen))
        return 0
    outcome = run_cells(matrix, chosen, cells, dry_run=args.dry_run, timeout=args.timeout,
                         parallel=args.parallel)
    if args.dry_run:
        return 0
    print(f"done {len(outcome['done'])}, skipped {len(outcome['skipped'])}, failed {len(outcome['failed'])}, "
          f"blocked by a failed pretraining {len(outcome['blocked'])}")
    if matrix.results_csv.exists():
        print(write_report(matrix.output, matrix.name))
    return 1 if outcome["failed"] or outcome["blocked"] else 0


if __name__ == "__main__":
    sys.exit(main())
