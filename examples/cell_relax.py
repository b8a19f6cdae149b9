"""Train a small model on EMT copper, relax the fcc cell with its stress, and run a short NPT simulation.

    # 3.3 min of CPU to the end of training with one thread; wall time and machine in docs/results.md
    OMP_NUM_THREADS=1 python examples/cell_relax.py --out runs/cell_relax

1. Data: ``--structures`` fcc Cu cells (4-atom conventional and 8-atom primitive 2x2x2, some bcc),
   lattice constant scaled by [0.96, 1.04], random symmetric strain up to 3 % per component, atoms
   rattled by 0.08 A, labelled by ASE's EMT calculator with energy, forces and stress
   (``tests/data/generators/make_emt_materials.py``, bulk only), written to ``<out>/cu_emt.extxyz``.
2. Training: ``zoo fit`` (:mod:`atomzoo.cli`) of a PaiNN energy model on energy + forces + stress
   (``--data.init_args.stress_key stress``; the stress is ``(1/V) dE/d(strain)`` of the model's energy)
   for ``--steps`` optimizer steps; the run goes to ``<out>/runs``.
3. Cell relaxation: fcc Cu (4-atom cubic cell) started at ``--start-a`` A, relaxed with ASE's
   ``FrechetCellFilter`` + ``BFGS`` to ``--fmax`` (eV/A; the filter scales the stress by the volume
   into the same unit) on :class:`atomzoo.calculator.AtomzooCalculator` (float64), and the same with
   EMT from the same start. Reported: both lattice constants, their difference, the model's residual
   stress in GPa and the steps.
4. NPT: the model's relaxed cell repeated 2x2x2 (32 atoms), Maxwell-Boltzmann velocities at
   ``--temperature`` K, ASE's ``NPTBerendsen`` (isotropic Berendsen barostat and thermostat; 1 bar,
   time constants 100 fs / 1000 fs, Cu's compressibility 7.3e-3 /GPa) for ``--npt-ps`` ps with 2 fs
   steps, and the same with EMT. Reported: mean temperature, mean lattice constant over the second
   half, the largest relative volume change, and whether the run stayed stable (finite energies, no
   atom pair closer than 1.5 A, volume within 20 % of the start).

Prints a JSON report (``--json FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.io import write
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.optimize import BFGS

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "tests" / "data" / "generators" / "make_emt_materials.py"
#: Cu's isothermal compressibility, 1 / (140 GPa), in ASE's units (1/bar for NPTBerendsen's ``compressibility``)
COMPRESSIBILITY_PER_BAR = 1.0 / 140e4


def make_data(path: Path, structures: int, seed: int) -> Path:
    """``structures`` EMT-labelled bulk Cu cells in ``path`` (extxyz) from the fixture generator."""
    spec = importlib.util.spec_from_file_location("make_emt_materials", GENERATOR)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, generator.generate(["Cu"], structures, seed, surface_fraction=0.0), format="extxyz")
    return path


def train(data: Path, out: Path, steps: int, width: int, seed: int) -> tuple[Path, dict]:
    """``zoo fit`` of a PaiNN energy model on energy + forces + stress; returns the last checkpoint and
    the final validation metrics."""
    from atomzoo.cli import run

    cli = run([
        "fit", "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
        "-c", str(ROOT / "configs" / "objectives" / "regression.yaml"),
        "--model.backbone", str(ROOT / "configs" / "backbones" / "painn.yaml"),
        "--model.backbone.init_args.width", str(width), "--model.backbone.init_args.num_interactions", "2",
        "--model.backbone.init_args.cutoff", "5.0",
        "--data.init_args.path", str(data), "--data.init_args.cache_dir", str(out / "cache"),
        "--data.init_args.stress_key", "stress", "--data.init_args.batch_size", "16",
        "--data.init_args.num_train", "0.9", "--data.init_args.num_val", "0.1", "--data.init_args.num_test", "0",
        "--model.lr", "2e-3", "--model.warmup_steps", str(max(1, steps // 20)), "--model.force_weight", "10",
        "--model.stress_weight", "10", "--seed_everything", str(seed),
        "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
        "--trainer.default_root_dir", str(out / "runs"), "--trainer.logger.init_args.save_dir", str(out / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    return Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", metrics


def relax_cell(calc, start_a: float, fmax: float, steps: int) -> dict:
    """FrechetCellFilter + BFGS of the 4-atom fcc Cu cell from lattice constant ``start_a`` (A)."""
    atoms = bulk("Cu", "fcc", a=start_a, cubic=True)
    atoms.calc = calc
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    lengths = atoms.cell.cellpar()[:3]
    return {"a_A": float(lengths.mean()), "a_spread_A": float(lengths.max() - lengths.min()), "steps": int(opt.nsteps),
            "converged": converged, "residual_stress_GPa": float(np.abs(atoms.get_stress()).max() / units.GPa),
            "atoms": atoms}  # fmt: skip


def npt(atoms, calc, temperature: float, time_ps: float, seed: int) -> dict:
    """NPTBerendsen at ``temperature`` K and 1 bar (module docstring); the stability report."""
    atoms = atoms.repeat((2, 2, 2))
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dt = 2.0 * units.fs
    steps = max(2, int(round(time_ps * 1000 / 2.0)))
    dyn = NPTBerendsen(atoms, timestep=dt, temperature_K=temperature, pressure_au=1.0 * units.bar, taut=100 * units.fs,
                       taup=1000 * units.fs, compressibility_au=COMPRESSIBILITY_PER_BAR / units.bar)  # fmt: skip
    v0 = atoms.get_volume()
    volumes, temperatures, energies, closest = [], [], [], []
    for _ in range(steps):
        dyn.run(1)
        volumes.append(atoms.get_volume())
        temperatures.append(atoms.get_temperature())
        energies.append(atoms.get_total_energy())
        closest.append(float(np.min(atoms.get_all_distances(mic=True) + 10 * np.eye(len(atoms)))))
    volumes = np.asarray(volumes)
    half = volumes[len(volumes) // 2:]
    change = float(np.abs(volumes / v0 - 1).max())
    stable = bool(np.isfinite(energies).all() and min(closest) > 1.5 and change < 0.2)
    return {"steps": steps, "time_ps": steps * 2.0 / 1000,
            "mean_temperature_K": float(np.mean(temperatures[len(temperatures) // 2:])),
            "mean_a_A": float((half.mean() / 32 * 4) ** (1 / 3)),  # 32 atoms = 8 cubic 4-atom cells
            "max_rel_volume_change": change, "closest_pair_A": float(min(closest)), "stable": stable}  # fmt: skip


def run(out: str = "runs/cell_relax", structures: int = 300, steps: int = 1500, width: int = 32,
        start_a: float = 3.75, fmax: float = 1e-3, relax_steps: int = 200, temperature: float = 300.0,
        npt_ps: float = 2.0, seed: int = 0) -> dict:  # fmt: skip
    """The whole example (module docstring); returns the report."""
    from atomzoo.calculator import AtomzooCalculator

    out = Path(out)
    started = time.perf_counter()
    data = make_data(out / "cu_emt.extxyz", structures, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Lightning's small-dataset notices
        checkpoint, metrics = train(data, out, steps, width, seed)
    trained = time.perf_counter()
    calc = AtomzooCalculator(str(checkpoint), dtype="float64")
    model_relax, emt_relax = relax_cell(calc, start_a, fmax, relax_steps), relax_cell(EMT(), start_a, fmax, relax_steps)
    report = {
        "data": {"structures": structures, "file": str(data)},
        "training": {"steps": steps, "checkpoint": str(checkpoint), "seconds": round(trained - started, 1),
                     "validation": metrics},
        "relaxation": {"start_a_A": start_a, "fmax": fmax,
                       "model": {k: v for k, v in model_relax.items() if k != "atoms"},
                       "emt": {k: v for k, v in emt_relax.items() if k != "atoms"},
                       "a_error_A": model_relax["a_A"] - emt_relax["a_A"]},
    }  # fmt: skip
    report["npt"] = {"temperature_K": temperature,
                     "model": npt(model_relax["atoms"], calc, temperature, npt_ps, seed),
                     "emt": npt(emt_relax["atoms"], EMT(), temperature, npt_ps, seed)}  # fmt: skip
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/cell_relax", help="folder for the data, the run and the cache")
    parser.add_argument("--structures", type=int, default=300)
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--start-a", type=float, default=3.75, help="starting lattice constant, A (EMT's: 3.59)")
    parser.add_argument("--fmax", type=float, default=1e-3, help="eV/A, forces and volume-scaled stress")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--npt-ps", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = run(args.out, args.structures, args.steps, args.width, args.start_a, args.fmax, 200, args.temperature,
                 args.npt_ps, args.seed)  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
