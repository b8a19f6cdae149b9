"""Data larger than memory: building a PCQM4Mv2-size store and its training statistics, time and peak RSS.

Takes the OGB-layout files that ``benchmarks/pcqm_processing.py --work DIR --molecules N --labelled``
generated in ``DIR`` (``pcqm4m-v2-train.sdf``, ``pcqm4m-v2/raw/data.csv.gz``, ``split_dict.pt``) and,
each in a fresh subprocess (so ``ru_maxrss`` is that step's own peak):

1. **build**: ``PCQM4Mv2DataModule(targets=[homolumogap]).prepare_data()`` -- the store is written
   in chunks (:class:`~atomzoo.datamodules.storage.StoreWriter`);
2. **statistics**: ``AtomsDataModule.training_statistics`` -- label mean/std and least-squares atom
   references of the training split in one streaming pass (:class:`~atomzoo.nn.statistics.StreamingTargetStatistics`),
   against the ``[n_train, 101]`` float64 element-count matrix the whole-split computation needed;
3. **neighbours**: ``AtomsDataModule.neighbour_statistics(5.0)`` -- edge counts of every structure at
   5 A computed in chunks of 200,000 atoms (cached beside the store) and the mean neighbours per atom.

Each reports wall seconds, process CPU seconds, RSS before the step and peak RSS.

Usage::

    python benchmarks/pcqm_processing.py --work /tmp/pcqm_full --molecules 3378606 --labelled
    OMP_NUM_THREADS=1 python benchmarks/streaming_statistics.py --work /tmp/pcqm_full
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

STEP = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from atomzoo.datamodules import PCQM4Mv2DataModule
from atomzoo.nn.statistics import MAX_Z, StatisticsRequest

def rss_mb():
    with open("/proc/self/statm") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

dm = PCQM4Mv2DataModule(root={root!r}, cache_dir={cache!r}, targets=["homolumogap"])
step = {step!r}
if step != "build":
    dm.setup()
before = rss_mb()
t0, c0 = time.perf_counter(), time.process_time()
out = {{}}
if step == "build":
    dm.prepare_data()
    dm.setup()
    out.update(molecules=len(dm.store), atoms=int(dm.store.meta["num_atoms"]),
               store_mb=sum(p.stat().st_size for p in dm.store_path().iterdir()) / 2**20)
elif step == "statistics":
    acc = dm.training_statistics(StatisticsRequest(targets=("homolumogap",)))
    stats = acc.result()
    refs = acc.least_squares_atomref()[0]
    out.update(num_train=stats.num_train, mean=float(stats.mean[0]), std=float(stats.std[0]),
               atomref_fitted={{int(z): round(float(refs[z]), 4) for z in torch.nonzero(refs).flatten()}},
               whole_split_matrix_mb=stats.num_train * (MAX_Z + 1) * 8 / 2**20)
else:
    out.update(dm.neighbour_statistics(5.0))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(dict(step=step, wall_s=wall, cpu_s=cpu, rss_before_mb=before, peak_rss_mb=peak, **out)))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the directory pcqm_processing.py generated the files in")
    parser.add_argument("--steps", default="build,statistics,neighbours")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args(argv)
    work = Path(args.work)
    if not (work / "pcqm4m-v2-train.sdf").exists():
        raise SystemExit(f"no {work / 'pcqm4m-v2-train.sdf'}: generate it with "
                         f"benchmarks/pcqm_processing.py --work {work}")
    cache = work / "cache-streaming"
    shutil.rmtree(cache, ignore_errors=True)
    results = []
    for step in args.steps.split(","):
        code = STEP.format(root=str(work), cache=str(cache), step=step)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not lines:
            raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
