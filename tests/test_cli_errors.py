"""Errors a user causes end the output as one short line (issue 19, item 9); --debug shows the traceback.

Runs ``atomzoo.cli.main`` in-process on three typical mistakes and checks what the user sees.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write

from atomzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
QM9 = ["-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
       "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
       "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
       "--model.backbone.init_args.num_interactions", "1", "--trainer.max_steps", "1", "--trainer.logger", "false",
       "--trainer.enable_checkpointing", "false"]  # fmt: skip


def last_lines(capsys, args) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and "Namespace(" not in "\n".join(err)
    assert err[-2] == "(traceback: run again with --debug or ATOMZOO_DEBUG=1)"
    return err


def test_constructor_error_is_the_last_short_line(capsys, cache_dir):
    err = last_lines(capsys, ["fit", *QM9, "--data.targets", "[homo]", "--model.scheduler", "cosin"])
    assert err[-1] == "zoo: error: scheduler='cosin': choose 'cosine', 'plateau' or 'constant' (--model.scheduler)"
    assert len(err) <= 3


def test_integer_target_lists_the_names(capsys, cache_dir):
    err = last_lines(capsys, ["fit", *QM9, "--data.targets", "[7]"])
    assert err[-1].startswith("zoo: error: --data.targets [7]: targets are label names, not column numbers")
    assert "valid names for QM9DataModule: mu, alpha, homo, lumo, gap, r2, zpve, u0, u, h, g, cv" in err[-1]


def test_bad_file_names_file_record_and_key(capsys, tmp_path, cache_dir):
    frames = [Atoms("H2O", positions=np.random.default_rng(i).normal(size=(3, 3))) for i in range(6)]
    for f in frames:
        f.info["energy"] = 1.0
    frames[3].info["energy"] = np.array([1.0, 2.0, 3.0])  # a per-atom column under the energy key
    write(tmp_path / "bad.extxyz", frames)
    args = ["fit", "-c", str(ROOT / "configs/data/ase_file.yaml"), *QM9[2:], "--data.path", str(tmp_path / "bad.extxyz"),
            "--data.forces_key", "null"]  # fmt: skip
    err = last_lines(capsys, args)
    assert err[-1].startswith(f"zoo: error: {tmp_path / 'bad.extxyz'}, record 3: key 'energy' (energy) has shape (3,)")
    with pytest.raises(ValueError, match="record 3"):  # --debug: the exception itself, with its traceback
        main([*args, "--debug"])


def test_empty_test_split_with_test_after_fit_stops_before_training(capsys, tmp_path, cache_dir):
    frames = [Atoms("H2O", positions=np.random.default_rng(i).normal(size=(3, 3))) for i in range(10)]
    for f in frames:
        f.info["energy"] = float(f.positions.sum())
    write(tmp_path / "ok.extxyz", frames)
    args = ["fit", "-c", str(ROOT / "configs/data/ase_file.yaml"), *QM9[2:], "--data.path", str(tmp_path / "ok.extxyz"),
            "--data.forces_key", "null", "--data.num_train", "0.8", "--data.num_val", "0.2", "--test_after_fit", "true",
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    err = last_lines(capsys, args)
    assert err[-1].startswith("zoo: error: --test_after_fit true but the test split is empty (num_train=0.8, num_val=0.2")
    assert not any("Training" in line or "train/loss" in line for line in err)
    assert not list(tmp_path.rglob("*.ckpt"))


def only_line(capsys, args, status: int) -> str:
    """Run ``zoo args``; it must exit with ``status`` and end stderr with one ``zoo: error:`` line (after
    at most the one-line notices ``zoo: ...`` of a run); returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == status
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in err if not (line.startswith("zoo: ") and not line.startswith("zoo: error: "))]
    if status == 1:  # errors of a run also say how to see the traceback
        assert err[0] == "(traceback: run again with --debug or ATOMZOO_DEBUG=1)"
        err = err[1:]
    assert len(err) == 1, err
    assert err[0].startswith("zoo: error: ")
    return err[0]


