"""Checkpoint provenance (issue 19, item 2): what a model's numbers depend on is recorded in its
checkpoint and compared on resume, test/validate/predict and init_from; fine-tuning keeps working."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomzoo.cli import run
from atomzoo.model_files import read
from atomzoo.objectives.provenance import KEY, ProvenanceMismatch

ROOT = Path(__file__).resolve().parents[1]
PROPS = ROOT / "tests/data/bad_inputs/resume-changed-target/props.extxyz"


def args(tmp_path, target, *extra, cutoff="5.0"):
    return ["-c", str(ROOT / "configs/data/ase_file.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
            "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
            "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
            "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.cutoff", cutoff,
            "--data.path", str(PROPS), "--data.energy_key", "null", "--data.forces_key", "null",
            "--data.property_keys", "[propA,propB]", "--data.targets", f"[{target}]", "--data.num_train", "0.6",
            "--data.num_val", "0.2", "--data.batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    run(["fit", *args(tmp, "propA")])
    ckpt = next(tmp.rglob("last.ckpt"))
    return tmp, ckpt


def test_checkpoint_records_targets_units_statistics_elements_cutoff(trained):
    _, ckpt = trained
    rec = torch.load(ckpt, map_location="cpu", weights_only=False)[KEY]
    assert read(ckpt).provenance == rec  # the one reader's record is the checkpoint's
    assert read(ckpt).elements == [1, 6, 7, 8]  # what a model card's `elements` is taken from
    assert rec["targets"] == ["propA"] and rec["cutoff"] == 5.0 and rec["elements"] == [1, 6, 7, 8]
    mean, std = rec["label_stats"]["propA"]
    assert mean == pytest.approx(1.0, abs=0.1) and 0.01 < std < 0.5
    assert rec["data_units"]["positions"] == "A" and rec["model"]["standardize"] is True


def test_resume_or_test_with_another_target_is_refused(trained, tmp_path):
    _, ckpt = trained
    with pytest.raises(ProvenanceMismatch, match=r"targets: checkpoint \['propA'\], now \['propB'\].*drop --ckpt_path.*"
                       r"--model.init_args.init_from"):
        run(["fit", *args(tmp_path, "propB", "--ckpt_path", str(ckpt), "--trainer.max_steps", "4")])
    with pytest.raises(ProvenanceMismatch, match=r"`test` run uses: targets: checkpoint \['propA'\], now \['propB'\]"):
        run(["test", *args(tmp_path, "propB", "--ckpt_path", str(ckpt))])
    # Lightning rebuilds the model from the checkpoint's hyperparameters: a different backbone setting is refused
    with pytest.raises(ValueError, match=r"--model.init_args.backbone.init_args.cutoff is 4.0 but the checkpoint's is 5.0"):
        run(["validate", *args(tmp_path, "propA", "--ckpt_path", str(ckpt), cutoff="4.0")])
    with pytest.raises(ValueError, match=r"--model.init_args.loss is 'mse' but the checkpoint's is 'l1'"):
        run(["test", *args(tmp_path, "propA", "--ckpt_path", str(ckpt), "--model.init_args.loss", "mse")])
    with pytest.raises(ProvenanceMismatch, match=r"label_stats\['propA'\]: checkpoint \[.*\], now \["):  # other training split
        run(["fit", *args(tmp_path, "propA", "--ckpt_path", str(ckpt), "--trainer.max_steps", "4", "--data.split_seed", "3")])


def test_same_settings_resume_and_test_work_and_finetuning_from_it_works(trained, tmp_path):
    _, ckpt = trained
    run(["fit", *args(tmp_path / "resume", "propA", "--ckpt_path", str(ckpt), "--trainer.max_steps", "3")])
    tested = run(["test", *args(tmp_path / "test", "propA", "--ckpt_path", str(ckpt))])
    assert "test/propA_mae_" in " ".join(tested.trainer.callback_metrics)
    # fine-tuning: another target by design, from the backbone only
    tuned = run(["fit", *args(tmp_path / "ft", "propB", "--model.init_args.init_from", str(ckpt))])
    assert float(tuned.model.mean[0]) == pytest.approx(1017, rel=0.1)  # propB's own statistics
    with pytest.raises(ProvenanceMismatch, match=r"init_from=.*cutoff: checkpoint 5.0, now 4.0"):
        run(["fit", *args(tmp_path / "ft2", "propB", "--model.init_args.init_from", str(ckpt), cutoff="4.0")])


def test_checkpoints_with_atom_references_open_with_weights_only(qm9, tmp_path):
    """QM9 U0 (atom reference energies) through `--test_after_fit`: Lightning reopens the best checkpoint
    with torch.load(weights_only=True), which refuses numpy objects; the record holds plain numbers."""
    cli = run(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
               "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
               "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
               "--model.backbone.init_args.num_interactions", "1", "--data.targets", "[u0]",
               "--data.cache_dir", str(qm9.cache_dir), "--data.train_size", "16", "--data.batch_size", "8",
               "--data.eval_batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
               "--trainer.limit_test_batches", "2", "--test_after_fit", "true", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
               "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert "test/u0_mae_meV" in cli.trainer.callback_metrics
    ckpt = next(tmp_path.rglob("last.ckpt"))
    record = torch.load(ckpt, map_location="cpu", weights_only=True)[KEY]
    assert len(record["atomref"]["u0"]) > 9 and all(type(v) is float for v in record["atomref"]["u0"])
