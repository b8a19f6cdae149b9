"""Shared fixtures: a per-session cache directory holding the real QM9 store (built once, ~6 s)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Skip a test without mace-torch. Not ``pytest.importorskip("mace")``: importing mace itself sets
#: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process (and every subprocess a later test
#: starts); atomzoo's lazy import (:func:`atomzoo.backbones.mace.import_mace`) puts it back.
requires_mace = pytest.mark.skipif(importlib.util.find_spec("mace") is None, reason="mace-torch is not installed")

_WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@pytest.fixture(autouse=True)
def _no_weights_only_override_leaks():
    """Fail the test after which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` appeared in ``os.environ``: code that
    leaves it set turns off torch.load's safe default in the user's process (and warns in Lightning)."""
    before = os.environ.get(_WEIGHTS_ONLY_ENV)
    yield
    after = os.environ.get(_WEIGHTS_ONLY_ENV)
    if after != before:
        if before is None:
            os.environ.pop(_WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[_WEIGHTS_ONLY_ENV] = before
        pytest.fail(f"{_WEIGHTS_ONLY_ENV} changed from {before!r} to {after!r} during this test (an import of mace?)")


def _threads_per_worker() -> None:
    """Under pytest-xdist (``-n N``), give each worker its share of the cores: torch's default, one thread per
    core in every worker, oversubscribes the machine N-fold, and small einsums and convolutions then spend
    most of their time waiting on each other (a shipped-size MACE build on the 2-core dev VM: 2.2 s on one
    thread, about 100 s on torch's default two while other jobs held both cores). Subprocesses the tests
    start inherit the same share through
    ``OMP_NUM_THREADS`` unless it is set already."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 1:
        return
    share = max(1, len(os.sched_getaffinity(0)) // workers) if hasattr(os, "sched_getaffinity") else 1
    if not os.environ.get("OMP_NUM_THREADS", "").isdigit():
        os.environ["OMP_NUM_THREADS"] = str(share)
    import torch

    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


def pytest_configure(config) -> None:
    """Refuse to test anything but this checkout (subprocesses import ``atomzoo`` the same way)."""
    _threads_per_worker()
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


@pytest.fixture(scope="session")
def force_checkpoint(cache_dir, tmp_path_factory) -> Path:
    """``last.ckpt`` of a tiny SchNet energy + force model trained by ``zoo fit`` (in-process) for 60 steps on
    the rMD17 ethanol fixture with configs/experiments/rmd17_fixture_forces.yaml, tested afterwards
    (so its run directory holds config.yaml and test_metrics.json, as a real run's does)."""
    from atomzoo.cli import run

    out = tmp_path_factory.mktemp("force-run")
    small = {"width": 32, "num_filters": 32, "num_interactions": 2, "num_rbf": 16}
    run([
        "fit", "-c", str(ROOT / "configs" / "experiments" / "rmd17_fixture_forces.yaml"),
        "--data.init_args.root", str(ROOT / "tests" / "data" / "md17_fixture"), "--data.init_args.cache_dir", str(cache_dir),
        *(a for k, v in small.items() for a in (f"--model.init_args.backbone.init_args.{k}", str(v))),
        "--trainer.max_steps", "60", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.default_root_dir", str(out),
    ])  # fmt: skip
    (ckpt,) = out.glob("rmd17_fixture_forces/version_*/checkpoints/last.ckpt")
    return ckpt


@pytest.fixture
def fit_on_trajectories(tmp_path):
    """``fit(objective_config, name, *extra) -> last.ckpt``: ``zoo fit`` (in-process) of a small SchNet (32
    wide, 2 interactions, cutoff 5 A) with the objective config (relative to the repository) on the committed
    GFN2-xTB trajectory fixture, 3 steps of 3 batches, validated on 2, logged under ``tmp_path/name``; ``extra``
    are further CLI options. The trajectory store is cached in ``tmp_path/cache``."""
    import json

    from atomzoo.cli import run

    small = {"width": 32, "num_filters": 32, "num_interactions": 2, "num_rbf": 16, "cutoff": 5.0}

    def fit(objective: str, name: str, *extra: str) -> Path:
        logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": str(tmp_path), "name": name}}
        run(["fit", "-c", str(ROOT / "configs/data/trajectories.yaml"), "-c", str(ROOT / objective),
             "--model.backbone", str(ROOT / "configs/backbones/schnet.yaml"),
             *(a for k, v in small.items() for a in (f"--model.backbone.init_args.{k}", str(v))),
             *extra, "--data.init_args.path", str(ROOT / "tests/data/trajectories/xtb_qm9_md.extxyz"),
             "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_steps", "3",
             "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
             "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
             "--trainer.logger", json.dumps(logger), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
        (ckpt,) = tmp_path.glob(f"{name}/version_*/checkpoints/last.ckpt")
        return ckpt

    return fit
