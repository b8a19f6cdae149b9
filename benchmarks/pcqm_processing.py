"""Processing-speed benchmark of the PCQM4Mv2 3D loader on a synthetic file in the real OGB layout.

Generates ``<work>/pcqm4m-v2-train.sdf`` (heavy atoms only, like OGB's file) with ``--molecules``
records, plus ``pcqm4m-v2/raw/data.csv.gz`` and ``pcqm4m-v2/split_dict.pt``: RDKit-embedded (ETKDG)
conformers of QM9 SMILES from the ``qm9pack`` CSV, replicated with random coordinate perturbations
(0.05 A) to reach the requested size (a file with that many records is reused). Then builds the
store in a fresh subprocess and reports molecules/s, how many records the numpy parser read (the rest
went through RDKit), peak RSS (``ru_maxrss`` of that process, and its RSS before processing), the time
to open the built store and to read 10,000 molecules through the Dataset, an extrapolation to the
3,378,606 molecules of the real training split, and the throughput of the DataModule's train
DataLoader alone (``--loader-batch`` molecules per collated batch, ``--loader-workers`` worker
counts, ``--loader-batches`` batches timed after the first): molecules/s, batches/s, ms per batch.
``--profile`` prints the build's cProfile (top functions by own time) to stderr.

    python benchmarks/pcqm_processing.py --work /tmp/pcqm_bench --molecules 200000
    python benchmarks/pcqm_processing.py --work /tmp/pcqm_bench --molecules 200000 --add-hydrogens --labelled
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

import numpy as np

REAL_TRAIN = 3_378_606


def generate(work: Path, n_total: int, n_unique: int, seed: int) -> None:
    import pandas as pd
    import torch
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    csv = Path(distribution("qm9pack").locate_file("qm9pack/data/qm9_part1.csv"))
    smiles = pd.read_csv(csv, usecols=["SMILES"], nrows=n_unique * 2)["SMILES"].tolist()
    templates = []  # (smiles, header lines, atom lines split, rest lines, coords)
    for smi in smiles:
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            continue
        mol = Chem.AddHs(mol)
        if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
            continue
        mol = Chem.RemoveHs(mol)
        lines = Chem.MolToMolBlock(mol).splitlines()
        n = mol.GetNumAtoms()
        templates.append((smi, lines[:4], [line[30:] for line in lines[4 : 4 + n]], lines[4 + n :], mol.GetConformer().GetPositions()))
        if len(templates) == n_unique:
            break
    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    choice = rng.integers(0, len(templates), n_total)
    with open(work / "pcqm4m-v2-train.sdf", "w") as f:
        for k, t in enumerate(choice):
            smi, head, tails, rest, pos = templates[t]
            pos = pos + rng.normal(0, 0.05, pos.shape)
            atoms = "\n".join(f"{x:10.4f}{y:10.4f}{z:10.4f}{tail}" for (x, y, z), tail in zip(pos, tails))
            f.write("\n".join([f"{k}", *head[1:], atoms, *rest]) + "\n$$$$\n")
    (work / "pcqm4m-v2" / "raw").mkdir(parents=True, exist_ok=True)
    with gzip.open(work / "pcqm4m-v2" / "raw" / "data.csv.gz", "wt") as f:
        f.write("idx,smiles,homolumogap\n")
        gaps = rng.uniform(2, 12, n_total)
        f.writelines(f"{i},{templates[t][0]},{g:.6f}\n" for i, (t, g) in enumerate(zip(choice, gaps)))
    torch.save({"train": torch.arange(n_total), "valid": torch.zeros(0, dtype=torch.long),
                "test-dev": torch.zeros(0, dtype=torch.long), "test-challenge": torch.zeros(0, dtype=torch.long)},
               work / "pcqm4m-v2" / "split_dict.pt")  # fmt: skip


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
from atomzoo.datamodules import PCQM4Mv2DataModule
args = dict(root={root!r}, cache_dir={cache!r}, add_hydrogens={h}, targets={targets})
dm = PCQM4Mv2DataModule(**args)
before = rss_mb()
if {profile}:
    import cProfile, pstats
    profiler = cProfile.Profile()
    profiler.enable()
t0 = time.perf_counter(); dm.prepare_data(); build = time.perf_counter() - t0
if {profile}:
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter(); dm.setup(); open_s = time.perf_counter() - t0
ds = dm.dataset("train")
t0 = time.perf_counter()
for i in range(10000): ds[i]
read = time.perf_counter() - t0
loader = {{}}
for workers in {workers}:
    ldm = PCQM4Mv2DataModule(**args, batch_size={batch}, num_workers=workers)
    ldm.setup()
    batches = iter(ldm.train_dataloader())
    next(batches)  # worker start-up and the first batch are not timed
    t0 = time.perf_counter(); molecules = 0
    for _, batch in zip(range({n_batches}), batches):
        molecules += batch.num_graphs
    dt = time.perf_counter() - t0
    loader[workers] = dict(molecules_per_s=molecules / dt, batches_per_s={n_batches} / dt, ms_per_batch=1000 * dt / {n_batches})
print(json.dumps(dict(build_s=build, rss_before_mb=before, peak_rss_mb=peak, open_s=open_s,
      read_10k_s=read, molecules=len(dm.store), atoms=int(dm.store.meta["num_atoms"]),
      numpy_parsed=dm.num_parsed_by_numpy,
      store_mb=sum(p.stat().st_size for p in dm.store_path().iterdir()) / 2**20, loader=loader)))
"""


def count_records(sdf: Path) -> int:
    """Lines starting with ``$$$$``."""
    with open(sdf, "rb") as f:
        return sum(1 for line in f if line.startswith(b"$$$$"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/pcqm_bench")
    p.add_argument("--molecules", type=int, default=200_000)
    p.add_argument("--unique", type=int, default=1000, help="distinct QM9 SMILES embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--add-hydrogens", action="store_true")
    p.add_argument("--labelled", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the build's cProfile to stderr")
    p.add_argument("--loader-batch", type=int, default=128)
    p.add_argument("--loader-workers", type=int, nargs="*", default=[0, 2], help="DataLoader num_workers to time")
    p.add_argument("--loader-batches", type=int, default=300)
    args = p.parse_args()
    work = Path(args.work)
    sdf = work / "pcqm4m-v2-train.sdf"
    if not sdf.exists() or count_records(sdf) != args.molecules:
        t0 = time.perf_counter()
        generate(work, args.molecules, args.unique, args.seed)
        print(f"generated {args.molecules} molecules in {time.perf_counter() - t0:.1f} s ({sdf.stat().st_size / 2**20:.0f} MiB SDF)")
    cache = work / f"cache-{os.getpid()}"
    code = CHILD.format(repo=str(Path(__file__).resolve().parents[1]), root=str(work), cache=str(cache),
                        h=args.add_hydrogens, targets=["homolumogap"] if args.labelled else None,
                        profile=args.profile, workers=args.loader_workers, batch=args.loader_batch,
                        n_batches=args.loader_batches)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    if args.profile:
        print(out.stderr, file=sys.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rate = r["molecules"] / r["build_s"]
    r["molecules_per_s"] = rate
    r["extrapolated_3.38M_min"] = REAL_TRAIN / rate / 60
    r["extrapolated_3.38M_store_gb"] = r["store_mb"] / r["molecules"] * REAL_TRAIN / 1024
    r["add_hydrogens"] = args.add_hydrogens
    print(json.dumps(r, indent=1))
    import shutil

    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
