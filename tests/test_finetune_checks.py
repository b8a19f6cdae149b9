"""Fine-tuning users can trust (issue 28, item 4): the step-0 check of init_from, refusals of another cutoff
or unseen elements, freezing by module, the backbone's learning-rate multiplier, the backbone taken from
init_from on the command line. The shipped model painn64-denoising-qm9-p0 (zoo/models/) is the source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomzoo import model_files, pretrained
from atomzoo.backbones import PaiNN
from atomzoo.nn.batch import atoms_to_batch
from atomzoo.objectives import Regression
from atomzoo.objectives.init_check import StepZeroCheck, check_settings

ROOT = Path(__file__).resolve().parents[1]
NAME = "painn64-denoising-qm9-p0"


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv(pretrained.ENV, raising=False)
    model_files.clear_cache()
    yield
    model_files.clear_cache()


def _args(**changes):
    return {**pretrained.card(NAME)["backbone"]["init_args"], **changes}


def _batch():
    from ase.build import molecule

    return atoms_to_batch([molecule("CH3CH2OH"), molecule("H2O"), molecule("HCN")], torch.float32)


def test_step_zero_check_passes_for_the_loaded_backbone_and_prints_the_difference():
    model = Regression(PaiNN(**_args()), targets=["homo"], init_from=NAME)
    line = StepZeroCheck(NAME).run(model.backbone, _batch())
    assert line.startswith("zoo: step-0 check: the backbone reproduces init_from=painn64-denoising-qm9-p0")
    assert "max |difference| 0.0e+00" in line and "3 structures" in line
    assert model.backbone.training  # the check leaves the training mode as it was


def test_step_zero_check_leaves_the_random_stream_as_it_was():
    """Rebuilding the reference backbone draws initial weights; it must not shift the fine-tune's random
    stream (dropout, noise, drop-path), or a run with the check would differ from one without it."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    StepZeroCheck(NAME)
    assert torch.equal(torch.rand(4), expected)


def test_step_zero_check_refuses_a_backbone_that_computes_something_else():
    """A cutoff of 4 A loads the same tensor shapes; only the numbers show it."""
    model = Regression(PaiNN(**_args(cutoff=4.0)), targets=["homo"], init_from=NAME, init_check=False)
    with pytest.raises(ValueError, match=r"step-0 check failed.*cutoff: file 5.0, model 4.0") as err:
        StepZeroCheck(NAME).run(model.backbone, _batch())
    assert "\n" not in str(err.value) and "--model.init_check false" in str(err.value)


def test_a_cutoff_mismatch_and_unseen_elements_are_refused_in_one_line():
    backbone = PaiNN(**_args(cutoff=4.0))
    with pytest.raises(ValueError, match=r"cutoff 5 A but --model.backbone.init_args.cutoff is 4 A.*cutoff 5") as err:
        check_settings(backbone, NAME, [1, 6, 8])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"element\(s\) S Cl that the pretrained backbone never saw.*H C N O F") as err:
        check_settings(PaiNN(**_args()), NAME, [1, 6, 16, 17])
    assert "--model.init_check false" in str(err.value) and "\n" not in str(err.value)
    check_settings(PaiNN(**_args()), NAME, [1, 6, 7, 8, 9])  # the pretraining elements: accepted


def test_init_from_an_absent_name_is_one_line():
    with pytest.raises(FileNotFoundError, match="no model named 'painn-nope'.*ATOMZOO_MODELS") as err:
        Regression(PaiNN(**_args()), targets=["homo"], init_from="painn-nope")
    assert "\n" not in str(err.value)


def test_freeze_by_module_prefix():
    model = Regression(PaiNN(**_args()), targets=["homo"], freeze=["backbone.embedding", "backbone.interactions.0"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.embedding.", "backbone.interactions.0.")) for n in frozen)
    assert "backbone.embedding.weight" in frozen
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("heads."))
    trained = {id(p) for g in model.configure_optimizers()[0][0].param_groups for p in g["params"]}
    assert not any(id(p) in trained for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="--model.freeze 'backbone.embeding' matches no parameter; modules: .*backbone.embedding"):
        Regression(PaiNN(**_args()), targets=["homo"], freeze=["backbone.embeding"])


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_backbone_learning_rate_multiplier(scheduler):
    model = Regression(PaiNN(**_args()), targets=["homo"], lr=1e-3, backbone_lr_multiplier=0.1, scheduler=scheduler,
                       warmup_steps=10, weight_decay=0.01)  # fmt: skip
    optimizers, _ = model.configure_optimizers()
    groups = optimizers[0].param_groups
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in groups:
        inside = {id(p) in backbone for p in group["params"]}
        assert len(inside) == 1  # a group is all backbone or all heads
        assert group.get("initial_lr", group["lr"]) == pytest.approx(1e-4 if inside.pop() else 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="backbone_lr_multiplier=-1.0 must be >= 0"):
        Regression(PaiNN(**_args()), targets=["homo"], backbone_lr_multiplier=-1.0)


def test_the_command_line_takes_the_backbone_from_init_from(capsys):
    import json

    from atomzoo.cli import _backbone_from_init_from

    argv = ["fit", "-c", str(ROOT / "configs/objectives/finetune.yaml"), "--model.init_from", NAME,
            "--model.backbone.init_args.max_num_neighbors", "64"]  # fmt: skip
    out = _backbone_from_init_from(argv)
    k = out.index("--model.backbone")
    assert json.loads(out[k + 1]) == pretrained.card(NAME)["backbone"]
    assert k < out.index("--model.backbone.init_args.max_num_neighbors")  # the override comes after it
    assert "taken from --model.init_from" in capsys.readouterr().err
    given = ["fit", "--model.init_from", NAME, "--model.backbone", "configs/backbones/painn.yaml"]
    assert _backbone_from_init_from(given) == given
    assert _backbone_from_init_from(["test", "--model.init_from", NAME]) == ["test", "--model.init_from", NAME]


@pytest.mark.slow  # one QM9 store build and 2 training steps (about 40 s on one loaded CPU thread)
def test_the_readme_fine_tune_of_a_shipped_model_prints_its_step_zero_check(cache_dir, tmp_path, capsys):
    from atomzoo.cli import main

    main(["fit", "-c", str(ROOT / "configs/data/qm9.yaml"), "-c", str(ROOT / "configs/objectives/finetune.yaml"),
          "--model.init_from", NAME, "--data.cache_dir", str(cache_dir), "--data.train_size", "16",
          "--data.batch_size", "8", "--data.eval_batch_size", "8", "--trainer.max_steps", "2",
          "--trainer.limit_val_batches", "2", "--trainer.logger", "false", "--trainer.callbacks", "[]",
          "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path), "--model.warmup_steps", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert "zoo: step-0 check: the backbone reproduces init_from=painn64-denoising-qm9-p0" in err
    assert "max |difference| 0.0e+00" in err
