"""atomzoo.load, full-model export with cards, input checks, and `zoo predict --out` on an ASE file."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

import atomzoo
from atomzoo.calculator import AtomzooCalculator
from atomzoo.cards import ModelFileError, card_path, sha256_file
from atomzoo.export import export_backbone, export_model
from atomzoo.inference import InputError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "md17_fixture" / "rmd17" / "npz_data" / "rmd17_ethanol.npz"


def frames(n: int, start: int = 0, labelled: bool = False) -> list[Atoms]:
    data = np.load(FIXTURE)
    out = []
    for k in range(start, start + n):
        atoms = Atoms(numbers=data["nuclear_charges"], positions=data["coords"][k])
        if labelled:  # kcal/mol in the rMD17 file -> eV
            factor = 0.0433641043
            atoms.calc = SinglePointCalculator(atoms, energy=float(data["energies"][k]) * factor,
                                               forces=data["forces"][k] * factor)  # fmt: skip
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def export(force_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ethanol.safetensors"
    export_model(force_checkpoint, out)
    return out


def test_export_writes_a_card_that_describes_the_model(export):
    card = json.loads(card_path(export).read_text())
    assert card["model_format"] == "atomzoo-full-model/1" and card["weights"] == "ethanol.safetensors"
    assert card["sha256"] == sha256_file(export)
    assert card["targets"] == [{"name": "energy", "unit": "eV"}] and card["force_unit"] == "eV/A"
    assert card["elements"] == [1, 6, 8] and card["periodic"] is True  # SchNet builds periodic images
    assert card["objective"].endswith("Regression") and card["backbone"]["class_path"].endswith("SchNet")
    assert card["training_data"]["class_path"].endswith("RMD17DataModule")
    assert card["test_metrics"]["test/forces_mae_meV_per_A"] > 0  # from the run's test_metrics.json
    assert {"atomzoo", "torch", "lightning", "ase"} <= set(card["versions"])


def test_checkpoint_and_export_load_to_the_same_predictions(force_checkpoint, export):
    from_ckpt, from_export = atomzoo.load(force_checkpoint), atomzoo.load(export)
    assert from_export.elements == [1, 6, 8] and from_ckpt.elements == [1, 6, 8]
    structures = frames(3)
    a, b = from_ckpt.predict(structures), from_export.predict(structures)
    assert len(a) == 3 and set(a[0]) == {"energy", "forces"} and a[0]["forces"].shape == (9, 3)
    for x, y in zip(a, b):
        assert x["energy"] == y["energy"]
        np.testing.assert_array_equal(x["forces"], y["forces"])
    single = from_export.predict(structures[1])  # one Atoms -> one dict
    assert single["energy"] == pytest.approx(b[1]["energy"], abs=1e-5)  # float32 batch vs single: summation order
    # batched and one-by-one agree
    assert from_export.predict(structures, batch_size=1)[2]["energy"] == pytest.approx(b[2]["energy"], abs=1e-5)


def test_load_refuses_modified_unknown_and_backbone_only_files(force_checkpoint, export, tmp_path):
    copy = tmp_path / "m.safetensors"
    shutil.copy(export, copy)
    shutil.copy(card_path(export), card_path(copy))
    raw = bytearray(copy.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the last tensor's data
    copy.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="SHA-256 .* does not match its card"):
        atomzoo.load(copy)
    card = json.loads(card_path(export).read_text())
    shutil.copy(export, copy)
    card_path(copy).write_text(json.dumps({**card, "model_format": "someone-elses/9"}))
    with pytest.raises(ModelFileError, match="unknown model format 'someone-elses/9'"):
        atomzoo.load(copy)
    card_path(copy).unlink()
    with pytest.raises(ModelFileError, match="no model card m.card.json"):
        atomzoo.load(copy)
    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unknown model file type '.pt'"):
        atomzoo.load(weird)
    backbone = tmp_path / "backbone.safetensors"
    export_backbone(force_checkpoint, backbone)
    assert json.loads(card_path(backbone).read_text())["model_format"] == "atomzoo-backbone/1"
    with pytest.raises(ModelFileError, match="backbone-only export"):
        atomzoo.load(backbone)
    # the backbone export still serves init_from
    from atomzoo.model_files import build_backbone

    assert type(build_backbone(backbone)).__name__ == "SchNet"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a[:0], "no atoms"),
        (lambda a: a.positions.__setitem__((2, 1), np.nan) or a, "atom 2 is NaN"),
        (lambda a: a.numbers.__setitem__(4, 17) or a, r"element\(s\) \['Cl'\] not in the training data"),
        (lambda a: a.positions.__setitem__(5, a.positions[4] + [0.05, 0, 0]) or a, "atoms 4 and 5 are 0.05 A apart"),
        (lambda a: a.set_cell([10, 10, 0]) or a.set_pbc(True) or a, "lattice vectors of the periodic directions"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(export, change, message):
    model = atomzoo.load(export)
    atoms = change(frames(1)[0])
    with pytest.raises(InputError, match=message):
        model.predict(atoms)
    atoms.calc = AtomzooCalculator(model)
    with pytest.raises(InputError, match=message):
        atoms.get_potential_energy()


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_zoo_predict_on_an_xyz_file_matches_the_api_and_the_calculator(force_checkpoint, cache_dir, tmp_path, suffix):
    from atomzoo.cli import run

    structures = frames(5, start=20)
    xyz = tmp_path / "my.xyz"
    write(xyz, structures, format="xyz")  # positions only: no energies, no forces
    out = tmp_path / f"preds{suffix}"
    run(["predict", "--ckpt_path", str(force_checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
         "--data.init_args.path", str(xyz), "--data.init_args.cache_dir", str(cache_dir), "--data.init_args.batch_size", "2",
         "--out", str(out), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    model = atomzoo.load(force_checkpoint)
    expected = model.predict(structures, batch_size=2)  # the same batches as --data.init_args.batch_size 2
    if suffix == ".csv":
        mol = pd.read_csv(out)
        atoms = pd.read_csv(tmp_path / "preds.atoms.csv")
        assert list(mol["id"]) == [f"my.xyz:{k}" for k in range(5)]
        assert list(mol.columns) == ["id", "index", "n_atoms", "energy_eV", "energy_ref_eV"]
        assert mol["energy_ref_eV"].isna().all()  # unlabelled file: no reference, never a made-up number
        energy = mol["energy_eV"].to_numpy()
        forces = atoms[["fx_eV_per_A", "fy_eV_per_A", "fz_eV_per_A"]].to_numpy().reshape(5, 9, 3)
        assert list(atoms["Z"][:9]) == list(structures[0].numbers)
    else:
        arrays = np.load(out)
        assert list(arrays["id"]) == [f"my.xyz:{k}" for k in range(5)]
        energy, forces = arrays["energy_eV"], arrays["forces_eV_per_A"].reshape(5, 9, 3)
        np.testing.assert_array_equal(arrays["molecule"], np.repeat(np.arange(5), 9))
    np.testing.assert_allclose(energy, [e["energy"] for e in expected], rtol=0, atol=1e-6)
    np.testing.assert_allclose(forces, np.stack([e["forces"] for e in expected]), rtol=0, atol=1e-6)
    calc = AtomzooCalculator(model)
    for k, atoms in enumerate(structures):
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(energy[k], abs=1e-5)
        np.testing.assert_allclose(atoms.get_forces(), forces[k], atol=1e-5)


def test_zoo_predict_writes_references_from_a_labelled_extxyz(force_checkpoint, cache_dir, tmp_path):
    from atomzoo.cli import run

    structures = frames(3, start=40, labelled=True)
    path = tmp_path / "labelled.extxyz"
    write(path, structures)
    out = tmp_path / "preds.csv"
    run(["predict", "--ckpt_path", str(force_checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
         "--data.init_args.path", str(path), "--data.init_args.cache_dir", str(cache_dir),
         "--out", str(out), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    mol = pd.read_csv(out)
    np.testing.assert_allclose(mol["energy_ref_eV"], [a.get_potential_energy() for a in structures], rtol=1e-12)
    atoms = pd.read_csv(tmp_path / "preds.atoms.csv")
    np.testing.assert_allclose(atoms["ref_fx_eV_per_A"], np.concatenate([a.get_forces()[:, 0] for a in structures]), atol=1e-5)


def test_missing_labels_can_be_predicted_but_not_trained_on(cache_dir, tmp_path):
    from atomzoo.datamodules import ASEFileDataModule
    from atomzoo.datamodules.checks import DataFormatError

    path = tmp_path / "plain.xyz"
    write(path, frames(4), format="xyz")
    with pytest.raises(DataFormatError, match="no energy"):
        ASEFileDataModule(path=str(path), cache_dir=str(cache_dir)).setup("fit")
    dm = ASEFileDataModule(path=str(path), cache_dir=str(cache_dir), allow_missing_labels=True, batch_size=3)
    with pytest.raises(DataFormatError, match="can only be predicted"):
        dm.setup("fit")
    batches = list(dm.predict_dataloader())
    assert [b.idx.tolist() for b in batches] == [[0, 1, 2], [3]]  # the whole file, in file order
    assert dm.molecule_ids([0, 3]) == ["plain.xyz:0", "plain.xyz:3"]


def test_out_is_only_an_option_of_predict(force_checkpoint, tmp_path):
    from atomzoo.cli import run

    with pytest.raises(ValueError, match="--out .* is an option of `zoo predict`"):
        run(["test", "--ckpt_path", str(force_checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
             "--data.init_args.path", "x.xyz", "--out", str(tmp_path / "p.csv")])  # fmt: skip


def test_zoo_predict_prints_where_the_predictions_went_and_makes_no_run_folder(
    force_checkpoint, cache_dir, tmp_path, monkeypatch, capsys, recwarn
):
    """Issue 32 item 5: in the user's directory only the --out files appear (no runs/, no config.yaml),
    the output path is printed, and no "dirpath has changed" / callback-state warning is raised."""
    from atomzoo.cli import run

    work = tmp_path / "work"
    work.mkdir()
    write(work / "my.xyz", frames(3), format="xyz")
    monkeypatch.chdir(work)
    run(["predict", "--ckpt_path", str(force_checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
         "--data.init_args.path", "my.xyz", "--data.init_args.cache_dir", str(cache_dir), "--out", "preds.csv",
         "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert sorted(p.name for p in work.iterdir()) == ["my.xyz", "preds.atoms.csv", "preds.csv"]
    out = capsys.readouterr().out
    assert f"zoo predict: wrote 3 molecules to {work / 'preds.csv'} (per atom: {work / 'preds.atoms.csv'})" in out
    noise = [str(w.message)[:80] for w in recwarn if "dirpath has changed" in str(w.message) or "ckpt_path" in str(w.message)]
    assert noise == []


def test_export_writes_weights_and_card_with_the_users_umask(force_checkpoint, tmp_path):
    """Issue 32 item 9: the weights get the same permissions as the card (0o666 & ~umask), not -rw-------."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        out = tmp_path / "shared.safetensors"
        card = export_model(force_checkpoint, out)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 == stat.S_IMODE(Path(card).stat().st_mode)
