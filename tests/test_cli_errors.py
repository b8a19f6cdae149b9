"""Errors a user causes end the output as one short line (issue 19, item 9); --debug shows the traceback.

Runs ``atomzoo.cli.main`` in-process on three typical mistakes and checks what the user sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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
