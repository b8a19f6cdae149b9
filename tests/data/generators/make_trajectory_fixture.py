"""Real molecular-dynamics trajectories of QM9 molecules: GFN2-xTB forces, ASE Langevin thermostat.

Engine: GFN2-xTB through ``tblite``'s ASE calculator (``pip install tblite``, the ``[xtb]`` extra);
dynamics: ASE ``Langevin`` (friction 0.01 / fs, 0.5 fs steps; the centre of mass fixed with
``FixCom``) at one temperature per trajectory, from the QM9 (B3LYP) geometry after ``--equilibrate``
steps, with Maxwell-Boltzmann initial velocities. The molecules come from the qm9pack CSVs
(:func:`atomzoo.datamodules.qm9.read_qm9pack`), chosen by their 1-based gdb index.

Output (``--out``):

* ``*.extxyz`` (one file, every trajectory): each frame's comment line holds ``trajectory`` (the id
  ``gdb<index>_<T>K``), ``time`` (fs since the first saved frame), ``temperature_K`` (the thermostat),
  and the GFN2-xTB ``energy`` (eV) with a ``forces`` column (eV/A), as ASE's extxyz writer writes them
  -- what :class:`atomzoo.datamodules.TrajectoryDataModule` reads.
* a folder (``--traj``): one ASE ``.traj`` per trajectory, written by the Langevin dynamics itself
  (``trajectory=..., loginterval=--interval``), whose header records the time step, the interval and
  the temperature.

The committed fixture ``tests/data/trajectories/xtb_qm9_md.extxyz`` was made with exactly this
(4 molecules, 100 frames 5 fs apart each; its timings are in ``tests/data/trajectories/README.md``):

    python tests/data/generators/make_trajectory_fixture.py --out tests/data/trajectories/xtb_qm9_md.extxyz \\
        --gdb 11 51 104 4211 --temperatures 300 400 500 600 --frames 100 --interval 10 --seed 0

Prints the cost: seconds per force call (GFN2-xTB energy + forces) and per trajectory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE: the same distribution under its former name
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

STEP_FS = 0.5
FRICTION = 0.01  # 1/fs


class CountingCalculator:
    """Wrap a calculator's ``calculate`` to count and time the electronic-structure calls."""

    def __init__(self, calc) -> None:
        self.calc, self.calls, self.seconds = calc, 0, 0.0
        inner = calc.calculate

        def calculate(*args, **kwargs):
            t0 = time.perf_counter()
            inner(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            self.calls += 1

        calc.calculate = calculate


def qm9_molecules(gdb_indices: list[int]) -> list[tuple[int, Atoms]]:
    """``(gdb index, Atoms)`` of QM9 molecules from the qm9pack CSVs."""
    from atomzoo.datamodules.qm9 import read_qm9pack

    data = read_qm9pack()
    offsets = np.concatenate([[0], np.cumsum(data["counts"])])
    row = {int(g): i for i, g in enumerate(data["gdb_index"])}
    out = []
    for g in gdb_indices:
        if g not in row:
            raise SystemExit(f"gdb index {g} is not in qm9pack (uncharacterised or out of range)")
        i = row[g]
        a, b = offsets[i], offsets[i + 1]
        out.append((g, Atoms(numbers=data["z"][a:b].astype(int), positions=data["pos"][a:b].astype(float))))
    return out


def run_trajectory(atoms: Atoms, temperature: float, frames: int, interval: int, equilibrate: int, seed: int,
                   traj_path: Path | None) -> tuple[list[Atoms], CountingCalculator]:  # fmt: skip
    """Saved frames (every ``interval`` steps after ``equilibrate`` steps) with energy and forces."""
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.set_constraint(FixCom())
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    counter = CountingCalculator(atoms.calc)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    options = {"temperature_K": temperature, "friction": FRICTION / units.fs, "fixcm": False, "rng": rng}
    Langevin(atoms, STEP_FS * units.fs, **options).run(equilibrate)
    saved = []

    def save() -> None:
        frame = Atoms(numbers=atoms.numbers, positions=atoms.get_positions())
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        saved.append(frame)

    production = Langevin(atoms, STEP_FS * units.fs, trajectory=None if traj_path is None else str(traj_path),
                          loginterval=interval, **options)  # fmt: skip
    production.attach(save, interval=interval)
    production.run(interval * (frames - 1))
    return saved, counter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the .extxyz file to write")
    p.add_argument("--traj", default=None, help="also write one ASE .traj per trajectory into this folder")
    p.add_argument("--gdb", type=int, nargs="+", default=[11, 51, 104, 4211], help="QM9 gdb indices (1-based)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 400.0, 500.0, 600.0],
                   help="K, one per molecule (cycled)")
    p.add_argument("--frames", type=int, default=100, help="saved frames per trajectory")
    p.add_argument("--interval", type=int, default=10, help=f"MD steps ({STEP_FS} fs) between saved frames")
    p.add_argument("--equilibrate", type=int, default=400, help="MD steps before the first saved frame")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.traj:
        Path(args.traj).mkdir(parents=True, exist_ok=True)
    images, calls, call_seconds = [], 0, 0.0
    t_all = time.perf_counter()
    for n, (gdb, atoms) in enumerate(qm9_molecules(args.gdb)):
        temperature = args.temperatures[n % len(args.temperatures)]
        tid = f"gdb{gdb}_{temperature:g}K"
        t0 = time.perf_counter()
        traj_path = Path(args.traj) / f"{tid}.traj" if args.traj else None
        frames, counter = run_trajectory(atoms, temperature, args.frames, args.interval, args.equilibrate,
                                         args.seed + n, traj_path)  # fmt: skip
        for k, frame in enumerate(frames):
            frame.info.update({"trajectory": tid, "time": k * args.interval * STEP_FS, "temperature_K": temperature})
        images += frames
        calls, call_seconds = calls + counter.calls, call_seconds + counter.seconds
        e = np.array([f.get_potential_energy() for f in frames])
        f_std = np.std(np.concatenate([f.get_forces().ravel() for f in frames]))
        print(f"{tid}: {len(atoms)} atoms, {len(frames)} frames, {counter.calls} force calls in "
              f"{time.perf_counter() - t0:.1f} s ({1000 * counter.seconds / counter.calls:.1f} ms per call); "
              f"energy std {1000 * e.std():.0f} meV, force component std {1000 * f_std:.0f} meV/A", flush=True)
    write(out, images, format="extxyz")
    print(f"{len(images)} frames in {time.perf_counter() - t_all:.1f} s: {calls} force calls, "
          f"{1000 * call_seconds / calls:.1f} ms per call on average; {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
