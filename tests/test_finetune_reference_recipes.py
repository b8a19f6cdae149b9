"""The references' fine-tuning recipes as cells (issue 26 item 4): AdamW's betas as an objective option,
the target loss in the target's unit, a matrix task's final arguments, the two recipe configs
(configs/objectives/finetune_scd_recipe.yaml, finetune_zaidi_recipe.yaml) run through ``zoo fit`` with
the arguments of their matrix (benchmarks/matrices/objectives_v2_recipes.yaml), and that matrix's dry run
(fine-tuning cells only, on objectives_v2's pretrained checkpoints)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch_geometric.data import Batch, Data

from atomzoo.backbones import SchNet
from atomzoo.cli import main, run
from atomzoo.datamodules.base import TargetInfo
from atomzoo.objectives import Denoising, Regression
from atomzoo.runner.execute import cell_dir, log_dir, run_cells
from atomzoo.runner.matrix import expand, load_matrix
from atomzoo.runner.results import write_rows

warnings.filterwarnings("ignore", message=".*self.log.*")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "benchmarks/matrices/objectives_v2_recipes.yaml"
MAIN = ROOT / "benchmarks/matrices/objectives_v2.yaml"


def tiny_schnet():
    return SchNet(width=16, num_filters=16, num_interactions=1, num_rbf=8, cutoff=4.0)


def optimizer_of(model):
    optimizers, _ = model.configure_optimizers()
    return optimizers[0]


def test_betas_reach_every_adamw_parameter_group():
    default = Regression(tiny_schnet(), targets=["homo"], weight_decay=0.01)
    scd = Regression(tiny_schnet(), targets=["homo"], weight_decay=0.01, betas=[0.995, 0.999])
    assert default.betas == (0.9, 0.999) and scd.betas == (0.995, 0.999)
    for model, betas in ((default, (0.9, 0.999)), (scd, (0.995, 0.999))):
        optimizer = optimizer_of(model)
        assert isinstance(optimizer, torch.optim.AdamW)
        assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]
        assert all(tuple(g["betas"]) == betas for g in optimizer.param_groups)
    # every objective takes it (the base class builds the optimizer)
    assert all(tuple(g["betas"]) == (0.95, 0.98)
               for g in optimizer_of(Denoising(tiny_schnet(), betas=(0.95, 0.98))).param_groups)


def test_beta1_changes_the_first_adamw_step_as_torch_defines_it():
    """Two AdamW steps on one parameter (gradients +1 then -1): the update follows
    m_t = beta1 m + (1 - beta1) g, bias-corrected, with the model's beta1 (weight decay 0)."""
    updates = {}
    for beta1 in (0.9, 0.995):
        model = Regression(tiny_schnet(), targets=["homo"], betas=(beta1, 0.999), lr=1e-3, warmup_steps=0,
                           scheduler="constant")
        optimizer = optimizer_of(model)
        p = next(model.heads[0].parameters())
        start = p.detach().clone()
        for g in (1.0, -1.0):
            optimizer.zero_grad()
            p.grad = torch.full_like(p, g)
            optimizer.step()
        updates[beta1] = (p.detach() - start).flatten()[0].item()
        # by hand: the same two steps of Adam (eps 1e-8)
        m = v = 0.0
        x = 0.0
        for t, g in enumerate((1.0, -1.0), start=1):
            m = beta1 * m + (1 - beta1) * g
            v = 0.999 * v + 0.001 * g * g
            x -= 1e-3 * (m / (1 - beta1**t)) / ((v / (1 - 0.999**t)) ** 0.5 + 1e-8)
        assert updates[beta1] == pytest.approx(x, rel=1e-4)  # float32 parameter: ~1e-8 absolute
    assert updates[0.9] != pytest.approx(updates[0.995], rel=1e-3)


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, -0.1), (0.9,), "fast"])
def test_bad_betas_name_the_option(betas):
    with pytest.raises(ValueError, match=r"give two numbers in \[0, 1\), e.g. \[0.9, 0.999\] \(--model.betas\)"):
        Regression(tiny_schnet(), targets=["homo"], betas=betas)


