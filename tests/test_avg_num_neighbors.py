"""MACE's ``avg_num_neighbors="auto"`` (issue 29): computed once at setup from the training split's neighbour
statistics (``AtomsDataModule.neighbour_statistics`` through ``DataSummary.neighbours``), kept in the
``avg_num_neighbors`` buffer by checkpoints, exports and ``atomzoo.load``; explicit numbers untouched.

Reference: mace-torch's ``mace.modules.utils.compute_avg_num_neighbors`` (``mace_run_train`` computes it by
default, ``--compute_avg_num_neighbors True``). mace-torch is imported only in a subprocess here (importing
it sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` for the whole process).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import requires_mace

ROOT = Path(__file__).resolve().parents[1]
SLABS = ROOT / "tests" / "data" / "emt_materials" / "emt_materials.extxyz"  # 60 periodic slabs (pbc T T F), 12 atoms
MD17 = ROOT / "tests" / "data" / "md17_fixture"
TINY = {"hidden_irreps": "8x0e+8x1o", "max_ell": 1, "correlation": 2, "num_interactions": 1, "radial_MLP": [8]}
SLAB_ELEMENTS = [13, 28, 29, 46, 47, 79]  # Al Ni Cu Pd Ag Au
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
         "accelerator": "cpu", "max_steps": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0}  # fmt: skip


def slab_data(tmp_path, **kw):
    from atomzoo.datamodules import ASEFileDataModule

    return ASEFileDataModule(path=str(SLABS), cache_dir=str(tmp_path / "cache"), num_train=0.6, num_val=0.2,
                             batch_size=8, eval_batch_size=16, **kw)  # fmt: skip


def brute_force_periodic(dm, cutoff: float) -> tuple[float, float]:
    """(mean neighbours per atom with periodic images, without them) over ``dm``'s training split: ASE's
    ``neighbor_list`` of every training structure read back from the store."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    store, edges, free, atoms = dm.store, 0, 0, 0
    for m in np.sort(dm.splits["train"]):
        a, b = int(store.offsets[m]), int(store.offsets[m + 1])
        structure = Atoms(numbers=np.asarray(store.arrays["z"][a:b]), positions=np.asarray(store.arrays["pos"][a:b]),
                          cell=np.asarray(store.arrays["cell"][m]), pbc=np.asarray(store.arrays["pbc"][m]))  # fmt: skip
        edges += len(neighbor_list("i", structure, cutoff))
        structure.pbc = False
        free += len(neighbor_list("i", structure, cutoff))
        atoms += b - a
    return edges / atoms, free / atoms


def fitted(backbone, dm):
    from atomzoo.objectives import Regression

    model = Regression(backbone, targets=["energy"], forces=False, warmup_steps=1)
    L.Trainer(**QUIET).fit(model, datamodule=dm)
    return model


@requires_mace
def test_auto_is_the_training_splits_mean_neighbour_count_with_periodic_images(tmp_path, caplog):
    from atomzoo.backbones import MACE

    dm = slab_data(tmp_path)
    backbone = MACE(**TINY, cutoff=5.0, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors="auto")
    assert backbone.neighbour_statistics_cutoff() == 5.0
    with caplog.at_level("INFO"):
        model = fitted(backbone, dm)
    expected, without_images = brute_force_periodic(dm, 5.0)
    assert abs(expected - without_images) > 1.0  # the images matter: a count without them would fail
    value = float(model.backbone.avg_num_neighbors)
    assert value == pytest.approx(expected, abs=1e-9)
    assert model.backbone.interactions[0].avg_num_neighbors == pytest.approx(expected, abs=1e-9)  # what divides
    assert model.backbone.neighbour_statistics_cutoff() is None  # computed once
    lines = [r.getMessage() for r in caplog.records if "avg_num_neighbors" in r.getMessage()]
    assert len(lines) == 1 and f"{value:.6g}" in lines[0] and "5 A" in lines[0], lines
    # the training split only: the value over all 60 structures differs
    all_atoms = dm.store.counts.sum()
    from atomzoo.datamodules.sampler import edge_counts

    assert edge_counts(dm.store, 5.0).sum() / all_atoms != pytest.approx(value, abs=1e-6)
    # a second setup (test) keeps it
    L.Trainer(**QUIET).test(model, datamodule=dm, verbose=False)
    assert float(model.backbone.avg_num_neighbors) == value


