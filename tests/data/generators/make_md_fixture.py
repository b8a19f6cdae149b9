"""Generate a small MD trajectory of ethanol in exactly the MD17 and rMD17 file formats.

Engine: GFN2-xTB through ``tblite``'s ASE calculator (``pip install tblite``), a real semi-empirical
electronic-structure method; dynamics: ASE Langevin at 500 K (MD17's temperature), 0.5 fs steps,
starting from ``ase.build.molecule('CH3CH2OH')`` after a short equilibration.

Writes, under ``--out``:

- ``md17_ethanol.npz``: R [M, 9, 3] (A), z [9], E [M, 1] (kcal/mol), F [M, 9, 3] (kcal/mol/A),
  name, theory, type, md5, r_unit, e_unit -- the sGDML / quantum-machine.org layout;
- ``rmd17/npz_data/rmd17_ethanol.npz``: nuclear_charges [9], coords, energies [M] (kcal/mol),
  forces (kcal/mol/A), old_indices, old_energies, old_forces -- the rMD17 (figshare) layout. Its frames
  are the MD17 frames in a seeded random order; ``old_indices`` point into ``md17_ethanol.npz`` and
  ``old_*`` repeat that file's values (here both files hold the same GFN2-xTB numbers);
- ``rmd17/splits/index_train_01.csv`` and ``index_test_01.csv``: one index per line, disjoint.

Usage (the committed fixture in tests/data/md17_fixture was made with exactly this):

    python tests/data/generators/make_md_fixture.py --out tests/data/md17_fixture --frames 500 --stride 10 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import molecule
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

KCALMOL = units.kcal / units.mol  # eV per kcal/mol


def run_md(frames: int, stride: int, seed: int, temperature: float, equilibrate: int):
    from tblite.ase import TBLite

    atoms = molecule("CH3CH2OH")
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=rng)
    dyn.run(equilibrate)
    R, E, F = [], [], []
    for _ in range(frames):
        dyn.run(stride)
        R.append(atoms.get_positions().copy())
        E.append(atoms.get_potential_energy())
        F.append(atoms.get_forces().copy())
    return atoms.numbers.copy(), np.array(R), np.array(E), np.array(F)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--stride", type=int, default=10, help="MD steps (0.5 fs) between saved frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--equilibrate", type=int, default=400, help="MD steps before the first frame")
    p.add_argument("--n-train", type=int, default=200, help="indices in index_train_01.csv")
    p.add_argument("--n-test", type=int, default=200, help="indices in index_test_01.csv")
    args = p.parse_args()

    t0 = time.time()
    z, R, E_ev, F_ev = run_md(args.frames, args.stride, args.seed, args.temperature, args.equilibrate)
    E = E_ev / KCALMOL  # kcal/mol
    F = F_ev / KCALMOL  # kcal/mol/A
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    md5 = hashlib.md5(R.tobytes() + E.tobytes() + F.tobytes()).hexdigest()
    np.savez(
        out / "md17_ethanol.npz",
        R=R,
        z=z.astype(np.uint8),
        E=E[:, None],
        F=F,
        name=np.array("ethanol"),
        theory=np.array("GFN2-xTB (tblite), ASE Langevin 500 K, 0.5 fs -- atomzoo test fixture"),
        type=np.array("d"),
        md5=np.array(md5),
        r_unit=np.array("Ang"),
        e_unit=np.array("kcal/mol"),
    )

    rng = np.random.default_rng(args.seed + 1)
    order = rng.permutation(args.frames)
    (out / "rmd17" / "npz_data").mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "rmd17" / "npz_data" / "rmd17_ethanol.npz",
        nuclear_charges=z.astype(np.int64),
        coords=R[order],
        energies=E[order],
        forces=F[order],
        old_indices=order.astype(np.int64),
        old_energies=E[order],
        old_forces=F[order],
    )
    split_dir = out / "rmd17" / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    perm = np.random.default_rng(args.seed + 2).permutation(args.frames)
    train, test = perm[: args.n_train], perm[args.n_train : args.n_train + args.n_test]
    np.savetxt(split_dir / "index_train_01.csv", train, fmt="%d")
    np.savetxt(split_dir / "index_test_01.csv", test, fmt="%d")
    fnorm = np.linalg.norm(F_ev, axis=-1)
    print(
        f"{args.frames} frames in {time.time() - t0:.1f} s; energy std {E_ev.std() * 1000:.1f} meV, "
        f"force component std {F_ev.std() * 1000:.1f} meV/A, mean |F| {fnorm.mean() * 1000:.1f} meV/A"
    )


if __name__ == "__main__":
    main()
