"""Fine-tuning and probing: init_from loads exactly the pretrained backbone, mismatches fail clearly,
safetensors export round-trips (Python and CLI-entry), freeze_backbone, auxiliary denoising, and a
fit with init_from reads its file once."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from atomzoo.backbones import PaiNN, SchNet
from atomzoo.datamodules import QM9DataModule
from atomzoo.objectives import JEPA, Denoising, Regression, SelfConditionedDenoising
from atomzoo import model_files
from atomzoo.cards import card_path
from atomzoo.export import export_backbone, main
from atomzoo.model_files import build_backbone, read

ROOT = Path(__file__).resolve().parents[1]


def tiny_schnet(width: int = 32):
    return SchNet(width=width, num_filters=32, num_interactions=2, num_rbf=16, cutoff=5.0)


@pytest.fixture(scope="module")
def dm(cache_dir):
    data = QM9DataModule(targets=["homo"], train_size=32, batch_size=16, cache_dir=str(cache_dir))
    data.prepare_data()
    return data


@pytest.fixture(scope="module")
def pretrained(dm, tmp_path_factory):
    """A Denoising run of 2 steps, saved as a Lightning checkpoint: (checkpoint path, trained model)."""
    torch.manual_seed(0)
    model = Denoising(tiny_schnet(), warmup_steps=1, lr=1e-2)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("pretrain") / "denoising.ckpt"
    trainer.save_checkpoint(path)
    return path, model


def test_init_from_checkpoint_loads_backbone_only(pretrained):
    path, source = pretrained
    fresh = tiny_schnet()
    model = Regression(tiny_schnet(), targets=["homo"], init_from=str(path))
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
        # and they are not the values a fresh initialisation gives
    assert not torch.equal(model.backbone.embedding.weight, fresh.embedding.weight)
    # weights really moved during pretraining, so equality above is meaningful
    assert "head.head.edge.0.weight" in {k.removeprefix("") for k in source.state_dict()}


def test_init_from_any_objective_including_jepa(tmp_path):
    torch.manual_seed(0)
    jepa = JEPA(tiny_schnet())
    with torch.no_grad():
        for p in jepa.backbone.parameters():
            p.add_(0.5)  # context and EMA target now differ: init_from must take the context backbone
    path = tmp_path / "jepa.ckpt"
    torch.save({"state_dict": jepa.state_dict(), "hyper_parameters": {"backbone": jepa.backbone}}, path)
    model = Denoising(tiny_schnet(), init_from=str(path))
    assert torch.equal(model.backbone.embedding.weight, jepa.backbone.embedding.weight)


def test_mismatched_backbone_gives_clear_error(pretrained):
    path, _ = pretrained
    with pytest.raises(ValueError, match=r"(?s)SchNet.*PaiNN"):
        Regression(PaiNN(width=32, num_interactions=2, num_rbf=16), targets=["homo"], init_from=str(path))
    with pytest.raises(ValueError, match=r"(?s)shape mismatches.*embedding.weight.*\(101, 32\).*\(101, 16\)"):
        Regression(tiny_schnet(width=16), targets=["homo"], init_from=str(path))
    with pytest.raises(FileNotFoundError, match="init_from"):
        Regression(tiny_schnet(), targets=["homo"], init_from=str(path) + ".missing")


def test_safetensors_export_round_trip(pretrained, tmp_path):
    path, source = pretrained
    out = tmp_path / "backbone.safetensors"
    main([str(path), str(out), "--backbone-only"])  # the `python -m atomzoo.export CKPT OUT --backbone-only` entry
    assert out.exists() and card_path(out).exists() and not out.with_suffix(".json").exists()  # one sidecar: the card
    exported = read(out)  # safetensors: no unpickling
    weights = exported.backbone_weights
    assert exported.kind == "backbone" and exported.backbone["class_path"] == "atomzoo.backbones.schnet.SchNet"
    assert set(weights) == set(source.backbone.state_dict())
    model = Regression(tiny_schnet(), targets=["homo"], init_from=str(out))
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="PaiNN"):
        Regression(PaiNN(width=32, num_interactions=2, num_rbf=16), targets=["homo"], init_from=str(out))


def test_cli_pretrain_export_build_and_finetune(cache_dir, tmp_path):
    """zoo fit (denoising) -> checkpoint -> export (init_args from the CLI config) -> build_backbone;
    then zoo fit with configs/objectives/finetune.yaml and --model.init_from the export."""
    from atomzoo.cli import run

    tiny = ["--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
            "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
            "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.num_rbf", "8",
            "--model.backbone.init_args.cutoff", "5.0"]
    common = ["--data.cache_dir", str(cache_dir), "--data.train_size", "16", "--data.batch_size", "8",
              "--data.eval_batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
              "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.default_root_dir", str(tmp_path), "--model.warmup_steps", "1"]
    cli = run(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/denoising.yaml"),
               *tiny, *common, "--data.targets", "null", "--trainer.enable_checkpointing", "true",
               "--trainer.callbacks", "[]"])
    ckpt = tmp_path / "pretrained.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    export_backbone(ckpt, tmp_path / "schnet.safetensors")
    meta = read(tmp_path / "schnet.safetensors").backbone
    assert meta["init_args_complete"] and meta["init_args"]["width"] == 16
    rebuilt = build_backbone(tmp_path / "schnet.safetensors")
    for name, tensor in cli.model.backbone.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor)
    fine = run(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/finetune.yaml"),
                *tiny, *common, "--model.init_from", str(tmp_path / "schnet.safetensors"),
                "--trainer.enable_checkpointing", "false"])
    assert fine.model.aux_denoising is not None
    assert torch.isfinite(fine.trainer.callback_metrics["train/loss"])
    assert "train/aux_denoising" in fine.trainer.callback_metrics


def test_freeze_backbone_is_a_probe(pretrained):
    path, _ = pretrained
    model = Regression(tiny_schnet(), targets=["homo"], init_from=str(path), freeze_backbone=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.heads.parameters()}
    model.train()
    assert not model.backbone.training and model.heads.training


def test_linear_probe_head(pretrained):
    """head_hidden=0: one Linear layer per target on the frozen features (a linear probe)."""
    path, _ = pretrained
    model = Regression(tiny_schnet(), targets=["homo"], init_from=str(path), freeze_backbone=True, head_hidden=0)
    norm, linear = list(model.heads[0].net)
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine and isinstance(linear, torch.nn.Linear)
    assert sum(p.numel() for p in model.trainable_parameters()) == model.backbone.width + 1
    with pytest.raises(ValueError, match="head_hidden=-1"):
        Regression(tiny_schnet(), targets=["homo"], head_hidden=-1)


def test_aux_denoising_reuses_the_denoising_head(dm):
    dm.setup("fit")
    torch.manual_seed(0)  # the untrained head's loss depends on its initialisation: not on the test order
    model = Regression(tiny_schnet(), targets=["homo"], aux_denoising_weight=0.1)
    model.fit_statistics(dm.targets_info(), dm.training_labels(), dm.training_element_counts(100))
    batch = next(iter(dm.train_dataloader()))
    aux = model.aux_denoising.loss(model.backbone, batch)
    # target noise / sigma has variance 1; an untrained head adds its own output's variance
    assert torch.isfinite(aux) and 0.3 < aux.item() < 10.0
    aux.backward()
    assert model.aux_denoising.head.head.edge[0].weight.grad is not None
    assert Regression(tiny_schnet(), targets=["homo"]).aux_denoising is None


def test_scd_pretraining_then_finetuning_from_the_shipped_backbone_config(cache_dir, tmp_path, capsys):
    """The README's two commands with the shipped backbone config and no condition_dim anywhere: SCD
    gets its conditioning from the CLI (the backbone's width), fine-tuning takes the checkpoint's
    condition_dim, and every pretrained tensor -- mask token and adaLN included -- arrives."""
    from atomzoo.cli import run

    backbone = ["--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
                "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
                "--model.backbone.init_args.num_interactions", "1", "--model.backbone.init_args.num_rbf", "8"]
    common = ["--data.cache_dir", str(cache_dir), "--data.train_size", "16", "--data.batch_size", "8",
              "--data.eval_batch_size", "8", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
              "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false", "--trainer.callbacks", "[]",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.default_root_dir", str(tmp_path), "--model.warmup_steps", "1"]
    scd = run(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/scd.yaml"),
               *backbone, *common, "--data.targets", "null", "--trainer.enable_checkpointing", "true"])
    assert scd.model.backbone.condition_dim == 16
    ckpt = tmp_path / "scd.ckpt"
    scd.trainer.save_checkpoint(ckpt)
    # the checkpoint records the options zoo links from the data (targets, forces), which SCD does not
    # take; loading it in Python must still work
    assert {"targets", "forces"} <= set(read(ckpt).hyperparameters)
    reloaded = SelfConditionedDenoising.load_from_checkpoint(ckpt, weights_only=False)
    for name, tensor in scd.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    capsys.readouterr()
    fine = run(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/finetune.yaml"),
                *backbone, *common, "--model.init_from", str(ckpt), "--trainer.max_steps", "0",
                "--trainer.enable_checkpointing", "false"])
    assert "condition_dim is unset" in capsys.readouterr().err
    assert fine.model.backbone.condition_dim == 16
    pretrained = scd.model.backbone.state_dict()
    loaded = fine.model.backbone.state_dict()
    assert set(loaded) == set(pretrained) and any("conditioning" in k for k in loaded)
    for name, tensor in pretrained.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_fit_with_init_from_reads_the_file_once(pretrained, cache_dir, tmp_path, monkeypatch):
    """`zoo fit --model.init_from X` has four readers of X (the backbone defaults, the backbone weights,
    the auxiliary noise head, the provenance check); atomzoo.model_files unpickles X once for all."""
    from atomzoo.cli import run

    path, source = pretrained
    model_files.clear_cache()
    loads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, Path)) and Path(f).resolve() == path.resolve():
            loads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    fine = run(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/finetune.yaml"),
                "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
                "--model.backbone.init_args.width", "32", "--model.backbone.init_args.num_filters", "32",
                "--model.backbone.init_args.num_interactions", "2", "--model.backbone.init_args.num_rbf", "16",
                "--model.backbone.init_args.cutoff", "5.0", "--model.init_from", str(path),
                "--data.cache_dir", str(cache_dir), "--data.train_size", "16", "--data.batch_size", "8",
                "--trainer.max_steps", "0", "--trainer.logger", "false", "--trainer.callbacks", "[]",
                "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    # every reader ran: weights, the pretrained noise head, the provenance check
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(fine.model.backbone.state_dict()[name], tensor), name
    assert fine.model.aux_denoising.pretrained_from == str(path)
    assert fine.model._atomzoo_init_checked
    assert len(loads) == 1, loads
    # and the cached checkpoint is not carried through training
    assert model_files._read_cached.cache_info().currsize == 0
