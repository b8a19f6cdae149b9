#!/usr/bin/env bash
# The objective benchmark's studies in the order of issue 26 (most important first: PaiNN HOMO 1k and
# an 8,000-step fine-tuning cap on its replicate 0, the references' fine-tuning recipes on its checkpoints,
# replicates 3-4 of its question-2 rows, its noise study, other targets and label
# sizes, SchNet and ET, the force-field row), each resumable:
# a finished cell (rows in its committed results.csv) is never run again, so rerunning this script on
# any machine, any day, continues where the last run stopped. One thread, one cell at a time, so the
# other core stays free. After the main table, question 2's replicates, the noise study and the backbones
# table, `zoo-bench probe` adds the probes of their finished pretraining cells (probes.csv, committed).
# Start it in the background from
# the repository root:
#   nohup setsid benchmarks/run_queue.sh > runs/bench_queue.log 2>&1 < /dev/null &
# Stop it with `kill -- -<pid>` (the running cell resumes from its checkpoint next time). In a fresh
# checkout (no runs/), the shared pretraining cells' weights come from their committed pretrain.keep
# copies (benchmarks/results/objectives_v2/pretrained/); a finished pretraining cell with neither is
# run again first.
# PARALLEL=2 runs two cells at a time (one thread each; a fine-tuning cell waits for its pretraining
# cell) when no other job needs the second core:
#   PARALLEL=2 nohup setsid benchmarks/run_queue.sh > runs/bench_queue.log 2>&1 < /dev/null &
# STOP_BY=<ISO time> or +<minutes>m / +<hours>h (e.g. the end of a batch job's allocation: STOP_BY=+170m,
# fixed once when the queue starts) starts no cell that would not finish by then (zoo-bench run --stop-by)
# and ends the queue there, so that no cell is killed part-way; the next start continues.
set -u
PARALLEL="${PARALLEL:-1}"
STOP_BY="${STOP_BY:-}"
if [ -n "$STOP_BY" ]; then  # one absolute time for every stage (a relative one would restart at each)
  STOP_BY=$(python -c 'import sys
from datetime import datetime
from atomzoo.runner.__main__ import parse_stop_by
print(datetime.fromtimestamp(parse_stop_by(sys.argv[1])).astimezone().isoformat(timespec="seconds"))' "$STOP_BY") || exit 2
  echo "== stopping by $STOP_BY"
fi
cd "$(dirname "$0")/.."
status=0
for matrix in \
    benchmarks/matrices/objectives_v2.yaml \
    benchmarks/matrices/objectives_v2_cap.yaml \
    benchmarks/matrices/objectives_v2_recipes.yaml \
    benchmarks/matrices/objectives_v2_q2.yaml \
    benchmarks/matrices/objectives_v2_noise.yaml \
    benchmarks/matrices/objectives_v2_targets.yaml \
    benchmarks/matrices/objectives_v2_backbones.yaml \
    benchmarks/matrices/objectives_v2_forces.yaml; do
  echo "== $(date -u +%FT%TZ) $matrix"
  code=0
  zoo-bench run "$matrix" --threads 1 --parallel "$PARALLEL" --commit-results ${STOP_BY:+--stop-by "$STOP_BY"} || code=$?
  if [ "$code" = 3 ]; then  # cells deferred past STOP_BY: the queue ends here (its reports are committed)
    git add -- benchmarks/results/objectives_v2
    git commit -q -m "objectives_v2 reports at STOP_BY ($(basename "$matrix"))" -- benchmarks/results/objectives_v2 || true
    echo "== $(date -u +%FT%TZ) stopped: the next cells would not finish by STOP_BY=$STOP_BY"
    exit $status
  fi
  [ "$code" = 0 ] || status=$code
  case "$matrix" in
    *objectives_v2.yaml|*objectives_v2_q2.yaml|*objectives_v2_noise.yaml|*objectives_v2_backbones.yaml)
      # probes of its finished pretraining cells (resumable; the noise stage's: corrupted against clean)
      zoo-bench probe "$matrix" || status=$? ;;
  esac
  # every report of the shared output, the plots they show and the probes, as the stage left them (the
  # runner has committed results.csv and the kept weights cell by cell)
  git add -- benchmarks/results/objectives_v2
  git commit -q -m "objectives_v2 reports after $(basename "$matrix")" -- benchmarks/results/objectives_v2 || true
done
exit $status
