"""Shared fixtures: a per-session cache directory holding the real QM9 store (built once, ~6 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """Refuse to test anything but this checkout (subprocesses import ``atomzoo`` the same way)."""
    import atomzoo

    where = Path(atomzoo.__file__).resolve().parent
    if where != ROOT / "zoo":
        raise pytest.UsageError(
            f"atomzoo is imported from {where}, not from this checkout ({ROOT}): "
            f"run `pip install -e {ROOT}` in this environment first"
        )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """An ``ATOMZOO_CACHE`` for the whole session, so tests never touch the user's cache."""
    path = tmp_path_factory.mktemp("atomzoo-cache")
    old = os.environ.get("ATOMZOO_CACHE")
    os.environ["ATOMZOO_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ATOMZOO_CACHE", None)
    else:
        os.environ["ATOMZOO_CACHE"] = old


@pytest.fixture(scope="session")
def qm9(cache_dir):
    """A set-up QM9DataModule on the real qm9pack data (HOMO and U0), standard split."""
    from atomzoo.datamodules import QM9DataModule

    dm = QM9DataModule(targets=["homo", "u0"], cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    return dm
