import json
from pathlib import Path

import numpy as np
import pytest

from atomzoo.datamodules.storage import Store, StaleCacheError, StoreWriter, open_or_build


def write_store(path: Path, fingerprint=None, fail=False):
    fingerprint = fingerprint or {"v": 1}
    with StoreWriter(path, fingerprint) as w:
        w.append(atoms={"z": np.array([1, 6, 8], np.uint8), "pos": np.arange(9, dtype=np.float32).reshape(3, 3)},
                 counts=np.array([1, 2]), molecules={"labels": np.array([[1.0], [2.0]])})
        if fail:
            raise RuntimeError("crash while writing")
        w.append(atoms={"z": np.array([7], np.uint8), "pos": np.ones((1, 3), np.float32)},
                 counts=np.array([1]), molecules={"labels": np.array([[3.0]])})
        w.describe(label_names=["x"], label_units=[""], atomic_numbers=[1, 6, 7, 8])


def test_roundtrip(tmp_path):
    write_store(tmp_path / "s")
    store = Store(tmp_path / "s", {"v": 1})
    assert len(store) == 3
    assert store.offsets.tolist() == [0, 1, 3, 4]
    assert store.arrays["z"].tolist() == [1, 6, 8, 7]
    assert store.arrays["labels"][:, 0].tolist() == [1.0, 2.0, 3.0]
    assert store.atom_arrays() == ["z", "pos"] and store.molecule_arrays() == ["labels"]


def test_crash_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="crash"):
        write_store(tmp_path / "s", fail=True)
    assert list(tmp_path.iterdir()) == []


def test_stale_and_corrupt_stores_are_rejected_and_rebuilt(tmp_path):
    path = tmp_path / "s"
    write_store(path)
    with pytest.raises(StaleCacheError, match="other sources"):
        Store(path, {"v": 2})
    # truncated array file
    (path / "pos.bin").write_bytes(b"\x00" * 5)
    with pytest.raises(StaleCacheError, match="wrong size"):
        Store(path, {"v": 1})
    calls = []
    store = open_or_build(path, {"v": 1}, lambda p: (calls.append(p), write_store(p)))
    assert calls and len(store) == 3
    # corrupt meta.json
    (path / "meta.json").write_text("{not json")
    with pytest.raises(StaleCacheError, match="corrupt"):
        Store(path)
    # other format version
    write_store(path)
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 0
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StaleCacheError, match="version"):
        Store(path)


def test_inconsistent_chunks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="counts sum"):
        with StoreWriter(tmp_path / "s", {}) as w:
            w.append(atoms={"z": np.zeros(3, np.uint8)}, counts=np.array([2]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("declare, match", [
    (None, r"did not call StoreWriter.describe"),
    (dict(label_names=["x", "y"], label_units=["", ""], atomic_numbers=[1, 6]), r"'labels' has 1 columns but 2 label names"),
    (dict(label_names=["x"], label_units=[""], atomic_numbers=[1]), r"declared atomic_numbers \[1\] differ from the elements written \[1, 6\]"),
    (dict(label_names=["x"], label_units=[""], atomic_numbers=[1, 6]), r"'forces' array was written without a force_unit"),
])  # fmt: skip
def test_dataset_contract_is_checked_when_the_store_is_written(tmp_path, declare, match):
    with pytest.raises(ValueError, match=match):
        with StoreWriter(tmp_path / "s", {}) as w:
            w.append(atoms={"z": np.array([1, 6], np.uint8), "forces": np.zeros((2, 3), np.float32)},
                     counts=np.array([2]), molecules={"labels": np.ones((1, 1))})
            if declare:
                w.describe(**declare)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_file_overwritten_in_place_is_detected_and_rebuilt(tmp_path):
    """12 bytes of pos.bin overwritten (same size, NaN positions) must not be used silently."""
    import time
    import warnings

    path = tmp_path / "s"
    write_store(path)
    time.sleep(0.05)  # a later edit (on a coarse file-system clock, the build's own tick looks unchanged)
    with open(path / "pos.bin", "r+b") as f:
        f.seek(12)
        f.write(np.full(3, np.nan, np.float32).tobytes())
    with pytest.raises(StaleCacheError, match=r"pos.bin changed after the store was built"):
        Store(path, {"v": 1})
    with pytest.warns(UserWarning, match=r"pos.bin changed after the store was built.*rebuilding"):
        store = open_or_build(path, {"v": 1}, write_store)
    assert np.isfinite(store.arrays["pos"]).all() and store.arrays["pos"][1].tolist() == [3.0, 4.0, 5.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Store(path, {"v": 1})  # the rebuilt store opens without a word
