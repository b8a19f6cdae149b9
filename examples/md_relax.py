"""Relax a distorted molecule and run NVE molecular dynamics with a trained atomzoo force model (ASE).

    # ~1 min with one thread (docs/results.md)
    zoo fit -c configs/experiments/rmd17_fixture_forces.yaml --trainer.logger.init_args.version ethanol
    python examples/md_relax.py --model runs/rmd17_fixture_forces/ethanol/checkpoints/last.ckpt

(``--model`` also takes a full export, ``python -m atomzoo.export CKPT ethanol.safetensors``.)

1. Reference geometry: the lowest-energy frame of the rMD17 ethanol fixture relaxed with GFN2-xTB,
   the method that labelled the training data (``tblite``; ``pip install atomzoo[xtb]``). Without
   ``tblite`` (or with ``--reference model``) the model's own relaxation of that frame is used and the
   RMSD then only measures how reproducibly BFGS finds the model's minimum -- the report says which.
2. Relaxation: the reference displaced by Gaussian noise (``--distort`` A per coordinate, seeded),
   relaxed with ASE's BFGS on :class:`atomzoo.calculator.AtomzooCalculator` to ``fmax`` (eV/A).
   Reported: steps, final fmax, RMSD to the reference after optimal superposition
   (``ase.build.minimize_rotation_and_translation``, Kabsch), in Angstrom.
3. NVE: velocities from Maxwell-Boltzmann at ``--temperature`` K (seeded; zero total momentum and
   angular momentum), ASE's ``VelocityVerlet`` with ``--dt-fs`` (0.5 fs) for ``--time-ps`` (1 ps).
   Reported: energy drift per atom per ps (slope of a least-squares line through the total energy,
   eV/atom/ps), the largest deviation of the total energy from its start per atom (eV/atom), and the
   mean temperature.

Prints a JSON report (``--json FILE`` writes it too). The calculator runs in float64 by default
(``--dtype``): float32 rounding of the energy adds noise to the conservation check.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import minimize_rotation_and_translation
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from atomzoo.calculator import AtomzooCalculator

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "md17_fixture" / "rmd17" / "npz_data" / "rmd17_ethanol.npz"


def fixture_minimum_frame(path: Path = FIXTURE) -> Atoms:
    """The lowest-energy frame of an rMD17-format file as ``ase.Atoms`` (positions in Angstrom)."""
    data = np.load(path)
    k = int(np.argmin(data["energies"]))
    return Atoms(numbers=data["nuclear_charges"], positions=data["coords"][k])


def relax(atoms: Atoms, calc, fmax: float, steps: int) -> tuple[Atoms, int, float]:
    """BFGS to ``fmax`` eV/A; returns (relaxed copy, steps taken, final max force norm in eV/A)."""
    atoms = atoms.copy()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    final = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    return atoms, int(opt.nsteps), final


def rmsd(atoms: Atoms, reference: Atoms) -> float:
    """RMSD in Angstrom after the optimal rotation and translation of ``atoms`` onto ``reference``."""
    moved = atoms.copy()
    minimize_rotation_and_translation(reference, moved)
    return float(np.sqrt(((moved.positions - reference.positions) ** 2).sum(axis=1).mean()))


def reference_geometry(start: Atoms, kind: str, calc, fmax: float) -> tuple[Atoms, str]:
    """``(reference, description)``: GFN2-xTB minimum (``"xtb"``), the model's minimum (``"model"``), or
    ``"auto"``: xtb if ``tblite`` is installed, else model."""
    if kind in ("xtb", "auto"):
        try:
            from tblite.ase import TBLite
        except ImportError:
            if kind == "xtb":
                raise SystemExit("--reference xtb needs tblite: pip install 'atomzoo[xtb]'") from None
        else:
            ref, _, _ = relax(start, TBLite(method="GFN2-xTB", verbosity=0), fmax, 500)
            return ref, "GFN2-xTB (tblite) minimum of the fixture's lowest-energy frame"
    ref, _, _ = relax(start, calc, fmax, 500)
    return ref, "the model's own minimum of the fixture's lowest-energy frame (tblite not used)"


def nve(atoms: Atoms, calc, temperature: float, dt_fs: float, time_ps: float, seed: int) -> dict:
    """Velocity-Verlet NVE; total energy every step; drift = slope of a line fit, eV/atom/ps."""
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # ASE >= 3.26 suggests thermalize_momenta; this call works in 3.23 too
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    n_steps = int(round(time_ps * 1000 / dt_fs))
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs, logfile=None)
    times, totals, temps = [], [], []

    def record() -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        times.append(dyn.nsteps * dt_fs / 1000.0)
        totals.append(epot + ekin)
        temps.append(atoms.get_temperature())

    dyn.attach(record, interval=1)
    record()
    start = time.perf_counter()
    dyn.run(n_steps)
    seconds = time.perf_counter() - start
    t, e = np.asarray(times), np.asarray(totals)
    n = len(atoms)
    slope = float(np.polyfit(t, e, 1)[0]) if t.size > 1 else 0.0
    return {
        "steps": n_steps, "dt_fs": dt_fs, "time_ps": float(t[-1]), "n_atoms": n,
        "drift_eV_per_atom_per_ps": slope / n,
        "max_abs_deviation_eV_per_atom": float(np.abs(e - e[0]).max()) / n,
        "mean_temperature_K": float(np.mean(temps)), "wall_seconds": seconds,
        "neighbor_list_builds": int(calc.neighbor_list_builds),
    }  # fmt: skip


def run(model, reference: str = "auto", distort: float = 0.1, fmax: float = 0.01, temperature: float = 300.0,
        dt_fs: float = 0.5, time_ps: float = 1.0, seed: int = 0, dtype: str = "float64") -> dict:  # fmt: skip
    """The whole example; ``model`` is a path or an :class:`atomzoo.inference.AtomzooModel`. Returns the report."""
    calc = AtomzooCalculator(model, dtype=dtype)
    start = fixture_minimum_frame()
    ref, described = reference_geometry(start, reference, calc, fmax)
    rng = np.random.default_rng(seed)
    distorted = ref.copy()
    distorted.positions += rng.normal(0.0, distort, distorted.positions.shape)
    relaxed, steps, final_fmax = relax(distorted, calc, fmax, 1000)
    report = {
        "model": str(model) if not hasattr(model, "card") else model.card.get("source_checkpoint", "in memory"),
        "dtype": dtype,
        "reference": described,
        "relaxation": {"distortion_A": distort, "rmsd_distorted_A": rmsd(distorted, ref), "bfgs_steps": steps,
                       "fmax_eV_per_A": final_fmax, "converged": final_fmax <= fmax,
                       "rmsd_to_reference_A": rmsd(relaxed, ref)},  # fmt: skip
        "nve": nve(relaxed, calc, temperature, dt_fs, time_ps, seed),
    }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="zoo fit checkpoint (.ckpt) or atomzoo.export file (.safetensors)")
    parser.add_argument("--reference", choices=("auto", "xtb", "model"), default="auto")
    parser.add_argument("--distort", type=float, default=0.1, help="Gaussian displacement per coordinate, Angstrom")
    parser.add_argument("--fmax", type=float, default=0.01, help="BFGS convergence, eV/A")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial Maxwell-Boltzmann temperature, K")
    parser.add_argument("--dt-fs", type=float, default=0.5)
    parser.add_argument("--time-ps", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--json", default=None, help="also write the report to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for a 9-atom molecule)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report = run(args.model, args.reference, args.distort, args.fmax, args.temperature, args.dt_fs, args.time_ps,
                 args.seed, args.dtype)  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