def test_checkpoint_of_another_objective_names_both_and_the_fix(capsys, tmp_path, cache_dir):
    # issue 31, item 11: a pretraining (SCD) checkpoint given to `zoo test` with the regression config
    import lightning as L

    from atomzoo.backbones import SchNet
    from atomzoo.objectives import SelfConditionedDenoising

    scd = SelfConditionedDenoising(SchNet(width=16, num_filters=16, num_interactions=1, condition_dim=8))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(scd)
    ckpt = tmp_path / "scd.ckpt"
    trainer.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["hyper_parameters"]["_class_path"] = "atomzoo.objectives.SelfConditionedDenoising"  # as zoo fit saves it
    torch.save(checkpoint, ckpt)
    line = only_line(capsys, ["test", *QM9, "--data.targets", "[homo]", "--ckpt_path", str(ckpt)], status=1)
    assert line.startswith(f"zoo: error: --ckpt_path {ckpt} is a SelfConditionedDenoising checkpoint, but the "
                           "configuration's model is Regression")  # fmt: skip
    assert f"--model.init_args.init_from {ckpt}" in line and "leave out the model config" in line


def test_misspelt_option_suggests_the_accepted_one(capsys):
    # issue 31, item 12: difflib over the options of the class the key is given to
    line = only_line(capsys, ["fit", *QM9, "--data.targets", "[homo]", "--data.batchsize", "8"], status=2)
    assert line.startswith("zoo: error: --data.batchsize: QM9DataModule has no option 'batchsize'; did you mean "
                           "--data.batch_size")  # fmt: skip
    line = only_line(capsys, ["fit", *QM9, "--data.targets", "[homo]", "--model.learning_rate", "1e-3"], status=2)
    assert line.startswith("zoo: error: --model.learning_rate: Regression has no option 'learning_rate'")


def test_an_accepted_option_that_fails_is_not_called_misspelt():
    """jsonargparse can reject an option the class does accept (through its base classes' **kwargs):
    the line then gives jsonargparse's reason, never 'did you mean' the very same option."""
    from atomzoo.cli import parse_error_line

    message = ('Parser key "data":\n  Problem with given class_path \'atomzoo.datamodules.QM9DataModule\':\n'
               "    - class_path 'atomzoo.datamodules.QM9DataModule': Option 'num_train' is not accepted\n"
               "    - Expected a <class 'int'>. Got value: many")
    line = parse_error_line(message)
    assert "did you mean --data.num_train" not in line and "Expected a <class 'int'>" in line
    misspelt = parse_error_line(message.replace("'num_train'", "'num_trian'"))
    assert "did you mean --data.num_train" in misspelt


def test_tab_in_yaml_config_names_the_file(capsys, tmp_path):
    config = tmp_path / "tabbed.yaml"
    config.write_text("data:\n\tbatch_size: 8\n")
    line = only_line(capsys, ["fit", *QM9, "-c", str(config)], status=2)
    assert "tabbed.yaml, line 2, column 1" in line and "not tabs" in line


# find_spec, not importorskip: importing mace directly sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for the whole
# process (atomzoo.backbones.mace.import_mace restores it)
@pytest.mark.skipif(importlib.util.find_spec("mace") is None, reason="mace-torch is not installed")
def test_float64_mace_under_32_bit_precision_names_the_precision(capsys, tmp_path, cache_dir):
    # issue 31, item 13: refused at setup, before training, instead of e3nn's "both inputs should have same dtype"
    data = ROOT / "tests" / "data" / "bad_inputs" / "mace-float64" / "data.extxyz"
    args = ["fit", "-c", str(ROOT / "configs/data/ase_file.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
            "--model.backbone", str(ROOT / "configs/backbones/mace.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
            "--model.backbone.init_args.dtype", "float64", "--model.backbone.init_args.hidden_irreps", "8x0e+8x1o",
            "--model.backbone.init_args.max_ell", "1", "--model.backbone.init_args.num_interactions", "1",
            "--data.path", str(data), "--data.allow_unseen_elements", "true", "--trainer.max_steps", "1",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]  # fmt: skip
    line = only_line(capsys, args, status=1)
    assert line == ("zoo: error: MACE was built in float64 (dtype: float64) but --trainer.precision is 32-true: a "
                    "float64 backbone needs --trainer.precision 64-true (or build it with dtype float32)")  # fmt: skip
