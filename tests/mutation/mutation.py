"""Hand-written mutation testing: reintroduce known kinds of bugs one at a time, run the tests that
guard each, and record whether a test failed (the mutant is "killed") or all passed ("survived").

    python tests/mutation/mutation.py [--only REGEX] [--out docs/testing/mutants.csv]   # in a worktree (below)

Each mutant in ``tests/mutation/mutants.yaml`` names a file, an exact snippet of it, the replacement
(the bug), the guarantee it breaks and the pytest selection that should catch it. The file is
restored after every run (and at start-up from ``.mutation-backup/`` if an earlier run was
killed), so run it on a clean tree -- and, because every mutant is written into the sources, in a
``git worktree`` with its own editable install, never in a checkout other people or processes use (it
refuses the main checkout unless ``--in-place``). A snippet that no longer occurs exactly once is reported as
``stale`` (update the YAML when the code moves). Results are written atomically to the CSV, one row
per mutant, and a summary (mutation score) is printed. Why hand-written rather than ``mutmut``:
the mutants are the bugs the project's guarantees are about (the docs list them), and every one
runs only the tests that claim to guard it, which keeps a full run to minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BACKUP = REPO / ".mutation-backup"


def is_main_checkout() -> bool:
    """The repository's main working tree (not a ``git worktree add`` one)."""
    def ask(*args: str) -> Path:
        out = subprocess.run(["git", "rev-parse", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return (REPO / out).resolve()

    return ask("--git-dir") == ask("--git-common-dir")


def restore_leftovers() -> None:
    """Put back any file a killed earlier run left mutated."""
    if not BACKUP.exists():
        return
    for saved in BACKUP.rglob("*"):
        if saved.is_file():
            target = REPO / saved.relative_to(BACKUP)
            shutil.copy2(saved, target)
            print(f"restored {target.relative_to(REPO)} from an interrupted run")
    shutil.rmtree(BACKUP)


def run_mutant(mutant: dict, timeout: int) -> tuple[str, float, str]:
    path = REPO / mutant["file"]
    source = path.read_text()
    if source.count(mutant["find"]) != 1:
        return "stale", 0.0, f"snippet occurs {source.count(mutant['find'])} times"
    saved = BACKUP / mutant["file"]
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, saved)
    try:
        path.write_text(source.replace(mutant["find"], mutant["replace"]))
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *shlex.split(mutant["tests"])]
        try:
            result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            # pytest: 0 all passed, 1 some test failed; anything else (usage error, nothing collected,
            # interrupted) says nothing about the mutant
            status = {0: "survived", 1: "killed"}.get(result.returncode, f"error (pytest exit {result.returncode})")
            tail = (result.stdout.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            status, tail = "timeout", f"over {timeout} s"
        return status, time.perf_counter() - start, tail
    finally:
        shutil.copy2(saved, path)
        shutil.rmtree(BACKUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", default=str(REPO / "tests" / "mutation" / "mutants.yaml"))
    parser.add_argument("--only", default=None, help="regex on the mutant id")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", default=str(REPO / "docs" / "testing" / "mutants.csv"))
    parser.add_argument("--in-place", action="store_true",
                        help="run in the main checkout although other processes using it would see the mutants")
    args = parser.parse_args()
    if not args.in_place and is_main_checkout():
        sys.exit("tests/mutation/mutation.py mutates files in place, which anyone else using this checkout would run: "
                 "run it in a worktree of its own (git worktree add ../atomzoo-mut HEAD, a virtual environment with "
                 "pip install -e ../atomzoo-mut[all]; docs/testing.md) or pass --in-place")
    restore_leftovers()
    if subprocess.run(["git", "diff", "--quiet"], cwd=REPO).returncode != 0:
        sys.exit("tests/mutation/mutation.py mutates files in place: commit or stash your changes first")
    mutants = yaml.safe_load(Path(args.mutants).read_text())
    if args.only:
        mutants = [m for m in mutants if re.search(args.only, m["id"])]
    out = Path(args.out)
    rows = []
    if out.exists():  # resumable: keep finished rows unless re-selected
        rows = [r for r in csv.DictReader(out.open()) if r["id"] not in {m["id"] for m in mutants}]
    for mutant in mutants:
        status, seconds, tail = run_mutant(mutant, args.timeout)
        rows.append({"id": mutant["id"], "file": mutant["file"], "guarantee": mutant["guarantee"],
                     "tests": mutant["tests"], "status": status, "seconds": f"{seconds:.0f}", "last_line": tail})
        print(f"{status:>9}  {seconds:6.0f} s  {mutant['id']}: {mutant['guarantee']}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    judged = [r for r in rows if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in judged)
    print(f"mutation score: {killed}/{len(judged)} killed"
          + (f"; not judged: {len(rows) - len(judged)} (stale or timeout)" if len(rows) != len(judged) else ""))


if __name__ == "__main__":
    main()
