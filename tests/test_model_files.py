"""atomzoo.model_files, the one reader of checkpoints and exports: the record of each kind of file,
the cache, and one-line errors naming the file and the fix. (Old class paths and the export of an old
checkpoint: test_legacy_paths.py; one read per fit: test_finetune.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from atomzoo import model_files
from atomzoo.backbones import SchNet
from atomzoo.cards import ModelFileError
from atomzoo.export import main as export_main
from atomzoo.model_files import build_backbone, build_objective, read, read_checkpoint, resolve_class

LEGACY = Path(__file__).parent / "data" / "legacy_v0_1"


# the 0.1 files' renames give FutureWarnings (checked in test_legacy_paths.py)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_a_checkpoint_is_read_into_one_record():
    ckpt = read(LEGACY / "schnet_homo.ckpt")
    assert ckpt.kind == model_files.CHECKPOINT and ckpt.objective == "atomzoo.objectives.Regression"
    assert ckpt.backbone["class_path"] == "atomzoo.backbones.SchNet" and ckpt.backbone["init_args_complete"]
    assert ckpt.hyperparameters["targets"] == ["homo"] and ckpt.target_units == ["eV"]
    assert ckpt.provenance is None and ckpt.elements is None  # 0.1 recorded neither
    assert ckpt.checkpoint["hyper_parameters"] is ckpt.hyperparameters and "optimizer_states" in ckpt.checkpoint
    weights = ckpt.backbone_weights
    assert set(weights) == {k.removeprefix("backbone.") for k in ckpt.state_dict if k.startswith("backbone.")}
    export = read(LEGACY / "schnet_homo.safetensors")  # the 0.1 backbone export: no card, a .json sidecar
    assert export.kind == model_files.BACKBONE and export.card is None and export.hyperparameters == {}
    assert export.backbone["init_args"] == ckpt.backbone["init_args"]
    assert all(torch.equal(export.backbone_weights[k], v) for k, v in weights.items())


def test_reading_is_cached_per_file_version(tmp_path):
    path = tmp_path / "m.ckpt"
    path.write_bytes((LEGACY / "schnet_homo.ckpt").read_bytes())
    first = read(path)
    assert read(str(path)) is first and read(tmp_path / "." / "m.ckpt") is first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file changed: read again
    second = read(path)
    assert second is not first and torch.equal(second.state_dict["mean"], first.state_dict["mean"])


def test_user_errors_are_one_line_naming_the_file_and_the_fix(tmp_path):
    def one_line(excinfo, *parts):
        message = str(excinfo.value)
        assert "\n" not in message and all(part in message for part in parts), message

    with pytest.raises(FileNotFoundError) as err:
        read(tmp_path / "missing.ckpt")
    one_line(err, "missing.ckpt", "does not exist")
    with pytest.raises(ModelFileError) as err:
        read(tmp_path)
    one_line(err, str(tmp_path), "is a directory", "last.ckpt")
    with pytest.raises(ModelFileError) as err:
        read_checkpoint(LEGACY / "schnet_homo.safetensors", "zoo test --ckpt_path")
    one_line(err, "schnet_homo.safetensors", "backbone export, not a Lightning checkpoint", "zoo test --ckpt_path")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError) as err:
        read(tmp_path / "junk.ckpt")
    one_line(err, "junk.ckpt", "cannot be read as a PyTorch checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(ModelFileError) as err:
        read(tmp_path / "other.ckpt")
    one_line(err, "other.ckpt", "not a Lightning checkpoint")
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ModelFileError) as err:
        read(tmp_path / "foreign.ckpt")
    one_line(err, "foreign.ckpt", "not a checkpoint of an atomzoo objective")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError) as err:
        read(tmp_path / "plain.safetensors")
    one_line(err, "plain.safetensors", "not an atomzoo model file", "python -m atomzoo.export")
    with pytest.raises(ModelFileError) as err:
        resolve_class("atomzoo.backbones.NoSuchNet")
    one_line(err, "atomzoo.backbones.NoSuchNet", "cannot import", "install")
    with pytest.raises(ModelFileError) as err:
        resolve_class("SchNet")
    one_line(err, "'SchNet' is not a class path")


def test_a_pretraining_checkpoint_cannot_predict(tmp_path):
    """atomzoo.load / export need property heads: a Denoising checkpoint is refused, naming the way to
    use its backbone, while its backbone still serves init_from."""
    import atomzoo
    from atomzoo.objectives import Denoising

    backbone = {"class_path": "atomzoo.backbones.SchNet",
                "init_args": {"width": 8, "num_filters": 8, "num_interactions": 1, "num_rbf": 4, "cutoff": 4.0}}
    model = Denoising(resolve_class(backbone["class_path"])(**backbone["init_args"]))
    torch.save({"state_dict": model.state_dict(),
                "hyper_parameters": {"_class_path": "atomzoo.objectives.Denoising", "backbone": backbone}},
               tmp_path / "denoising.ckpt")  # fmt: skip
    with pytest.raises(ModelFileError, match="denoising.ckpt: a atomzoo.objectives.Denoising checkpoint has no "
                       "property heads.*--backbone-only"):  # fmt: skip
        atomzoo.load(tmp_path / "denoising.ckpt")
    rebuilt = build_backbone(tmp_path / "denoising.ckpt")
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.backbone.state_dict().items())


def test_commands_report_a_wrong_file_in_one_line(tmp_path, capsys):
    from atomzoo.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["test", "--ckpt_path", str(LEGACY / "schnet_homo.safetensors"),
              "--data", "atomzoo.datamodules.QM9DataModule"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("zoo: error:") and "schnet_homo.safetensors is a backbone export" in err, err
    with pytest.raises(SystemExit) as exit_:
        export_main([str(LEGACY / "schnet_homo.safetensors"), str(tmp_path / "x.safetensors")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m atomzoo.export: error:") and ".ckpt" in err[0], err


def test_the_loaders_use_only_atomzoo_classes():
    """Every class a file names is resolved to the atomzoo class: isinstance checks hold."""
    model = build_objective(read(LEGACY / "schnet_homo.ckpt"))
    assert type(model.backbone) is SchNet and resolve_class("backbones.SchNet") is SchNet
    batch = Batch.from_data_list([Data(z=torch.tensor([6, 1, 1, 1, 1]), pos=torch.from_numpy(np.eye(5, 3)).float())])
    assert torch.isfinite(model(batch)).all()
