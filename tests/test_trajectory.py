"""TrajectoryDataModule: the three formats (ids, time step, temperature), windows, batches, and splits that cannot leak.

Data: the committed GFN2-xTB fixture (tests/data/trajectories/xtb_qm9_md.extxyz: 4 QM9 molecules,
100 frames 5 fs apart, 300-600 K), the MD17-format ethanol fixture (tests/data/md17_fixture, frames
5 fs apart) and ASE ``.traj`` files written by ASE's own Langevin dynamics (EMT, a few steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.md.langevin import Langevin

from atomzoo.datamodules import TrajectoryDataModule
from atomzoo.datamodules.checks import DataFormatError
from atomzoo.datamodules.md17 import KCALMOL_EV

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "trajectories" / "xtb_qm9_md.extxyz"
MD17 = DATA / "md17_fixture" / "md17_ethanol.npz"
RMD17 = DATA / "md17_fixture" / "rmd17" / "npz_data" / "rmd17_ethanol.npz"
IDS = ["xtb_qm9_md:gdb11_300K", "xtb_qm9_md:gdb51_400K", "xtb_qm9_md:gdb104_500K", "xtb_qm9_md:gdb4211_600K"]


def fixture_module(tmp_path, **options) -> TrajectoryDataModule:
    options = {"split": "time", "horizons": [1, 3], "batch_size": 4, **options}
    dm = TrajectoryDataModule(str(FIXTURE), cache_dir=str(tmp_path / "cache"), **options)
    dm.setup("fit")
    return dm


def ase_md(path: Path, steps: int, interval: int, dt_fs: float = 1.0, temperature: float = 350.0, name: str = "CH3OH"):
    """An ASE Langevin trajectory file exactly as ASE writes it (EMT forces)."""
    atoms = molecule(name)
    atoms.calc = EMT()
    dyn = Langevin(atoms, dt_fs * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False,
                   trajectory=str(path), loginterval=interval, rng=np.random.default_rng(0))  # fmt: skip
    dyn.run(steps)
    return path


# ----- formats ---------------------------------------------------------------------------------------
def test_extxyz_ids_time_step_temperature_and_labels_from_the_file(tmp_path):
    dm = fixture_module(tmp_path)
    table = dm.trajectory_table
    assert dm.trajectory_ids == IDS
    assert [t["frames"] for t in table] == [100] * 4 and [t["first_row"] for t in table] == [0, 100, 200, 300]
    assert [t["time_step_fs"] for t in table] == [5.0] * 4
    assert [t["temperature_K"] for t in table] == [300.0, 400.0, 500.0, 600.0]
    frames = read(FIXTURE, ":")
    store = dm.store
    assert len(store) == len(frames) == 400
    k = 250  # third trajectory, frame 50
    a, b = store.offsets[k], store.offsets[k + 1]
    assert np.allclose(store.arrays["pos"][a:b], frames[k].positions, atol=1e-6)
    assert np.allclose(store.arrays["forces"][a:b], frames[k].get_forces(), atol=1e-5)
    assert store.arrays["labels"][k, 0] == pytest.approx(frames[k].get_potential_energy())
    assert store.arrays["trajectory"][k] == 2 and store.arrays["frame"][k] == 50 and store.arrays["time"][k] == 250.0
    assert store.meta["label_names"] == ["energy"] and store.meta["force_unit"] == "eV/A"
    # a recorded value and a contradicting option: refused; the same value: accepted
    recorded = "records a time step between frames of 5 fs but --data.init_args.time_step is 2"
    with pytest.raises(DataFormatError, match=recorded):
        TrajectoryDataModule(str(FIXTURE), time_step=2.0, cache_dir=str(tmp_path / "c2")).setup()
    TrajectoryDataModule(str(FIXTURE), time_step=5.0, temperature=None, cache_dir=str(tmp_path / "c3")).setup()


def test_ase_traj_time_step_and_temperature_from_the_md_header(tmp_path):
    folder = tmp_path / "md"
    folder.mkdir()
    ase_md(folder / "methanol.traj", steps=40, interval=4, dt_fs=0.5, temperature=350.0)
    ase_md(folder / "ethanol.traj", steps=30, interval=3, dt_fs=1.0, temperature=450.0, name="CH3CH2OH")
    dm = TrajectoryDataModule(str(folder), history=2, horizons=1, split="trajectory", num_train=1, num_val=1,
                              num_test=0, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    dm.setup()
    table = {t["id"]: t for t in dm.trajectory_table}
    assert sorted(table) == ["ethanol", "methanol"]  # file stems, files read in sorted order
    assert table["methanol"]["time_step_fs"] == pytest.approx(2.0)  # 0.5 fs x loginterval 4
    assert table["ethanol"]["time_step_fs"] == pytest.approx(3.0)
    assert table["methanol"]["temperature_K"] == 350.0 and table["ethanol"]["temperature_K"] == 450.0
    assert table["methanol"]["frames"] == 11 and table["ethanol"]["frames"] == 11  # step 0 and every interval
    assert dm.store.meta["label_names"] == ["energy"]  # the MD's calculator results are kept


def test_traj_without_a_header_needs_the_options(tmp_path):
    frames = read(ase_md(tmp_path / "a.traj", steps=8, interval=2), ":")
    write(tmp_path / "plain.traj", frames)  # written by hand: no MD description
    dm = TrajectoryDataModule(str(tmp_path / "plain.traj"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataFormatError, match="does not record the time step between frames; give it with "
                                              "--data.init_args.time_step"):  # fmt: skip
        dm.setup()
    dm = TrajectoryDataModule(str(tmp_path / "plain.traj"), time_step=2.0, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataFormatError, match="--data.init_args.temperature"):
        dm.setup()
    dm = TrajectoryDataModule(str(tmp_path / "plain.traj"), time_step=2.0, temperature=300, split="time",
                              history=1, cache_dir=str(tmp_path / "c"), num_train=0.5, num_val=0.0)  # fmt: skip
    dm.setup()
    assert dm.trajectory_table[0]["time_step_fs"] == 2.0 and dm.trajectory_table[0]["temperature_K"] == 300.0


def test_md17_npz_is_one_trajectory_and_rmd17_is_refused(tmp_path):
    with pytest.raises(DataFormatError, match="time step between frames \\(MD17: 0.5 fs\\)"):
        TrajectoryDataModule(str(MD17), temperature=500, cache_dir=str(tmp_path / "c")).setup()
    dm = TrajectoryDataModule(str(MD17), time_step=5.0, temperature=500, split="time", cache_dir=str(tmp_path / "c"))
    dm.setup()
    raw = np.load(MD17)
    assert dm.trajectory_ids == ["md17_ethanol"] and dm.trajectory_table[0]["frames"] == 500
    assert np.allclose(dm.store.arrays["labels"][:, 0], raw["E"][:, 0] * KCALMOL_EV)
    assert np.allclose(dm.store.arrays["pos"][9 * 7:9 * 8], raw["R"][7], atol=1e-6)
    with pytest.raises(DataFormatError) as err:
        TrajectoryDataModule(str(RMD17), time_step=0.5, temperature=500, cache_dir=str(tmp_path / "c")).setup()
    message = str(err.value)
    assert "\n" not in message and "rMD17" in message and "not time-ordered" in message


def test_frames_out_of_time_order_or_changing_atoms_are_refused(tmp_path):
    frames = read(FIXTURE, ":10")
    frames[4].info["time"], frames[5].info["time"] = frames[5].info["time"], frames[4].info["time"]
    write(tmp_path / "shuffled.extxyz", frames)
    with pytest.raises(DataFormatError, match="'time' does not increase at frame 5"):
        TrajectoryDataModule(str(tmp_path / "shuffled.extxyz"), cache_dir=str(tmp_path / "c")).setup()
    mixed = read(FIXTURE, ":3") + read(FIXTURE, "100:103")
    for f in mixed:
        f.info["trajectory"] = "one"
    write(tmp_path / "mixed.extxyz", mixed)
    with pytest.raises(DataFormatError, match="changes its atoms at frame 3"):
        TrajectoryDataModule(str(tmp_path / "mixed.extxyz"), cache_dir=str(tmp_path / "c")).setup()
    interleaved = read(FIXTURE, ":3") + read(FIXTURE, "100:103") + read(FIXTURE, "3:5")
    write(tmp_path / "interleaved.extxyz", interleaved)
    with pytest.raises(DataFormatError, match="continues at frame 6 after another trajectory"):
        TrajectoryDataModule(str(tmp_path / "interleaved.extxyz"), cache_dir=str(tmp_path / "c")).setup()


# ----- windows and batches -----------------------------------------------------------------------------
def test_windows_hold_consecutive_frames_of_one_trajectory(tmp_path):
    dm = fixture_module(tmp_path, history=3, history_stride=2, horizons=[1, 4])
    store = dm.store
    for split in ("train", "val", "test"):
        w = dm.windows(split)
        assert w.shape[1] == 4 and w.shape[0] > 0
        traj, frame = store.arrays["trajectory"][w], store.arrays["frame"][w]
        assert (traj == traj[:, :1]).all()  # one trajectory per window
        assert (np.diff(frame[:, :3], axis=1) == 2).all()  # history stride 2, oldest first
        horizons = set(np.unique(frame[:, 3] - frame[:, 2]).tolist())  # target k frames after the last history frame
        # (val / test blocks hold 8 frames: too short for a window spanning 2 x 2 + 4 = 8 frame steps)
        assert horizons == ({1, 4} if split == "train" else {1})
    assert dm.span == 2 * 2 + 4 and dm.gap == dm.span


def test_a_batch_is_one_pyg_batch_of_the_window_frames_with_its_structure(tmp_path):
    dm = fixture_module(tmp_path, history=3, horizons=[1, 3])
    dataset = dm.dataset("val")
    positions = [0, 5, len(dataset) - 1]
    batch = dataset.collate(positions)
    rows = dm.windows("val")[positions]
    assert batch.num_graphs == 3 * 4
    assert torch.equal(batch.idx, torch.from_numpy(rows.reshape(-1)))  # window-major, history then target
    assert torch.equal(batch.window, torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    assert torch.equal(batch.window_position, torch.tensor([0, 1, 2, 3] * 3))
    frame = dm.store.arrays["frame"]
    k = frame[rows[:, 3]] - frame[rows[:, 2]]
    assert torch.allclose(batch.horizon, torch.tensor(k * 5.0, dtype=torch.float32))  # fs
    traj = dm.store.arrays["trajectory"][rows[:, 0]]
    assert torch.equal(batch.trajectory, torch.from_numpy(traj))
    assert torch.equal(batch.temperature, torch.tensor([300.0, 400.0, 500.0, 600.0])[batch.trajectory])
    assert torch.allclose(batch.time, torch.from_numpy(frame[rows[:, 2]] * 5.0).float())
    # the frames are the store's: graph g of the batch is store row idx[g]
    g = 7
    a, b = dm.store.offsets[int(batch.idx[g])], dm.store.offsets[int(batch.idx[g]) + 1]
    stored = torch.from_numpy(np.array(dm.store.arrays["pos"][a:b]))
    assert torch.equal(batch.pos[batch.ptr[g]:batch.ptr[g + 1]], stored)
    # the training loader yields such batches (batch_size windows, shuffled)
    loaded = next(iter(dm.train_dataloader()))
    assert loaded.horizon.shape == (4,) and loaded.num_graphs == 16 and loaded.window.max() == 3


# ----- splits --------------------------------------------------------------------------------------------
def shared_frames(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.intersect1d(a.reshape(-1), b.reshape(-1)).size)


def test_a_random_split_of_windows_leaks_and_ours_cannot(tmp_path):
    dm = fixture_module(tmp_path, history=3, horizons=[1, 3])
    # the naive split: every window of every trajectory, shuffled, cut 80 / 20
    every = np.concatenate([dm.window_rows(t["first_row"], 0, t["frames"])[0] for t in dm.trajectory_table])
    perm = np.random.default_rng(0).permutation(len(every))
    cut = int(0.8 * len(every))
    naive_train, naive_test = every[perm[:cut]], every[perm[cut:]]
    leaked = np.isin(naive_test, naive_train).all(axis=1).mean()
    assert shared_frames(naive_train, naive_test) > 0.9 * np.unique(naive_test).size
    assert leaked > 0.9  # measured: every one of the 154 test windows consists of training frames
    assert np.isin(naive_test[:, -1], naive_train).mean() > 0.9  # test targets are training frames
    # ours, by time block: no shared frame, and no training frame within `gap` frames of a val/test frame
    store = dm.store
    train = dm.windows("train")
    for split in ("val", "test"):
        other = dm.windows(split)
        assert shared_frames(train, other) == 0
        for t in range(4):
            tf = store.arrays["frame"][np.unique(train)][store.arrays["trajectory"][np.unique(train)] == t]
            of = store.arrays["frame"][np.unique(other)][store.arrays["trajectory"][np.unique(other)] == t]
            assert tf.size and of.size
            assert np.abs(tf[:, None] - of[None, :]).min() > dm.gap >= dm.span
    assert shared_frames(dm.windows("val"), dm.windows("test")) == 0
    assert set(dm.splits["train"]) == set(np.unique(train))  # the base class sees exactly these frames
    # ours, by trajectory: every trajectory in one split only
    by_traj = TrajectoryDataModule(str(FIXTURE), split="trajectory", num_train=2, num_val=1, num_test=1,
                                   horizons=[1, 3], cache_dir=str(tmp_path / "cache"))  # fmt: skip
    by_traj.setup()  # (for `fit` it would refuse: N and F are in 1 and 2 of the 4 molecules, not all in train)
    owners = {s: set(store.arrays["trajectory"][by_traj.windows(s)].reshape(-1)) for s in ("train", "val", "test")}
    assert [len(o) for o in owners.values()] == [2, 1, 1]
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    assert not (owners["val"] & owners["test"])


def test_split_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="gap=2 frames is shorter than the window span 4"):
        TrajectoryDataModule(str(FIXTURE), history=3, horizons=2, gap=2)
    with pytest.raises(ValueError, match="split_file is not supported"):
        TrajectoryDataModule(str(FIXTURE), split_file="splits.npz")
    with pytest.raises(ValueError, match="num_train=50"):
        fixture_module(tmp_path, num_train=50)
    with pytest.raises(ValueError, match="no val windows"):
        fixture_module(tmp_path, history=3, horizons=[1], num_train=0.95, num_val=0.02)
    dm = fixture_module(tmp_path, train_size=10)
    assert dm.windows("train").shape[0] == 10
    assert set(dm.splits["train"]) == set(np.unique(dm.windows("train")))