def test_bad_betas_through_the_cli_is_one_line(capsys, cache_dir):
    args = ["fit", "-c", str(ROOT / "configs/data/qm9.yaml"),
            "-c", str(ROOT / "configs/objectives/finetune_scd_recipe.yaml"),
            "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
            "-c", str(ROOT / "configs/trainer/cpu.yaml"),
            "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
            "--model.backbone.init_args.num_interactions", "1", "--trainer.max_steps", "1", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--model.betas", "[1.5, 0.999]"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1] == ("zoo: error: betas=(1.5, 0.999): give two numbers in [0, 1), e.g. [0.9, 0.999] "
                       "(--model.betas)")


def _batch_and_model(**options):
    g = torch.Generator().manual_seed(3)
    mols = [Data(z=torch.tensor(z), pos=torch.randn(len(z), 3, generator=g), y=torch.tensor([[y]], dtype=torch.float64))
            for z, y in (([6, 1, 8], 0.3), ([7, 1], -0.9))]
    torch.manual_seed(0)
    model = Regression(tiny_schnet(), targets=["homo"], loss="mse", **options)
    model.fit_statistics([TargetInfo("homo", "eV", "mean")], [[0.1], [0.9], [-0.7]], torch.ones(3, 101))
    return Batch.from_data_list(mols), model.eval()


def test_loss_in_the_targets_unit():
    """standardize_loss=False: MSE of the error in eV (the references'); True: of the error / sigma. The
    predictions are the same (both de-standardise the outputs)."""
    batch, ours = _batch_and_model()
    _, theirs = _batch_and_model(standardize_loss=False)
    assert float(ours.std[0]) == pytest.approx(0.8)  # std of [0.1, 0.9, -0.7] (n - 1)
    with torch.no_grad():
        pred = ours(batch)
        assert torch.equal(pred, theirs(batch))
        error = (pred - batch.y).float()
        assert float(theirs.compute_loss(batch)["loss"]) == pytest.approx(float(error.pow(2).mean()), rel=1e-6)
        assert float(ours.compute_loss(batch)["loss"]) == pytest.approx(float((error / 0.8).pow(2).mean()), rel=1e-6)


def test_final_args_come_last_and_win(tmp_path):
    """A task's final_args follow common_args and finetune.args (so they win), before early stopping."""
    cells = [c for c in expand(load_matrix(RECIPES)) if c.phase == "finetune"]
    for cell in cells:
        recipe = cell.target.removeprefix("homo_").removesuffix("_recipe")
        clip = {"scd": "1.0", "zaidi": "null"}[recipe]
        # batch 128 for a quarter of the main table's steps: equal samples seen (docs/benchmarks.md)
        tail = ["--data.batch_size", "128", "--trainer.gradient_clip_val", clip, "--trainer.max_steps", "1000",
                "--model.warmup_steps", "50", "--trainer.val_check_interval", "25",
                "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping"]
        k = cell.args.index("--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping")
        assert cell.args[k - 10:k + 1] == tail, cell.id
        assert cell.args.index("--data.batch_size") < cell.args.index("--trainer.max_steps") < k - 10
        assert f"configs/objectives/finetune_{recipe}_recipe.yaml" in cell.args
        assert cell.args[cell.args.index("--trainer.callbacks.monitor") + 1] == "val/homo_mae_meV"
    bad = yaml.safe_load(RECIPES.read_text())
    bad["finetune"]["tasks"]["homo_scd_recipe"]["last_args"] = []
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['last_args'\] in finetune.tasks.homo_scd_recipe"):
        load_matrix(path)


