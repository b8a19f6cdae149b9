"""Files written before the move to the ``atomzoo`` namespace (version 0.1) still load.

``tests/data/legacy_v0_1/`` holds a SchNet HOMO regression checkpoint written by ``zoo fit`` at
version 0.1 (class paths ``objectives.Regression``, ``backbones.SchNet`` in its hyperparameters),
its safetensors export (metadata ``class_path: backbones.SchNet``), and the predictions that
version made on 8 QM9 test molecules.
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

from atomzoo._legacy import new_class_path
from atomzoo.backbones import SchNet
from atomzoo.objectives import Regression
from atomzoo.objectives.export import build_backbone, load_into_backbone

LEGACY = Path(__file__).parent / "data" / "legacy_v0_1"


def reference_batch():
    ref = np.load(LEGACY / "reference_batch.npz")
    batch = torch.from_numpy(ref["batch"])
    data = [Data(z=torch.from_numpy(ref["z"])[batch == g], pos=torch.from_numpy(ref["pos"])[batch == g])
            for g in range(int(batch.max()) + 1)]
    return Batch.from_data_list(data), torch.from_numpy(ref["homo"])


def test_old_checkpoint_loads_and_predicts_the_same():
    with pytest.warns(FutureWarning, match="module paths from before atomzoo 0.2"):
        model = Regression.load_from_checkpoint(LEGACY / "schnet_homo.ckpt")
    assert type(model.backbone) is SchNet  # the same class object, not a copy under the old name
    model.eval()
    batch, expected = reference_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected, rtol=0, atol=1e-6)


def test_old_export_builds_the_same_backbone():
    backbone = build_backbone(LEGACY / "schnet_homo.safetensors")
    assert type(backbone) is SchNet
    model = Regression.load_from_checkpoint(LEGACY / "schnet_homo.ckpt")
    for name, tensor in model.backbone.state_dict().items():
        if name == "mask_embedding":  # not in 0.1 files: each load keeps its own freshly initialised token
            continue
        assert torch.equal(backbone.state_dict()[name], tensor), name
    # and init_from with an old export into a new-path backbone
    fresh = SchNet(**json.loads((LEGACY / "schnet_homo.json").read_text())["init_args"])
    load_into_backbone(fresh, LEGACY / "schnet_homo.safetensors")
    assert torch.equal(fresh.embedding.weight, model.backbone.embedding.weight)


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
    assert "'backbones' is now 'atomzoo.backbones'" in result.stderr, result.stderr[-2000:]
    code = code.replace("warnings.simplefilter('error', FutureWarning)", "pass")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "atomzoo.backbones.SchNet" in result.stdout or "backbones.SchNet" in result.stdout


def test_new_class_path_mapping():
    assert new_class_path("backbones.SchNet") == "atomzoo.backbones.SchNet"
    assert new_class_path("zoo.graph.Graph") == "atomzoo.nn.graph.Graph"
    assert new_class_path("zoo.Thing") == "atomzoo.Thing"
    assert new_class_path("lightning.pytorch.Trainer") == "lightning.pytorch.Trainer"
    assert new_class_path("atomzoo.backbones.SchNet") == "atomzoo.backbones.SchNet"


def test_an_unrelated_top_level_package_is_not_shadowed(tmp_path):
    (tmp_path / "backbones").mkdir()
    (tmp_path / "backbones" / "__init__.py").write_text("MARK = 'someone else'\n")
    code = "import atomzoo, backbones; print(backbones.MARK)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "someone else", result.stderr[-2000:]


def test_nothing_installs_the_old_top_level_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import importlib.machinery

        for name in ("backbones", "objectives", "datamodules", "zoo"):
            spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if "site-packages" in p])
            assert spec is None, f"{name} is installed as a top-level package: {spec.origin}"


def test_old_module_names_are_the_same_modules_not_copies():
    import importlib

    import atomzoo.backbones
    import atomzoo.nn.graph

    # (the FutureWarning itself is checked in a fresh interpreter above: here an earlier test of the
    # session may have imported the old names already)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = importlib.import_module("backbones")
        assert old is atomzoo.backbones and old.SchNet is SchNet  # isinstance checks keep holding
        assert importlib.import_module("backbones.schnet").SchNet is SchNet
        assert importlib.import_module("zoo.graph") is atomzoo.nn.graph
