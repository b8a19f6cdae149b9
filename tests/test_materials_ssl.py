"""Self-supervised objectives on crystals and surfaces, and the materials recipe through ``zoo`` (issue 30, item 3).

On the committed EMT fixture (``tests/data/emt_materials``: bulk crystals with stress, slabs without;
``tests/data/generators/make_emt_materials.py``), every shipped self-supervised objective config
(denoising, scd, jepa, jepa_sigreg) trains one step with a periodic backbone, and each backbone
pass it makes sees the noise in Cartesian coordinates with the cell and pbc unchanged and a
neighbour list with the periodic images of the *noisy* positions (checked against ASE's
``neighbor_list`` on the noisy structure). Then the recipe a materials user runs: ``zoo fit``
denoising pretraining, fine-tuning with ``init_from`` on energy + forces + stress (the stress read
with ``--data.init_args.stress_key``), and ``zoo predict --out`` writing the stress columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from ase import Atoms
from ase.neighborlist import neighbor_list

from atomzoo.backbones import PaiNN
from atomzoo.cli import run
from atomzoo.datamodules import ASEFileDataModule
from atomzoo.model_files import resolve_class

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "emt_materials" / "emt_materials.extxyz"
CUTOFF = 4.0
OBJECTIVES = ["denoising", "scd", "jepa", "jepa_sigreg"]


@pytest.fixture(scope="module")
def crystal_batch(tmp_path_factory):
    dm = ASEFileDataModule(path=str(FIXTURE), cache_dir=str(tmp_path_factory.mktemp("cache")), energy_key=None,
                           forces_key=None, num_train=0.8, num_val=0.1, batch_size=12)  # fmt: skip
    dm.setup()
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert bool(batch.pbc.all(dim=1).any()) and not bool(batch.pbc.all())  # crystals and slabs together
    return batch


def neighbour_count(pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> int:
    return len(neighbor_list("i", Atoms(numbers=np.ones(len(pos)), positions=pos, cell=cell, pbc=pbc), CUTOFF))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_trains_on_crystals_with_images_of_the_noisy_positions(name, crystal_batch):
    config = yaml.safe_load((ROOT / "configs" / "objectives" / f"{name}.yaml").read_text())["model"]
    torch.manual_seed(0)
    backbone = PaiNN(width=16, num_interactions=2, num_rbf=8, cutoff=CUTOFF, condition_dim=16 if name == "scd" else 0)
    objective = resolve_class(config["class_path"])(backbone, **{**config["init_args"], "warmup_steps": 1}).train()
    passes = []
    hook = backbone.register_forward_hook(lambda module, args, out: passes.append((args[0], out.graph)))
    batch = crystal_batch.clone()
    loss = objective.compute_loss(batch, torch.Generator().manual_seed(0))["loss"]
    hook.remove()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)
    noisy = [(data, graph) for data, graph in passes if not torch.equal(data.pos, crystal_batch.pos)]
    assert noisy, f"{name}: no backbone pass saw noisy positions"
    for data, graph in noisy:
        assert torch.equal(data.cell, crystal_batch.cell) and torch.equal(data.pbc, crystal_batch.pbc)  # cell fixed
        assert graph.shifts is not None and bool(graph.shifts.abs().sum() > 0)  # periodic images present
        edges = torch.bincount(data.batch[graph.edge_index[1]], minlength=int(data.num_graphs))
        for g in range(int(data.num_graphs)):  # the images of the noisy positions, as ASE finds them
            atoms = (data.batch == g).numpy()
            expected = neighbour_count(data.pos[atoms].detach().double().numpy(), data.cell[g].double().numpy(),
                                       data.pbc[g].numpy())  # fmt: skip
            assert int(edges[g]) == expected, (name, g)


def common(tmp_path: Path) -> list[str]:
    return ["-c", str(ROOT / "configs" / "data" / "ase_file.yaml"), "--data.init_args.path", str(FIXTURE),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.batch_size", "16",
            "--data.init_args.num_train", "96", "--data.init_args.num_val", "32", "--data.init_args.num_test", "32",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip


TINY_PAINN = ["--model.backbone", str(ROOT / "configs" / "backbones" / "painn.yaml"),
              "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_interactions", "2",
              "--model.backbone.init_args.cutoff", str(CUTOFF)]  # fmt: skip


@pytest.mark.slow  # four zoo runs: ~16 s of CPU, 30-60 s wall on the loaded 2-core VM
def test_zoo_pretrain_finetune_with_stress_and_predict(tmp_path):
    pre = run(["fit", *common(tmp_path / "pre"), "-c", str(ROOT / "configs" / "objectives" / "denoising.yaml"),
               *TINY_PAINN, "--data.init_args.energy_key", "null", "--data.init_args.forces_key", "null",
               "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2", "--model.warmup_steps", "1"])  # fmt: skip
    pretrained = Path(pre.trainer.log_dir) / "checkpoints" / "last.ckpt"
    fine = run(["fit", *common(tmp_path / "fine"), "-c", str(ROOT / "configs" / "objectives" / "finetune.yaml"),
                *TINY_PAINN, "--data.init_args.stress_key", "stress", "--model.init_from", str(pretrained),
                "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2", "--model.warmup_steps", "1",
                "--test_after_fit", "true"])  # fmt: skip
    model = fine.model
    assert model.forces and model.stress  # linked from the data's forces_key / stress_key
    metrics = fine.trainer.callback_metrics
    assert torch.isfinite(metrics["test/stress_mae_meV_per_A^3"]) and torch.isfinite(metrics["test/energy_mae_meV"])
    out = tmp_path / "preds.csv"
    checkpoint = Path(fine.trainer.log_dir) / "checkpoints" / "last.ckpt"
    run(["predict", "--ckpt_path", str(checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
         "--data.init_args.path", str(FIXTURE), "--data.init_args.cache_dir", str(tmp_path / "cache"),
         "--data.init_args.stress_key", "stress", "--out", str(out), "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false"])  # fmt: skip
    table = pd.read_csv(out)
    voigt = [f"stress_{c}_eV_per_A^3" for c in ("xx", "yy", "zz", "yz", "xz", "xy")]
    assert len(table) == 240 and set(voigt) <= set(table.columns)
    surface = table["id"].str.split(":").str[1].astype(int) % 40 < 10  # the first 10 of every element are slabs
    assert table.loc[surface, voigt].isna().all().all() and table.loc[~surface, voigt].notna().all().all()
    # the CSV's stress is the API's (atomzoo.load(...).predict), in ASE's Voigt order
    import atomzoo
    from ase.io import read

    loaded = atomzoo.load(checkpoint)
    api = loaded.predict(read(FIXTURE, index=":12"))
    # the stress unit travels with the model: checkpoint -> export (header and card) -> atomzoo.load
    from atomzoo.cards import read_card
    from atomzoo.export import export_model

    export_model(checkpoint, tmp_path / "stress_model")
    card = read_card(tmp_path / "stress_model.safetensors")
    assert loaded.stress_unit == card["stress_unit"] == "eV/A^3" and card["force_unit"] == "eV/A"
    assert atomzoo.load(tmp_path / "stress_model.safetensors").stress_unit == "eV/A^3"
    np.testing.assert_allclose(table.loc[10, voigt].to_numpy(float), api[10]["stress"], atol=1e-6)
    reference = [name.replace("stress_", "stress_ref_") for name in voigt]
    expected = read(FIXTURE, index=10).get_stress()
    np.testing.assert_allclose(table.loc[10, reference].to_numpy(float), expected, atol=1e-7)
    # without --data.init_args.stress_key the stress model predicts energies and forces only (no error)
    plain = tmp_path / "plain.csv"
    run(["predict", "--ckpt_path", str(checkpoint), "-c", str(ROOT / "configs" / "data" / "ase_file.yaml"),
         "--data.init_args.path", str(FIXTURE), "--data.init_args.cache_dir", str(tmp_path / "cache"),
         "--out", str(plain), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    plain_table = pd.read_csv(plain)
    assert not any(c.startswith("stress") for c in plain_table.columns)
    np.testing.assert_allclose(plain_table["energy_eV"], table["energy_eV"], atol=1e-6)
