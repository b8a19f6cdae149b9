"""SPICE-format HDF5 reader: units and the gradient's sign against hand values, on a file laid out as
SPICE 2 writes it (one group per molecule, Bohr / Hartree / Hartree per Bohr, ``units`` attributes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from atomzoo.datamodules.checks import DataFormatError  # noqa: E402
from atomzoo.datamodules.spice import SPICEDataModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOHR_A = 0.52917721  # Angstrom per Bohr (CODATA, to 8 digits)
HARTREE_EV = 27.211386  # eV per Hartree


def write_spice(path: Path, units: dict[str, str] | None = None) -> Path:
    """Two molecules as SPICE 2 stores them: water with two conformations, methane with one."""
    units = units or {"conformations": "bohr", "dft_total_energy": "hartree", "dft_total_gradient": "hartree/bohr"}
    with h5py.File(path, "w") as f:
        water = f.create_group("[H:2][O:1][H:3]")
        water["atomic_numbers"] = np.array([8, 1, 1], dtype=np.int16)
        water["conformations"] = np.array([[[0, 0, 0], [1.8, 0, 0], [0, 1.8, 0]],
                                           [[0, 0, 0], [2.0, 0, 0], [0, 0, -1.0]]], dtype=np.float32)  # fmt: skip
        water["dft_total_energy"] = np.array([-76.4, -76.3])
        water["dft_total_gradient"] = np.array([[[0.01, 0, 0], [-0.01, 0, 0], [0, 0, 0]],
                                                [[0, 0.02, 0], [0, 0, 0], [0, -0.02, 0]]], dtype=np.float32)  # fmt: skip
        water["formation_energy"] = np.array([-0.3, -0.2])
        water["smiles"] = np.array([b"[H:2][O:1][H:3]"])
        water["subset"] = np.array([b"SPICE Water Clusters"])
        methane = f.create_group("C")
        methane["atomic_numbers"] = np.array([6, 1, 1, 1, 1], dtype=np.int16)
        methane["conformations"] = np.arange(15, dtype=np.float32).reshape(1, 5, 3)
        methane["dft_total_energy"] = np.array([-40.5])
        methane["dft_total_gradient"] = np.full((1, 5, 3), -0.001, dtype=np.float32)
        methane["formation_energy"] = np.array([-0.6])
        for group in (water, methane):
            for key, unit in units.items():
                group[key].attrs["units"] = unit
    return path


def module(tmp_path: Path, **kwargs) -> SPICEDataModule:
    dm = SPICEDataModule(path=str(tmp_path / "spice.hdf5"), cache_dir=str(tmp_path / "cache"), num_train=1.0,
                         num_val=0.0, num_test=0.0, **kwargs)  # fmt: skip
    dm.setup()
    return dm


def test_units_and_gradient_sign_against_hand_values(tmp_path):
    write_spice(tmp_path / "spice.hdf5")
    dm = module(tmp_path)
    store = dm.store
    assert len(store) == 3 and store.counts.tolist() == [5, 3, 3]  # HDF5 lists groups by name: C, then water
    pos, forces = np.asarray(store.arrays["pos"]), np.asarray(store.arrays["forces"])
    energy = np.asarray(store.arrays["labels"])[:, 0]
    # water, first conformation: H at 1.8 Bohr on x = 0.952519 A
    np.testing.assert_allclose(pos[5:8], [[0, 0, 0], [0.9525190, 0, 0], [0, 0.9525190, 0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pos[10], [0, 0, -BOHR_A], rtol=1e-6)
    # -76.4 Hartree = -2078.95 eV; -40.5 Hartree = -1102.061 eV
    np.testing.assert_allclose(energy, [-40.5 * HARTREE_EV, -76.4 * HARTREE_EV, -76.3 * HARTREE_EV], rtol=1e-7)
    # forces = -gradient: 0.01 Hartree/Bohr on O along +x pushes it along -x by 0.01 * 51.422067 eV/A
    np.testing.assert_allclose(forces[5], [-0.5142207, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(forces[6], [0.5142207, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(forces[8:11], [[0, -1.0284413, 0], [0, 0, 0], [0, 1.0284413, 0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(forces[:5], np.full((5, 3), 0.0514221), rtol=1e-5)
    assert store.meta["units"]["energy"] == "eV" and store.meta["units"]["forces"] == "eV/A"
    assert dm.forces and dm.force_unit == "eV/A" and dm.atomic_numbers == [1, 6, 8]
    batch = next(iter(dm.train_dataloader()))
    assert batch.forces.shape == batch.pos.shape and batch.y.dtype.is_floating_point


def test_another_energy_key_and_no_forces(tmp_path):
    write_spice(tmp_path / "spice.hdf5")
    dm = module(tmp_path, energy_key="formation_energy", gradient_key=None)
    np.testing.assert_allclose(np.asarray(dm.store.arrays["labels"])[:, 0], np.array([-0.6, -0.3, -0.2]) * HARTREE_EV,
                               rtol=1e-7)  # fmt: skip
    assert "forces" not in dm.store.atom_arrays() and not dm.forces
    with pytest.raises(ValueError, match="--data.gradient_key"):
        SPICEDataModule(path="x.hdf5", gradient_key=None, forces=True)


def test_errors_name_the_group_and_key(tmp_path):
    write_spice(tmp_path / "spice.hdf5", units={"conformations": "angstrom"})
    with pytest.raises(DataFormatError, match=r"group 'C': 'conformations' is in 'angstrom'.*Bohr"):
        module(tmp_path)
    write_spice(tmp_path / "spice.hdf5")
    with pytest.raises(DataFormatError, match=r"group 'C': no array 'wb97x_energy'"):
        module(tmp_path, energy_key="wb97x_energy")


def test_config_file_reads_the_reader():
    import yaml

    config = yaml.safe_load((ROOT / "configs/data/spice.yaml").read_text())
    assert config["data"]["class_path"] == "atomzoo.datamodules.SPICEDataModule"
    assert config["data"]["init_args"]["energy_key"] == "dft_total_energy"
