"""Files written before the move to the ``atomzoo`` namespace (version 0.1) still load, and nothing is aliased.

``tests/data/legacy_v0_1/`` holds a SchNet HOMO regression checkpoint written by ``zoo fit`` at
version 0.1 (class paths ``objectives.Regression``, ``backbones.SchNet`` in its hyperparameters),
its safetensors export (metadata ``class_path: backbones.SchNet``, a ``.json`` sidecar, no card), and
the predictions that version made on 8 QM9 test molecules. The old class paths are translated by
the one reader of model files (:mod:`atomzoo.model_files`); no import hook serves old module names.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from atomzoo import model_files
from atomzoo.backbones import SchNet
from atomzoo.cards import card_path
from atomzoo.export import export_backbone, export_model
from atomzoo.model_files import build_backbone, build_objective, load_into_backbone, read, translate_class_path
from atomzoo.objectives import Regression

ROOT = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).parent / "data" / "legacy_v0_1"


def reference_batch():
    ref = np.load(LEGACY / "reference_batch.npz")
    batch = torch.from_numpy(ref["batch"])
    data = [Data(z=torch.from_numpy(ref["z"])[batch == g], pos=torch.from_numpy(ref["pos"])[batch == g])
            for g in range(int(batch.max()) + 1)]
    return Batch.from_data_list(data), torch.from_numpy(ref["homo"])


def test_old_checkpoint_loads_and_predicts_the_same():
    with pytest.warns(FutureWarning, match="'objectives.Regression' is now 'atomzoo.objectives.Regression'"):
        model = Regression.load_from_checkpoint(LEGACY / "schnet_homo.ckpt")
    assert type(model.backbone) is SchNet  # the atomzoo class itself
    model.eval()
    batch, expected = reference_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected, rtol=0, atol=1e-6)


def test_old_export_builds_the_same_backbone():
    with pytest.warns(FutureWarning, match="'backbones.SchNet' is now 'atomzoo.backbones.SchNet'"):
        backbone = build_backbone(LEGACY / "schnet_homo.safetensors")
    assert type(backbone) is SchNet
    model = Regression.load_from_checkpoint(LEGACY / "schnet_homo.ckpt")
    for name, tensor in model.backbone.state_dict().items():
        if name == "mask_embedding":  # not in 0.1 files: each load keeps its own freshly initialised token
            continue
        assert torch.equal(backbone.state_dict()[name], tensor), name
    # and init_from with an old export into a new-path backbone (built with the file's arguments, as read)
    fresh = SchNet(**read(LEGACY / "schnet_homo.safetensors").backbone["init_args"])
    load_into_backbone(fresh, LEGACY / "schnet_homo.safetensors")
    assert torch.equal(fresh.embedding.weight, model.backbone.embedding.weight)


def test_old_checkpoint_serves_atomzoo_load_with_a_warning():
    """atomzoo.load reads the 0.1 checkpoint through the same reader: same predictions, and no record
    of the training elements (0.1 wrote none), so it says that the elements are not checked."""
    import atomzoo

    with pytest.warns(UserWarning, match="does not record the elements"):
        loaded = atomzoo.load(LEGACY / "schnet_homo.ckpt")
    assert loaded.elements is None
    from ase import Atoms

    batch, expected = reference_batch()
    structures = [Atoms(numbers=batch.z[batch.batch == g].numpy(), positions=batch.pos[batch.batch == g].numpy())
                  for g in range(batch.num_graphs)]  # fmt: skip
    predicted = torch.tensor([row["homo"] for row in loaded.predict(structures)], dtype=expected.dtype)
    torch.testing.assert_close(predicted, expected.reshape(-1), rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the renames, checked above
def test_an_old_checkpoint_exports_to_the_current_format_and_predicts_the_same(tmp_path):
    """The one export command on the 0.1 checkpoint: a full export and a backbone export, each with a
    card; the card's elements come from the provenance record (0.1 has none: null, with a warning)."""
    with pytest.warns(UserWarning, match="no record of the elements.*--elements"):
        card = export_model(LEGACY / "schnet_homo.ckpt", tmp_path / "homo.safetensors")
    assert json.loads(card.read_text())["elements"] is None
    export_model(LEGACY / "schnet_homo.ckpt", tmp_path / "given.safetensors", elements=[1, 6, 7, 8, 9])
    assert read(tmp_path / "given.safetensors").elements == [1, 6, 7, 8, 9]
    full = read(tmp_path / "homo.safetensors")
    assert full.kind == model_files.FULL_MODEL and full.renamed == {}  # written with the new names
    assert full.objective == "atomzoo.objectives.regression.Regression"
    batch, expected = reference_batch()
    with torch.no_grad():
        torch.testing.assert_close(build_objective(full)(batch), expected, rtol=0, atol=1e-6)
    with pytest.warns(UserWarning, match="no record of the elements"):
        export_backbone(LEGACY / "schnet_homo.ckpt", tmp_path / "backbone.safetensors")
    assert not (tmp_path / "backbone.json").exists() and card_path(tmp_path / "backbone.safetensors").is_file()
    backbone = read(tmp_path / "backbone.safetensors")
    assert backbone.kind == model_files.BACKBONE and backbone.card["model_format"] == "atomzoo-backbone/1"
    rebuilt = build_backbone(tmp_path / "backbone.safetensors")
    legacy = build_backbone(LEGACY / "schnet_homo.safetensors")
    assert type(rebuilt) is SchNet
    for name, tensor in legacy.state_dict().items():
        if name != "mask_embedding":  # not in 0.1 files: each build keeps its own initial token
            assert torch.equal(rebuilt.state_dict()[name], tensor), name


