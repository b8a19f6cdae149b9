"""A small materials set: EMT crystals and surfaces with energies, forces and stress.

Engine: ASE's effective-medium theory calculator (``ase.calculators.emt.EMT``; Jacobsen, Stoltze and
Norskov, Surf. Sci. 366, 394 (1996)) -- analytic, milliseconds per structure, parameters for Al, Cu,
Ag, Au, Ni, Pd, Pt. Not a DFT level of theory: the set exercises the materials code paths (periodic
images, stress, surfaces, alloys), it is no benchmark of accuracy against experiment.

Structures (per element of ``--elements``, each with its own random draw from ``--seed``):

* ``bulk``: fcc conventional (4 atoms) or primitive 2x2x2 (8 atoms) cells, and bcc 2x1x1 conventional
  (4 atoms), with EMT's fcc lattice constant scaled by a random isotropic factor in [0.96, 1.04], a
  random symmetric strain of up to ``--strain`` per component and atoms rattled by
  ``N(0, --rattle^2)`` A; every tenth bulk cell is a random binary alloy with another element;
* ``surface``: fcc(111) and fcc(100) slabs of 2x2x3 atoms with 6 A of vacuum on each side, pbc
  ``(T, T, F)``, rattled: they have energies and forces but **no stress** (not fully periodic).

Labels, as ASE's extxyz writer writes a ``SinglePointCalculator``: ``energy`` (eV), ``forces``
(eV/A) and, for bulk cells only, ``stress`` (eV/A^3, ASE's Voigt order and sign). ``config_type``
(``bulk`` or ``surface``) and ``element`` are in the comment line.

The committed fixture ``tests/data/emt_materials/emt_materials.extxyz`` (240 structures) was made with

    python tests/data/generators/make_emt_materials.py --out tests/data/emt_materials/emt_materials.extxyz \\
        --per-element 40 --seed 0

and the benchmark's larger pretraining set (``benchmarks/matrices/materials.yaml``) with
``--per-element 400 --seed 1``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers
from ase.io import write

#: EMT's own fcc lattice constants (A), from a FrechetCellFilter relaxation of the 4-atom cell
#: (rounded to 0.01 A; only the centre of the random scaling)
LATTICE = {"Al": 3.99, "Cu": 3.59, "Ag": 4.06, "Au": 4.06, "Ni": 3.49, "Pd": 3.88}


def labelled(atoms, with_stress: bool):
    """``atoms`` with a ``SinglePointCalculator`` holding EMT's energy, forces and (bulk) stress."""
    atoms.arrays.pop("initial_magmoms", None)  # ase.build's default moments for Ni: EMT has no spin
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if with_stress:
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def bulk_cell(element: str, rng: np.random.Generator, strain: float, rattle: float, elements: list[str]):
    a = LATTICE[element] * rng.uniform(0.96, 1.04)
    kind = rng.integers(3)
    if kind == 0:
        atoms = bulk(element, "fcc", a=a, cubic=True)
    elif kind == 1:
        atoms = bulk(element, "fcc", a=a).repeat((2, 2, 2))
    else:  # bcc with the fcc atomic volume
        atoms = bulk(element, "bcc", a=a / 2 ** (1 / 3), cubic=True).repeat((2, 1, 1))
    if rng.random() < 0.1 and len(elements) > 1:  # a random binary alloy
        other = str(rng.choice([e for e in elements if e != element]))
        atoms.numbers[rng.random(len(atoms)) < 0.5] = atomic_numbers[other]
    eps = rng.uniform(-strain, strain, (3, 3))
    atoms.set_cell(atoms.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    atoms.info.update(config_type="bulk", element=element)
    return labelled(atoms, with_stress=True)


def surface(element: str, rng: np.random.Generator, rattle: float):
    build = fcc111 if rng.random() < 0.5 else fcc100
    atoms = build(element, size=(2, 2, 3), a=LATTICE[element], vacuum=6.0)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    atoms.info.pop("adsorbate_info", None)  # ase.build's bookkeeping, not a label
    atoms.info.update(config_type="surface", element=element)
    return labelled(atoms, with_stress=False)


def generate(elements: list[str], per_element: int, seed: int, strain: float = 0.03, rattle: float = 0.08,
             surface_fraction: float = 0.25) -> list:  # fmt: skip
    """``per_element`` structures per element (a ``surface_fraction`` of them slabs), in a fixed order."""
    rng = np.random.default_rng(seed)
    out = []
    for element in elements:
        for k in range(per_element):
            if k < int(round(surface_fraction * per_element)):
                out.append(surface(element, rng, rattle))
            else:
                out.append(bulk_cell(element, rng, strain, rattle, elements))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--elements", nargs="+", default=list(LATTICE))
    parser.add_argument("--per-element", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strain", type=float, default=0.03)
    parser.add_argument("--rattle", type=float, default=0.08)
    args = parser.parse_args()
    structures = generate(args.elements, args.per_element, args.seed, args.strain, args.rattle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, structures, format="extxyz")
    print(f"wrote {len(structures)} structures to {args.out}")


if __name__ == "__main__":
    main()
