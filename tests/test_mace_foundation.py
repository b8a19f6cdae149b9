"""mace-torch's saved models (MACE-MP / MACE-OFF files) in atomzoo's MACE backbone (issue 28, item 3a).

tests/data/mace_foundation/ (tests/data/generators/make_mace_foundation.py): a small ScaleShiftMACE
written by mace-torch itself (``mace_small.model``, ``torch.save`` of the module, as MACE-MP/OFF files),
its conversion (``mace_small.safetensors`` + card: safetensors and JSON, read without unpickling) and
mace-torch's own energies and forces of five molecules (``reference.npz``, from
``mace.calculators.MACECalculator``). The parity test reads only the converted file and the reference
numbers: no network, no mace-torch file, no mace-torch model run. atomzoo's MACE backbone is built from
mace-torch's blocks, so these tests need the ``[mace]`` extra installed (skipped without it).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

# find_spec, not importorskip: importing mace itself would set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for the process
if importlib.util.find_spec("mace") is None:
    pytest.skip("mace-torch is not installed", allow_module_level=True)

from atomzoo import model_files  # noqa: E402
from atomzoo.backbones.mace import MACE, convert_mace_state  # noqa: E402
from atomzoo.cards import ModelFileError  # noqa: E402
from atomzoo.convert import mace_potential  # noqa: E402
from atomzoo.nn.batch import atoms_to_batch  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "mace_foundation"
CONVERTED = DATA / "mace_small.safetensors"


def reference_structures():
    from ase import Atoms

    ref = np.load(DATA / "reference.npz")
    bounds = np.concatenate([[0], np.cumsum(ref["counts"])])
    mols = [Atoms(numbers=ref["numbers"][a:b], positions=ref["positions"][a:b]) for a, b in zip(bounds, bounds[1:])]
    return mols, ref


def test_converted_file_reproduces_mace_torch_energies_and_forces():
    potential = mace_potential(CONVERTED)
    mols, ref = reference_structures()
    energy, forces = potential.energy_and_forces(atoms_to_batch(mols, torch.float64))
    assert energy.dtype == torch.float64
    np.testing.assert_allclose(energy.numpy(), ref["energy"], rtol=1e-12, atol=1e-9)  # eV
    np.testing.assert_allclose(forces.numpy(), ref["forces"], rtol=0, atol=1e-9)  # eV/A
    assert np.abs(ref["forces"]).max() > 0.05  # the forces are not trivially zero


def test_the_converted_backbone_is_an_ordinary_backbone_export(tmp_path):
    """zoo fit --model.init_from <converted file>: SSL objectives and fine-tuning run on the MACE weights."""
    from atomzoo.objectives import Denoising

    backbone = model_files.build_backbone(CONVERTED)
    assert isinstance(backbone, MACE) and backbone.hidden_irreps == "8x0e+8x1o"
    record = model_files.read(CONVERTED)
    assert not any(k.startswith("readouts") for k in record.backbone_weights)
    objective = Denoising(MACE(**record.backbone["init_args"]), init_from=str(CONVERTED))
    for key, value in backbone.state_dict().items():
        assert torch.equal(objective.backbone.state_dict()[key], value)
    copy = tmp_path / CONVERTED.name
    shutil.copy(CONVERTED, copy)
    shutil.copy(DATA / "mace_small.card.json", tmp_path / "mace_small.card.json")
    data = bytearray(copy.read_bytes())
    data[-3] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match its card"):
        mace_potential(copy)


@pytest.mark.slow  # builds the mace-torch model (about 15 s on one CPU thread)
def test_converter_maps_mace_torch_weights(tmp_path):
    """The converter on the model the generator builds with mace-torch gives the committed file's tensors."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data" / "generators"))
    try:
        from make_mace_foundation import build_model
    finally:
        sys.path.pop(0)
    from atomzoo.backbones.mace import mace_init_args

    model = build_model()
    torch.set_default_dtype(torch.float32)  # the generator builds in float64
    args = mace_init_args(model)
    committed = model_files.read(CONVERTED)
    assert args == committed.backbone["init_args"]
    backbone = MACE(**args)
    state, kept = convert_mace_state(model, backbone)
    assert "interactions.1.skip_tp.weight[256:]" in kept  # mace's last layer: scalars only
    for key, value in state.items():
        if key in {k for k, _ in backbone.named_parameters()} and not any(key in k for k in kept):
            assert torch.equal(value, committed.backbone_weights[key]), key
