"""The training data's range in the model's record and card, and the warning when an input leaves it
(issue 31, item 9): a model trained on Cu2 at 2.2-6 A warns for Cu2 at 1.0 A, not at 2.5 A."""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.neighborlist import neighbor_list

import atomzoo
from atomzoo.calculator import AtomzooCalculator
from atomzoo.cards import card_path
from atomzoo.export import export_model
from atomzoo.model_files import read
from atomzoo.nn.training_range import ExtrapolationWarning, TrainingRange

ROOT = Path(__file__).resolve().parents[1]
SHORTEST = 2.2  # Angstrom: the closest Cu-Cu pair of the training file


def cu2(distance: float) -> Atoms:
    return Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])


def morse(r: float) -> tuple[float, float]:
    """Energy (eV) and dE/dr of a Morse Cu-Cu bond (D = 2 eV, a = 1.4 / A, r0 = 2.22 A)."""
    e = np.exp(-1.4 * (r - 2.22))
    return 2.0 * (1 - e) ** 2 - 2.0, 2.0 * 2 * (1 - e) * 1.4 * e


@pytest.fixture(scope="module")
def cu2_checkpoint(tmp_path_factory) -> Path:
    """A tiny SchNet energy + force model fitted for 8 steps on 24 Cu2 dimers at 2.2 ... 6.0 A."""
    from atomzoo.cli import run

    folder = tmp_path_factory.mktemp("cu2")
    structures = []
    for r in np.linspace(SHORTEST, 6.0, 24):
        atoms = cu2(float(r))
        energy, slope = morse(float(r))
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=[[slope, 0, 0], [-slope, 0, 0]])
        structures.append(atoms)
    write(folder / "cu2.extxyz", structures)
    backbone = {"width": 16, "num_filters": 16, "num_interactions": 1, "num_rbf": 8, "cutoff": 6.5}
    run(["fit", "-c", str(ROOT / "configs" / "objectives" / "regression.yaml"),
         "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
         "--model.backbone", str(ROOT / "configs" / "backbones" / "schnet.yaml"),
         "--data.init_args.path", str(folder / "cu2.extxyz"), "--data.init_args.cache_dir", str(folder / "cache"),
         "--data.init_args.batch_size", "8",
         *(a for k, v in backbone.items() for a in (f"--model.init_args.backbone.init_args.{k}", str(v))),
         "--trainer.max_steps", "8", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(folder),
         "--trainer.default_root_dir", str(folder)])  # fmt: skip
    (ckpt,) = folder.glob("**/checkpoints/last.ckpt")
    return ckpt


def extrapolation_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ExtrapolationWarning)]


def test_the_checkpoint_and_the_card_record_the_shortest_training_distance(cu2_checkpoint, tmp_path):
    record = read(cu2_checkpoint).training_range
    train = np.load(cu2_checkpoint.parents[1] / "splits.npz")["train"]
    expected = float(np.linspace(SHORTEST, 6.0, 24)[train].min())  # the training split's, not the file's
    assert record["elements"] == [29] and record["radius_A"] == 10.0
    assert record["shortest_distance_A"] == {"Cu-Cu": pytest.approx(expected, abs=1e-4)}
    export_model(cu2_checkpoint, tmp_path / "cu2.safetensors")
    card = json.loads(card_path(tmp_path / "cu2.safetensors").read_text())
    assert card["training_range"] == record


@pytest.mark.parametrize("source", ["checkpoint", "export"])
def test_predict_warns_once_with_numbers_below_the_training_range(cu2_checkpoint, tmp_path, source):
    path = cu2_checkpoint
    if source == "export":
        path = tmp_path / "cu2.safetensors"
        export_model(cu2_checkpoint, path)
    model = atomzoo.load(path)
    shortest = model.training_range.shortest[(29, 29)]
    assert shortest >= SHORTEST - 1e-4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict([cu2(2.5), cu2(1.0), cu2(1.5), cu2(3.0)])
    (message,) = extrapolation_warnings(caught)  # once per call
    assert message == (
        f"Cu-Cu distance 1.00 A in structure 1 is below the shortest in training ({shortest:.2f} A): the prediction "
        "is an extrapolation; 1 more structures have pairs closer than the training range (2)"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(cu2(2.5))
        model.predict([cu2(2.5), cu2(6.0), cu2(8.0)])  # 8 A: beyond the training's 6 A but no pair is closer
    assert extrapolation_warnings(caught) == []
    with pytest.warns(ExtrapolationWarning, match=r"^Cu-Cu distance 1.00 A in the structure is below"):
        model.predict(cu2(1.0))


def test_the_calculator_warns_below_the_training_range(cu2_checkpoint):
    calc = AtomzooCalculator(cu2_checkpoint)
    atoms = cu2(1.0)
    atoms.calc = calc
    with pytest.warns(ExtrapolationWarning, match=r"Cu-Cu distance 1.00 A in AtomzooCalculator input is below the "
                                                  r"shortest in training \(2.\d\d A\)"):  # fmt: skip
        atoms.get_potential_energy()
    atoms = cu2(2.5)
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        atoms.get_potential_energy()


def test_zoo_predict_warns_once_naming_the_structures(cu2_checkpoint, tmp_path):
    from atomzoo.cli import run

    write(tmp_path / "new.xyz", [cu2(2.5), cu2(1.0), cu2(2.6), cu2(1.2), cu2(3.0)], format="xyz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(["predict", "--ckpt_path", str(cu2_checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
             "--data.init_args.path", str(tmp_path / "new.xyz"), "--data.init_args.cache_dir", str(tmp_path / "cache"),
             "--data.init_args.batch_size", "2", "--out", str(tmp_path / "p.csv"), "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false"])  # fmt: skip
    (message,) = extrapolation_warnings(caught)
    assert re.fullmatch(r"Cu-Cu distance 1.00 A in structure 1 is below the shortest in training \(2.\d\d A\): the "
                        r"prediction is an extrapolation; 1 more structures have pairs closer than the training range "
                        r"\(3\)", message), message  # fmt: skip