def test_zoo_validate_with_the_old_checkpoint(cache_dir, tmp_path):
    """`zoo validate --ckpt_path` on the 0.1 checkpoint without a model config: the CLI takes the model
    from the checkpoint's (translated) hyperparameters and Lightning restores its weights."""
    from atomzoo.cli import run

    with pytest.warns(FutureWarning, match="'backbones.SchNet' is now 'atomzoo.backbones.SchNet'"):
        cli = run(["validate", "--ckpt_path", str(LEGACY / "schnet_homo.ckpt"),
                   "-c", str(ROOT / "configs/data/qm9.yaml"), "--data.targets", "[homo]", "--data.cache_dir", str(cache_dir), "--trainer.limit_val_batches", "2",
                   "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert type(cli.model.backbone) is SchNet
    reference = Regression.load_from_checkpoint(LEGACY / "schnet_homo.ckpt")
    for name, tensor in reference.state_dict().items():
        if "mask_embedding" not in name:
            assert torch.equal(cli.model.state_dict()[name], tensor), name
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_old_class_paths_in_configs_work_with_a_warning(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("class_path: backbones.SchNet\ninit_args: {width: 8, num_filters: 8, num_interactions: 1}\n")
    code = (
        "import warnings, sys; warnings.simplefilter('error', FutureWarning)\n"
        "from atomzoo.cli import run\n"
        f"run(['fit', '--print_config', '--model', 'atomzoo.objectives.Regression', '--model.backbone', r'{config}',"
        " '--data', 'atomzoo.datamodules.QM9DataModule'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    # warnings-as-errors: the old path must raise the FutureWarning that names the new path
    assert "'backbones.SchNet' is now 'atomzoo.backbones.SchNet'" in result.stderr, result.stderr[-2000:]
    code = code.replace("warnings.simplefilter('error', FutureWarning)", "pass")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: atomzoo.backbones.SchNet" in result.stdout, result.stdout[-2000:]
    # and in a -c file (the whole config), the model's own class path too
    whole = tmp_path / "whole.yaml"
    whole.write_text("model:\n  class_path: objectives.Regression\n  init_args:\n"
                     f"    backbone: {{class_path: backbones.SchNet, init_args: {{width: 8}}}}\n")  # fmt: skip
    code = ("from atomzoo.cli import run\n"
            f"run(['fit', '--print_config', '-c', r'{whole}', '--data', 'atomzoo.datamodules.QM9DataModule'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'objectives.Regression' is now 'atomzoo.objectives.Regression'" in result.stderr, result.stderr[-2000:]
    assert "class_path: atomzoo.objectives.Regression" in result.stdout
    assert "class_path: atomzoo.backbones.SchNet" in result.stdout


def test_new_class_path_mapping():
    assert translate_class_path("backbones.SchNet") == "atomzoo.backbones.SchNet"
    assert translate_class_path("backbones.schnet.SchNet") == "atomzoo.backbones.schnet.SchNet"
    assert translate_class_path("zoo.graph.Graph") == "atomzoo.nn.graph.Graph"
    assert translate_class_path("zoo.Thing") == "atomzoo.Thing"
    assert translate_class_path("lightning.pytorch.Trainer") == "lightning.pytorch.Trainer"
    assert translate_class_path("atomzoo.backbones.SchNet") == "atomzoo.backbones.SchNet"


def test_an_unrelated_top_level_package_is_not_shadowed(tmp_path):
    """Another project's ``backbones`` / ``zoo`` packages import as themselves, and a class path into
    them is theirs, not translated to atomzoo."""
    for name in ("backbones", "zoo"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"MARK = 'someone else'\nclass Net: pass\n")
    code = ("import atomzoo, backbones, zoo; from atomzoo.model_files import resolve_class\n"
            "print(backbones.MARK, zoo.MARK, resolve_class('backbones.Net') is backbones.Net,"
            " resolve_class('zoo.Net') is zoo.Net)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "someone else someone else True True", result.stderr[-2000:]


def test_nothing_installs_the_old_top_level_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import importlib.machinery

        for name in ("backbones", "objectives", "datamodules", "zoo"):
            spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if "site-packages" in p])
            assert spec is None, f"{name} is installed as a top-level package: {spec.origin}"


def test_no_import_hook_and_no_alias_from_the_repository_root():
    """From the repository root ``import backbones`` finds the plain folder: a separate copy that atomzoo
    never uses (nothing is aliased and no finder is on ``sys.meta_path``), and the loaders build
    ``atomzoo.backbones`` classes even for files that name ``backbones.SchNet``."""
    code = (
        "import sys, warnings; warnings.simplefilter('ignore', FutureWarning)\n"
        "import atomzoo, atomzoo.backbones, atomzoo.objectives, atomzoo.cli\n"
        "hooks = [f for f in sys.meta_path if 'atomzoo' in type(f).__module__]\n"
        "import backbones\n"
        "from atomzoo.model_files import build_backbone, resolve_class\n"
        "from atomzoo.objectives import Regression\n"
        "model = Regression.load_from_checkpoint('tests/data/legacy_v0_1/schnet_homo.ckpt')\n"
        "built = build_backbone('tests/data/legacy_v0_1/schnet_homo.safetensors')\n"
        "print(len(hooks), backbones is atomzoo.backbones, backbones.Backbone is atomzoo.backbones.Backbone,\n"
        "      resolve_class('backbones.SchNet') is atomzoo.backbones.SchNet,\n"
        "      type(model.backbone) is atomzoo.backbones.SchNet, isinstance(model.backbone, backbones.Backbone),\n"
        "      type(built) is atomzoo.backbones.SchNet)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "0 False False True True False True", result.stderr[-2000:]
