"""Regenerate tests/data/mace_foundation/: a small MACE written by mace-torch itself, its converted file, and
mace-torch's own energies and forces (issue 28, item 3a).

    pip install mace-torch==0.3.16   # the reference; atomzoo's [mace] extra
    OMP_NUM_THREADS=1 python tests/data/generators/make_mace_foundation.py

1. builds a ``mace.modules.ScaleShiftMACE`` -- the class of the MACE-MP / MACE-OFF foundation models --
   small (8x0e+8x1o, 2 interactions, max_ell 2, correlation 2; elements H, C, N, O), in float64, with
   seeded random weights, random atomic energies E0 and a scale / shift;
2. saves it the way mace-torch saves models (``torch.save(model, "mace_small.model")``: the whole module
   pickled, as ``mace_mp()`` / ``mace_off()`` files are);
3. computes energies (eV) and forces (eV/A) of five molecules (ASE's H2O, NH3, CH4, HCN and ethanol, the
   last two with atoms displaced) with mace-torch's own ASE calculator ``mace.calculators.MACECalculator``
   on that file -> ``reference.npz``;
4. converts the file with atomzoo's converter (``python -m atomzoo.convert mace``) ->
   ``mace_small.safetensors`` + ``mace_small.card.json``: what the parity test reads (no unpickling).
"""

from __future__ import annotations

from pathlib import Path

import mace  # noqa: F401 -- first: it lets e3nn load its constants (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, a generator only)
import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "mace_foundation"
ELEMENTS = [1, 6, 7, 8]


def structures():
    from ase.build import molecule

    mols = [molecule(name) for name in ("H2O", "NH3", "CH4", "HCN", "CH3CH2OH")]
    rng = np.random.default_rng(0)
    for atoms in mols[3:]:
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    return mols


def build_model():
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    model = modules.ScaleShiftMACE(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(ELEMENTS), hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("4x0e"), atomic_energies=np.array([-13.6, -1029.8, -1485.3, -2042.6]),
        avg_num_neighbors=3.0, atomic_numbers=ELEMENTS, correlation=2, gate=torch.nn.functional.silu,
        radial_MLP=[8, 8], atomic_inter_scale=0.7, atomic_inter_shift=-0.2,
    )  # fmt: skip
    with torch.no_grad():  # e3nn initialises some weights to zero-like values: make every path count
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def main() -> None:
    import os

    from mace.calculators import MACECalculator

    os.chdir(OUT.parents[2])

    OUT.mkdir(parents=True, exist_ok=True)
    model = build_model()
    path = OUT / "mace_small.model"
    torch.save(model, path)
    calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    energies, forces, numbers, positions, counts = [], [], [], [], []
    for atoms in structures():
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        numbers.append(atoms.numbers)
        positions.append(atoms.positions)
        counts.append(len(atoms))
    np.savez(OUT / "reference.npz", energy=np.array(energies), forces=np.concatenate(forces),
             numbers=np.concatenate(numbers), positions=np.concatenate(positions), counts=np.array(counts))  # fmt: skip
    from atomzoo.convert import main as convert

    root = OUT.parents[2]  # the card names the source relative to the repository
    convert(["mace", str(path.relative_to(root)), str(OUT / "mace_small.safetensors")])


if __name__ == "__main__":
    main()