def test_files_without_a_recorded_range_load_and_predict_without_a_warning(cu2_checkpoint, tmp_path):
    out = tmp_path / "old.safetensors"
    export_model(cu2_checkpoint, out)
    card = json.loads(card_path(out).read_text())
    del card["training_range"]  # a card written before the range was recorded
    card_path(out).write_text(json.dumps(card))
    checkpoint = torch.load(cu2_checkpoint, weights_only=False)
    del checkpoint["atomzoo_provenance"]["training_range"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    for path in (out, tmp_path / "old.ckpt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExtrapolationWarning)
            model = atomzoo.load(path)
            assert model.training_range is None
            model.predict(cu2(1.0))


def test_the_range_covers_periodic_images_and_pairs_never_seen():
    crystal = bulk("Cu", "fcc", a=3.6)  # one atom per cell: its nearest neighbours are its own images
    z = torch.tensor(crystal.numbers)
    pos = torch.tensor(crystal.positions)
    cell = torch.tensor(np.asarray(crystal.cell))[None]
    pbc = torch.tensor(crystal.pbc)[None]
    found = TrainingRange.of_structures([(z, pos, torch.zeros(1, dtype=torch.long), cell, pbc)])
    assert found.shortest[(29, 29)] == pytest.approx(neighbor_list("d", crystal, 3.0).min(), abs=1e-12)
    assert found.shortest[(29, 29)] == pytest.approx(3.6 / 2**0.5, abs=1e-12)
    # molecules: Cu2 at 2.3 A and O2 at 1.2 A, the two kinds never together
    molecules = [cu2(2.3), Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.2]])]
    batch = torch.tensor([0, 0, 1, 1])
    z = torch.tensor(np.concatenate([m.numbers for m in molecules]))
    pos = torch.tensor(np.concatenate([m.positions for m in molecules]))
    known = TrainingRange.of_structures([(z, pos, batch, None, None)])
    assert known.to_record() == {"radius_A": 10.0, "elements": [8, 29],
                                 "shortest_distance_A": {"O-O": 1.2, "Cu-Cu": 2.3}}  # fmt: skip
    assert TrainingRange.from_record(known.to_record()) == known
    # CuO at 1.8 A: a pair the training never had within 10 A; at 7 A it is beyond a 5 A cutoff
    (finding,) = known.outside(torch.tensor([29, 8]), torch.tensor([[0.0, 0, 0], [1.8, 0, 0]]),
                               torch.zeros(2, dtype=torch.long), cutoff=5.0)  # fmt: skip
    assert known.message([finding]) == ("O-Cu distance 1.80 A in structure 0: no O-Cu pair closer than 10 A in "
                                        "training: the prediction is an extrapolation")  # fmt: skip
    assert known.outside(torch.tensor([29, 8]), torch.tensor([[0.0, 0, 0], [7.0, 0, 0]]),
                         torch.zeros(2, dtype=torch.long), cutoff=5.0) == []  # fmt: skip
    # a slab (pbc T, T, F) has images in x and y only
    slab = Atoms("Cu", positions=[[0, 0, 0]], cell=[2.5, 2.5, 2.0], pbc=[True, True, False])
    found = TrainingRange.of_structures([(torch.tensor([29]), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                                          torch.tensor(np.asarray(slab.cell))[None], torch.tensor(slab.pbc)[None])])
    assert found.shortest[(29, 29)] == pytest.approx(2.5)  # not the 2.0 A of the non-periodic z direction