def test_dry_run_runs_only_fine_tuning_on_the_main_studys_checkpoints(tmp_path, capsys):
    """With objectives_v2's cells finished (rows in the shared results.csv), the recipes matrix runs its
    18 fine-tuning cells and nothing else; each starts from objectives_v2's pretraining checkpoint."""
    main_cells = expand(load_matrix(MAIN))
    matrix = load_matrix(RECIPES)
    matrix.output = tmp_path  # the shared results.csv, here with every cell of objectives_v2 finished
    matrix.cells = tmp_path / "cells"  # ... and their finished run folders (not this machine's runs/)
    write_rows(matrix.results_csv, [{**c.labels, "metric": "wall_s", "value": 1.0} for c in main_cells])
    cells = expand(matrix)
    for cell in (c for c in cells if c.phase == "pretrain"):
        (log_dir(matrix, cell) / "checkpoints").mkdir(parents=True)
        (log_dir(matrix, cell) / "checkpoints" / "last.ckpt").write_bytes(b"")
        (cell_dir(matrix, cell) / "DONE.json").write_text("{}")
    outcome = run_cells(matrix, cells, cells, dry_run=True)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    pretrain = [c for c in cells if c.phase == "pretrain"]
    assert len(pretrain) == 2 * 3 and set(outcome["skipped"]) == {c.id for c in pretrain}
    assert {c.id for c in pretrain} <= {c.id for c in main_cells}
    commands, summary = printed[:-1], printed[-1]
    assert summary.startswith("# objectives_v2: 24 cells selected, 6 finished") and ", 18 to run" in summary
    assert len(commands) == 18 and all(" fit " in c and "/pretrain/" not in c.split("--model.init_from")[0]
                                       for c in commands)
    assert sum("finetune_scd_recipe.yaml" in c for c in commands) == sum("finetune_zaidi_recipe.yaml" in c
                                                                          for c in commands) == 9
    for command in commands:
        if "/none/" in command:
            assert "--model.init_from" not in command
        else:  # pretraining seed k of objectives_v2's cells folder
            source = command.split("--model.init_from ")[1].split()[0]
            assert source.startswith(str(tmp_path / "cells/pretrain/painn64/"))
    # seed 0 first (scratch, denoising, SCD), then seeds 1 and 2
    seeds = [c.pretrain_seed if c.pretrain_seed is not None else c.seed for c in cells if c.phase == "finetune"]
    assert seeds == sorted(seeds) and seeds[:6] == [0] * 6


@pytest.mark.parametrize("recipe", ["scd", "zaidi"])
def test_recipe_cell_runs_through_zoo_fit(recipe, cache_dir, tmp_path):
    """The matrix's scratch cell of each recipe, as the runner would start it, at a budget of 2 steps with a
    tiny PaiNN: the recipe's options reach the model, the optimizer, the data and the trainer."""
    cell = next(c for c in expand(load_matrix(RECIPES)) if c.phase == "finetune" and c.objective == "none"
                and c.seed == 0 and c.target == f"homo_{recipe}_recipe")
    args = [str(ROOT / a) if a.startswith("configs/") else a for a in cell.args]
    args = args[:args.index("--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping")]  # its last args
    args[args.index("--test_after_fit") + 1] = "false"  # the training metrics stay in callback_metrics
    cli = run(["fit", *args, "--data.cache_dir", str(cache_dir), "--data.train_size", "32",
               "--data.eval_batch_size", "16", "--model.backbone.init_args.width", "16",
               "--model.backbone.init_args.num_interactions", "1",
               "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "2",
               "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path)])
    model, trainer = cli.model, cli.trainer
    assert trainer.global_step == 2 and cli.datamodule.batch_size == 128
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert torch.isfinite(torch.tensor(m["train/loss"])) and m["val/homo_mae_meV"] > 0
    assert model.loss_name == "mse" and not model.standardize_loss and bool(model.sum_pooled.all())
    assert model.aux_denoising_weight == pytest.approx(0.1) and "train/aux_denoising" in m
    betas = (0.995, 0.999) if recipe == "scd" else (0.9, 0.999)
    optimizer = trainer.optimizers[0]
    assert all(tuple(g["betas"]) == betas for g in optimizer.param_groups)
    if recipe == "scd":
        assert trainer.gradient_clip_val == pytest.approx(1.0) and model.lr == pytest.approx(5e-4)
        assert all(g["weight_decay"] in (0.01, 0.0) for g in optimizer.param_groups)
        assert m["train/drop_path"] == pytest.approx(0.15, abs=1e-3)
    else:
        assert trainer.gradient_clip_val is None and model.lr == pytest.approx(4e-4)
        assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups) and m["train/drop_path"] == 0.0
    # the option is a hyperparameter of the checkpoint like the others
    ckpt = torch.load(Path(trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path),
                      map_location="cpu", weights_only=False)
    hparams = ckpt["hyper_parameters"]
    assert tuple(hparams["betas"]) == betas and hparams["standardize_loss"] is False and hparams["loss"] == "mse"