MACE_REFERENCE = r"""
import json, sys
import numpy as np, torch
from ase.io import read
from mace.data.neighborhood import get_neighborhood
from mace.modules.utils import compute_avg_num_neighbors
cutoff, frames = float(sys.argv[2]), json.loads(sys.argv[3])
structures, batches = read(sys.argv[1], ":"), []
for atoms in (structures[i] for i in frames):
    edge_index, *_ = get_neighborhood(atoms.positions, cutoff, atoms.pbc, np.asarray(atoms.cell))
    batches.append(type("Batch", (), {"edge_index": torch.from_numpy(edge_index)})())  # what the loop reads
print(json.dumps(compute_avg_num_neighbors(batches)))
"""


@requires_mace
def test_auto_equals_mace_torchs_compute_avg_num_neighbors(tmp_path):
    """The same training structures through mace-torch's own neighbour list and ``compute_avg_num_neighbors``
    (mace-torch averages in torch's default dtype, float32 in that process, hence 1e-6 relative). Every slab atom
    has neighbours, so its mean over atoms with neighbours is edges / atoms."""
    from atomzoo.backbones import MACE

    dm = slab_data(tmp_path)
    dm.setup("fit")
    backbone = MACE(**TINY, cutoff=4.0, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors="auto")
    assert "4 A" in backbone.on_data_summary(dm.data_summary(neighbour_cutoff=4.0))  # what setup hands it
    # store order is the file's order (ASEFileDataModule reads the frames in sequence); check on positions
    from ase.io import read

    frames = [int(m) for m in np.sort(dm.splits["train"])]
    first = read(SLABS, frames[0])
    np.testing.assert_allclose(dm.store.arrays["pos"][dm.store.offsets[frames[0]]:dm.store.offsets[frames[0] + 1]],
                               first.positions, atol=1e-5)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    proc = subprocess.run([sys.executable, "-c", MACE_REFERENCE, str(SLABS), "4.0", json.dumps(frames)],
                          capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    assert float(backbone.avg_num_neighbors) == pytest.approx(reference, rel=1e-6)


@requires_mace
def test_jepas_ema_target_copy_gets_the_same_value(tmp_path):
    """JEPA-EMA's target encoder is a copy of the backbone made at construction ("auto" not yet computed):
    setup hands the summary to every module that asks, so the copy divides by the same number."""
    from atomzoo.backbones import MACE
    from atomzoo.objectives import JEPA

    dm = slab_data(tmp_path, targets=None)
    model = JEPA(MACE(**TINY, cutoff=5.0, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors="auto"), warmup_steps=1)
    L.Trainer(**QUIET).fit(model, datamodule=dm)
    value = float(model.backbone.avg_num_neighbors)
    assert value == pytest.approx(brute_force_periodic(dm, 5.0)[0], abs=1e-9)
    assert model.target_backbone.interactions[0].avg_num_neighbors == value
    assert float(model.target_backbone.avg_num_neighbors) == value


@requires_mace
def test_auto_on_molecules_equals_a_pairwise_count(tmp_path):
    """rMD17 ethanol fixture (no cell): the training split's directed pairs within the cutoff per atom."""
    from atomzoo.backbones import MACE
    from atomzoo.datamodules import RMD17DataModule

    dm = RMD17DataModule(root=str(MD17), molecule="ethanol", cache_dir=str(tmp_path), num_train=40, num_val=10,
                         num_test=10, batch_size=20)  # fmt: skip
    model = fitted(MACE(**TINY, cutoff=2.5, atomic_numbers=[1, 6, 8], avg_num_neighbors="auto"), dm)
    store, pairs, atoms = dm.store, 0, 0
    for m in dm.splits["train"]:
        pos = np.asarray(store.arrays["pos"][store.offsets[m]:store.offsets[m + 1]], dtype=np.float64)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        pairs += int(((d < 2.5) & ~np.eye(len(pos), dtype=bool)).sum())
        atoms += len(pos)
    assert len(dm.splits["train"]) == 40
    assert float(model.backbone.avg_num_neighbors) == pytest.approx(pairs / atoms, abs=1e-9)
    assert not math.isclose(pairs / atoms, 8.0)  # not "every other atom" (the cutoff matters)


@requires_mace
def test_explicit_number_is_used_as_given(tmp_path):
    from atomzoo.backbones import MACE

    backbone = MACE(**TINY, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors=7.25)
    assert backbone.neighbour_statistics_cutoff() is None
    # its state dict keeps mace-torch's keys (+ the mask token): files of explicit numbers stay as they were
    assert "avg_num_neighbors" not in backbone.state_dict()
    assert "avg_num_neighbors" in MACE(**TINY, avg_num_neighbors="auto").state_dict()
    model = fitted(backbone, slab_data(tmp_path))
    assert float(model.backbone.avg_num_neighbors) == 7.25
    assert model.backbone.interactions[0].avg_num_neighbors == 7.25


@requires_mace
def test_auto_without_data_names_the_option_and_the_fix():
    from torch_geometric.data import Batch, Data

    from atomzoo.backbones import MACE

    backbone = MACE(**TINY, avg_num_neighbors="auto")
    batch = Batch.from_data_list([Data(z=torch.tensor([1, 6, 8]), pos=torch.randn(3, 3))])
    with pytest.raises(ValueError) as err:
        backbone(batch)
    message = str(err.value)
    assert "\n" not in message and "avg_num_neighbors='auto'" in message
    assert "set_avg_num_neighbors" in message and "--model.backbone.init_args.avg_num_neighbors" in message
    backbone.set_avg_num_neighbors(3.5)  # the fix in pure Python
    assert backbone(batch).scalars.shape == (3, 8) and backbone.interactions[0].avg_num_neighbors == 3.5
    for bad in (0, -2.0, "often", float("nan")):
        with pytest.raises(ValueError, match="avg_num_neighbors must be 'auto' or a positive number"):
            MACE(**TINY, avg_num_neighbors=bad)


@requires_mace
def test_a_training_split_without_neighbours_is_refused(tmp_path):
    from ase import Atoms
    from ase.io import write

    from atomzoo.backbones import MACE

    frames = [Atoms("HH", positions=[[0, 0, 0], [0, 0, 3.0 + 0.1 * k]]) for k in range(10)]
    for k, atoms in enumerate(frames):
        atoms.info["energy"] = -float(k)
    write(tmp_path / "far.extxyz", frames)
    from atomzoo.datamodules import ASEFileDataModule

    dm = ASEFileDataModule(path=str(tmp_path / "far.extxyz"), cache_dir=str(tmp_path / "cache"), forces_key=None,
                           num_train=0.6, num_val=0.2, batch_size=4)  # fmt: skip
    with pytest.raises(ValueError, match="no neighbours within the cutoff.*--model.backbone.init_args.avg_num_neighbors"):
        fitted(MACE(**TINY, cutoff=2.0, atomic_numbers=[1], avg_num_neighbors="auto"), dm)


@requires_mace
def test_cli_checkpoint_export_and_load_keep_the_auto_value(tmp_path, cache_dir):
    """``zoo fit`` with configs/backbones/mace.yaml (``auto``), then: the checkpoint (rebuilt from its config,
    which says ``auto``), ``zoo test`` on it, the full export and ``atomzoo.load`` all use the value computed
    from the training split, without data."""
    import atomzoo
    from atomzoo.cli import run
    from atomzoo.export import export_model
    from atomzoo.objectives import Regression

    args = ["-c", str(ROOT / "configs/data/ase_file.yaml"), "-c", str(ROOT / "configs/objectives/regression.yaml"),
            "--model.backbone", str(ROOT / "configs/backbones/mace.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
            *(a for k, v in TINY.items() for a in (f"--model.backbone.init_args.{k}", str(v).replace(" ", ""))),
            "--model.backbone.init_args.atomic_numbers", str(SLAB_ELEMENTS).replace(" ", ""),
            "--data.path", str(SLABS), "--data.cache_dir", str(cache_dir), "--data.batch_size", "8",
            "--data.num_train", "0.6", "--data.num_val", "0.2", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    run(["fit", *args])
    (ckpt,) = tmp_path.glob("zoo/version_*/checkpoints/last.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["backbone"]["init_args"]["avg_num_neighbors"] == "auto"
    value = float(saved["state_dict"]["backbone.avg_num_neighbors"])
    dm = slab_data(tmp_path)  # the same file and split as the run (same seed and fractions)
    dm.setup("fit")
    assert value == pytest.approx(brute_force_periodic(dm, 5.0)[0], abs=1e-9)

    restored = Regression.load_from_checkpoint(ckpt, map_location="cpu")
    assert float(restored.backbone.avg_num_neighbors) == value
    assert restored.backbone.interactions[0].avg_num_neighbors == value
    assert restored.backbone.neighbour_statistics_cutoff() is None

    export = tmp_path / "slab.safetensors"
    export_model(ckpt, export)
    loaded = atomzoo.load(export)
    backbone = loaded.objective.backbone if hasattr(loaded, "objective") else loaded.model.backbone
    assert float(backbone.avg_num_neighbors) == value and backbone.interactions[0].avg_num_neighbors == value
    # zoo test on the checkpoint: setup computes "auto" again, the restored weights' value wins
    run(["test", *args, "--ckpt_path", str(ckpt)])

    # fine-tuning (init_from) with "auto" keeps the pretrained number (mace-torch keeps the foundation model's),
    # also on another training split; loaded into a backbone configured with a number, it replaces it, warning
    from atomzoo.backbones import MACE
    from atomzoo.export import export_backbone

    pretrained = tmp_path / "slab_backbone.safetensors"
    export_backbone(ckpt, pretrained)
    other = slab_data(tmp_path, split_seed=3)
    other.setup("fit")
    assert brute_force_periodic(other, 5.0)[0] != pytest.approx(value, abs=1e-6)
    tuned = Regression(MACE(**TINY, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors="auto"), targets=["energy"],
                       forces=False, warmup_steps=1, init_from=str(pretrained))  # fmt: skip
    L.Trainer(**QUIET).fit(tuned, datamodule=other)
    assert float(tuned.backbone.avg_num_neighbors) == value and tuned.backbone.interactions[0].avg_num_neighbors == value
    configured = MACE(**TINY, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors=15.6)
    with pytest.warns(UserWarning, match=f"trained with {value:.6g}, which replaces the configured 15.6"):
        configured.load_state_dict(tuned.backbone.state_dict(), strict=True)
    assert configured.interactions[0].avg_num_neighbors == value and "avg_num_neighbors" in configured.state_dict()


@requires_mace
def test_shipped_mace_files_keep_their_number(tmp_path):
    """Files written before the buffer existed (the converted MACE foundation fixture) load with the number in
    their init_args, and a converted model carries mace-torch's number in the buffer."""
    from atomzoo.model_files import build_backbone, read

    converted = ROOT / "tests" / "data" / "mace_foundation" / "mace_small.safetensors"
    record = read(converted)
    number = record.backbone["init_args"]["avg_num_neighbors"]
    assert "avg_num_neighbors" not in record.backbone_weights  # written before the buffer
    backbone = build_backbone(converted)
    assert float(backbone.avg_num_neighbors) == number and backbone.interactions[0].avg_num_neighbors == number


@requires_mace
def test_auto_fine_tuned_from_a_file_of_a_number_keeps_that_number(tmp_path):
    """A file of an explicit number holds no buffer; its recorded init_args give the number. "auto" fine-tuned
    from it keeps the file's 3.0 (as mace-torch's fine-tuning keeps the foundation model's), so the step-0 check
    passes and the fine-tuning data's own count (about 8) is not used."""
    from atomzoo.backbones import MACE
    from atomzoo.datamodules import RMD17DataModule
    from atomzoo.model_files import read
    from atomzoo.objectives import Regression

    converted = ROOT / "tests" / "data" / "mace_foundation" / "mace_small.safetensors"
    args = {**read(converted).backbone["init_args"], "avg_num_neighbors": "auto"}
    model = Regression(MACE(**args), targets=["energy"], forces=False, warmup_steps=1, init_from=str(converted))
    assert float(model.backbone.avg_num_neighbors) == 3.0 and model.backbone.interactions[0].avg_num_neighbors == 3.0
    dm = RMD17DataModule(root=str(MD17), molecule="ethanol", cache_dir=str(tmp_path), num_train=20, num_val=5,
                         num_test=5, batch_size=5)  # fmt: skip
    L.Trainer(**{**QUIET, "precision": "64-true"}).fit(model, datamodule=dm)
    assert model.backbone.interactions[0].avg_num_neighbors == 3.0


@requires_mace
def test_a_number_configured_backbone_fine_tunes_from_an_auto_file(tmp_path):
    """The other way round: a backbone configured with a number, init_from a file trained with "auto" (its
    buffer saved): the file's number is loaded (with a warning), not refused as an unknown tensor."""
    from atomzoo.backbones import MACE
    from atomzoo.export import export_backbone
    from atomzoo.objectives import Regression

    auto = Regression(MACE(**TINY, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors="auto"), targets=["energy"],
                      forces=False, warmup_steps=1)  # fmt: skip
    trainer = L.Trainer(**QUIET)
    trainer.fit(auto, datamodule=slab_data(tmp_path))
    value = float(auto.backbone.avg_num_neighbors)
    assert math.isfinite(value) and value != 15.6
    ckpt = tmp_path / "auto.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.warns(UserWarning, match=f"trained with {value:.6g}, which replaces the configured 15.6"):
        tuned = Regression(MACE(**TINY, atomic_numbers=SLAB_ELEMENTS, avg_num_neighbors=15.6), targets=["energy"],
                           forces=False, warmup_steps=1, init_from=str(ckpt))  # fmt: skip
    assert tuned.backbone.interactions[0].avg_num_neighbors == value
