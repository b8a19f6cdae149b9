"""Named pretrained models (issue 28, items 1-2): atomzoo.pretrained, `zoo models`, names in load / init_from.

The shipped models are the committed files under zoo/models/ (package data); every test here works
offline from a fresh clone. Models of one's own are put in a directory named by $ATOMZOO_MODELS or
--models_dir (tests use a temporary one).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import atomzoo
from atomzoo import model_files, pretrained
from atomzoo.cards import ModelFileError, sha256_file

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "painn64-denoising-qm9-p0"
FULL = "painn64-denoising-qm9-p0-homo-n1000-s0"


@pytest.fixture(autouse=True)
def _no_user_models(monkeypatch):
    monkeypatch.delenv(pretrained.ENV, raising=False)
    model_files.clear_cache()
    yield
    model_files.clear_cache()


def _copy(name: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".card.json"):
        shutil.copy(pretrained.SHIPPED / f"{name}{suffix}", directory / f"{name}{suffix}")
    return directory / f"{name}.safetensors"


def _water():
    from ase.build import molecule

    return molecule("H2O")


def test_shipped_models_are_listed_with_their_cards_hash():
    names = pretrained.list()
    assert BACKBONE in names and FULL in names
    weights = pretrained.path(BACKBONE)
    assert weights.parent == pretrained.SHIPPED
    card = pretrained.card(BACKBONE)
    assert card["sha256"] == sha256_file(weights)
    assert card["backbone"]["class_path"].endswith("PaiNN") and card["objective"].endswith("Denoising")


def test_cards_quote_the_benchmark_results_file():
    """The card's fine-tuning number and command are the results file's (not typed in)."""
    card = pretrained.card(BACKBONE)
    rows = list(csv.DictReader(open(ROOT / card["benchmark"]["results"], newline="")))
    quoted = card["benchmark"]["finetune"][0]
    row = next(r for r in rows if r["cell"] == quoted["cell"] and r["metric"] == quoted["metric"] and not r["step"])
    assert quoted["value"] == pytest.approx(float(row["value"]))
    scratch = next(r for r in rows if r["cell"] == quoted["scratch_cell"] and r["metric"] == quoted["metric"])
    assert quoted["scratch_value"] == pytest.approx(float(scratch["value"]))
    assert quoted["command"] in {r["command"] for r in rows if r["cell"] == quoted["cell"]}
    assert "--model.init_from" in quoted["command"] and quoted["init_from"] == card["source_checkpoint"]


def test_zoo_models_prints_name_backbone_objective_data_size_numbers_and_hash(capsys):
    from atomzoo.cli import main

    main(["models"])
    out = capsys.readouterr().out
    card = pretrained.card(BACKBONE)
    for text in (BACKBONE, FULL, "PaiNN(width 64", "Denoising", "QM9DataModule", " MB", "162.1", "163.3",
                 card["sha256"]):  # fmt: skip
        assert text in out, text


def test_an_absent_name_says_which_files_to_put_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.ENV, str(tmp_path))
    with pytest.raises(pretrained.ModelNotFound) as err:
        pretrained.path("scd-et-pcq")
    message = str(err.value)
    assert "\n" not in message
    assert "scd-et-pcq.safetensors and scd-et-pcq.card.json" in message and str(tmp_path) in message
    with pytest.raises(pretrained.ModelNotFound, match=r"Ty-Perez/ct-scd-pcq; convert it once with `python -m "
                       rf"atomzoo.convert scd last.ckpt {tmp_path}/ct-scd-pcq.safetensors`"):  # fmt: skip
        pretrained.path("ct-scd-pcq")
    with pytest.raises(pretrained.ModelNotFound, match=r"python -m atomzoo.convert mace FILE.model .*mace-mp-0-medium"):
        pretrained.path("mace-mp-0-medium")
    with pytest.raises(FileNotFoundError, match="no model named 'nope'"):
        atomzoo.load("nope")
    from atomzoo.cli import main

    with pytest.raises(SystemExit):
        main(["models", "nope"])
    assert "no model named 'nope'" in capsys.readouterr().err


def test_models_dir_and_the_environment_variable_are_searched_first(tmp_path, monkeypatch):
    own = _copy(BACKBONE, tmp_path / "mine")
    assert pretrained.path(BACKBONE, models_dir=tmp_path / "mine") == own
    monkeypatch.setenv(pretrained.ENV, str(tmp_path / "mine"))
    assert pretrained.path(BACKBONE) == own
    renamed = tmp_path / "mine" / "my-model.safetensors"
    own.rename(renamed)
    (tmp_path / "mine" / f"{BACKBONE}.card.json").rename(tmp_path / "mine" / "my-model.card.json")
    assert "my-model" in pretrained.list()
    assert pretrained.path(BACKBONE).parent == pretrained.SHIPPED


def test_a_modified_file_is_refused_in_one_line(tmp_path, monkeypatch):
    weights = _copy(BACKBONE, tmp_path)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte of the last tensor
    weights.write_bytes(bytes(data))
    monkeypatch.setenv(pretrained.ENV, str(tmp_path))
    with pytest.raises(ModelFileError, match="does not match its card") as err:
        model_files.build_backbone(BACKBONE)
    assert "\n" not in str(err.value)


def test_load_by_name_predicts_and_a_backbone_name_points_to_init_from():
    model = atomzoo.load(FULL)
    assert model.targets == ["homo"] and model.units == ["eV"]
    homo = model.predict(_water())["homo"]
    assert -12.0 < homo < -4.0  # eV: a HOMO energy, not a normalised number
    with pytest.raises(ModelFileError, match="backbone-only export.*init_from"):
        atomzoo.load(BACKBONE)


def test_init_from_a_name_loads_the_shipped_backbone():
    from atomzoo.backbones import PaiNN
    from atomzoo.objectives import Regression

    args = pretrained.card(BACKBONE)["backbone"]["init_args"]
    objective = Regression(PaiNN(**args), targets=["homo"], init_from=BACKBONE)
    reference = model_files.build_backbone(BACKBONE)
    for key, value in reference.state_dict().items():
        assert torch.equal(objective.backbone.state_dict()[key], value), key


def test_a_path_is_never_taken_for_a_name(tmp_path):
    assert pretrained.resolve(tmp_path / "x.ckpt") == tmp_path / "x.ckpt"
    assert not pretrained.is_name("runs/x/last.ckpt") and not pretrained.is_name("model.safetensors")
    assert pretrained.is_name(BACKBONE)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_files.read(tmp_path / "missing.ckpt")


def test_shipped_files_are_package_data_and_small():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"models/*.safetensors", "models/*.card.json"' in text
    total = sum(p.stat().st_size for p in pretrained.SHIPPED.iterdir())
    assert total < 10e6, f"shipped models are {total / 1e6:.1f} MB: put large ones in $ATOMZOO_MODELS"
    for card in pretrained.SHIPPED.glob("*.card.json"):
        assert json.loads(card.read_text())["name"] == card.name[: -len(".card.json")]


def test_docs_list_every_shipped_model_with_its_cards_numbers():
    text = (ROOT / "docs" / "models.md").read_text()
    for name in pretrained.list():
        card = pretrained.card(name)
        assert f"`{name}`" in text and card["sha256"] in text, name
        for row in card["benchmark"]["finetune"]:
            assert f"{row['value']:.1f} meV" in text and f"{row['scratch_value']:.1f} meV" in text, name


def test_zoo_models_dir_option_prepends_the_directory(tmp_path, monkeypatch):
    import os

    from atomzoo.cli import _models_dir_option

    monkeypatch.setenv(pretrained.ENV, "/elsewhere")
    rest = _models_dir_option(["fit", "--models_dir", str(tmp_path), "--model.init_from", BACKBONE])
    assert rest == ["fit", "--model.init_from", BACKBONE]
    assert os.environ[pretrained.ENV] == f"{tmp_path}{os.pathsep}/elsewhere"
    with pytest.raises(SystemExit, match="--models_dir '/nope' is not a directory"):
        _models_dir_option(["fit", "--models_dir=/nope"])


def test_atomzoo_pretrained_after_a_plain_import():
    import subprocess
    import sys

    code = "import atomzoo; print(atomzoo.pretrained.list())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert BACKBONE in out


def test_export_script_keeps_an_unchanged_card(tmp_path):
    """Re-running benchmarks/export_pretrained.py leaves a card whose weights and numbers did not change."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_pretrained", ROOT / "benchmarks" / "export_pretrained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = _copy(BACKBONE, tmp_path)
    before = (tmp_path / f"{BACKBONE}.card.json").read_text()
    card = json.loads(before)
    card["created_utc"] = "2000-01-01T00:00:00+00:00"
    (tmp_path / f"{BACKBONE}.card.json").write_text(json.dumps(card))
    module._add_to_card(weights, previous=before, fields={})
    assert (tmp_path / f"{BACKBONE}.card.json").read_text() == before
    module._add_to_card(weights, previous=before, fields={"description": "changed"})
    assert json.loads((tmp_path / f"{BACKBONE}.card.json").read_text())["description"] == "changed"
    assert module.model_name("pretrain/painn64/scd/c0/p0") == "painn64-scd-qm9-p0"
    assert module.model_name("pretrain/painn64/denoising/c0.5/p1") == "painn64-denoising-qm9-c0.5-p1"
    # what is shipped: the clean cells of the four objectives (not ET, not corrupted, not the ablations);
    # --best keeps the seed whose fine-tuning reached the lowest VALIDATION MAE (the test numbers would pick p0)
    finished = [f"pretrain/{b}/{o}/{c}/p{k}" for b in ("painn64", "et64") for o in ("scd", "scd_frozen_mask")
                for c in ("c0", "c30") for k in (0, 1)]
    assert module.select_cells(finished, {}) == ["pretrain/painn64/scd/c0/p0", "pretrain/painn64/scd/c0/p1"]
    cells = {"finetune/painn64/scd/c0/p0/homo/n1000/finetune/s0": {"metrics": {"test/homo_mae_meV": 150.0},
                                                                  "best_val": {"val/homo_mae_meV": 170.0}},
             "finetune/painn64/scd/c0/p1/homo/n1000/finetune/s1": {"metrics": {"test/homo_mae_meV": 160.0},
                                                                  "best_val": {"val/homo_mae_meV": 165.0}}}
    assert module.select_cells(finished, cells, best=True) == ["pretrain/painn64/scd/c0/p1"]
    assert module.best_validation("pretrain/painn64/scd/c0/p0", cells) == 170.0
    assert module.select_cells(finished, {}, best=True) == ["pretrain/painn64/scd/c0/p0", "pretrain/painn64/scd/c0/p1"]
