"""The ``zoo`` command end to end: every shipped config parses, the composition form trains, the
quickstart fits and tests on real QM9, and the console script is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from atomzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
DATA = str(ROOT / "configs/data/qm9.yaml")
REGRESSION = str(ROOT / "configs/objectives/regression.yaml")
SCHNET = str(ROOT / "configs/backbones/schnet.yaml")
TINY_SCHNET = ["--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
               "--model.backbone.init_args.num_interactions", "1"]


def composed(config: Path) -> list[str]:
    """The arguments that make ``config`` a complete experiment (partial files are composed)."""
    group = config.parent.name
    if group == "backbones":
        return ["-c", DATA, "-c", REGRESSION, "--model.backbone", str(config)]
    if group == "objectives":
        return ["-c", DATA, "-c", str(config), "--model.backbone", SCHNET]
    if group == "data":
        return ["-c", str(config), "-c", REGRESSION, "--model.backbone", SCHNET]
    if group == "trainer":
        return ["-c", DATA, "-c", REGRESSION, "--model.backbone", SCHNET, "-c", str(config)]
    return ["-c", str(config)]


def test_configs_exist():
    names = {c.relative_to(ROOT / "configs").as_posix() for c in CONFIGS}
    assert {"quickstart.yaml", "data/qm9.yaml", "objectives/regression.yaml", "backbones/schnet.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.relative_to(ROOT / "configs").as_posix())
def test_print_config_of_every_shipped_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", *composed(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith(("atomzoo.objectives.", "examples."))
    assert printed["data"]["class_path"].startswith("atomzoo.datamodules.")
    assert printed["model"]["init_args"]["backbone"]["class_path"]
    # shared options declared once on the base classes reach every DataModule and objective
    # through **kwargs; if that resolution broke they would silently vanish from the CLI
    assert {"batch_size", "split_seed", "corruption_rate", "num_workers"} <= set(printed["data"]["init_args"])
    assert {"lr", "warmup_steps", "ema_decay", "init_from", "freeze_backbone"} <= set(printed["model"]["init_args"])
    if config.parent.name == "backbones":
        own = yaml.safe_load(config.read_text())
        assert printed["model"]["init_args"]["backbone"]["class_path"] == own["class_path"]


def common(tmp_path) -> list[str]:
    return ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_composition_form_with_overrides(cache_dir, tmp_path):
    cli = run(["fit", "-c", DATA, "-c", REGRESSION, "--model.backbone", SCHNET, *TINY_SCHNET,
               "--data.targets", "[homo, lumo]", "--data.train_size", "64", "--data.batch_size", "16",
               "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--model.lr", "1e-3",
               *common(tmp_path)])
    model = cli.model
    assert type(model).__name__ == "Regression" and model.targets == ["homo", "lumo"]
    assert model.backbone.width == 16 and len(model.backbone.interactions) == 1
    assert model.lr == 1e-3 and cli.trainer.global_step == 3
    run_dir = Path(cli.trainer.log_dir)
    assert (run_dir / "config.yaml").exists() and (run_dir / "splits.npz").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_test_after_fit_records_the_splits(cache_dir, tmp_path):
    """``--test_after_fit true`` sets the data up before the trainer exists (to refuse an empty test split);
    the run directory must still record which molecules were trained, validated and tested on."""
    cli = run(["fit", "-c", DATA, "-c", REGRESSION, "--model.backbone", SCHNET, *TINY_SCHNET,
               "--data.targets", "[homo]", "--data.train_size", "32", "--data.batch_size", "16",
               "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
               "--test_after_fit", "true", *common(tmp_path)])
    splits = np.load(Path(cli.trainer.log_dir) / "splits.npz")
    for name in ("train", "val", "test"):
        assert np.array_equal(splits[name], cli.datamodule.splits[name])


def test_quickstart_fit_then_test(cache_dir, tmp_path):
    """The README's main job at tiny scale: fit a few steps, test the best checkpoint, then `zoo test`."""
    quick = str(ROOT / "configs/quickstart.yaml")
    tiny = [*TINY_SCHNET, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
            "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", *common(tmp_path)]
    cli = run(["fit", "-c", quick, *tiny])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best
    fitted = float(cli.trainer.callback_metrics["test/homo_mae_meV"])
    run_dir = Path(cli.trainer.log_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    tested = run(["test", "-c", str(run_dir / "config.yaml"), "--ckpt_path", str(last),
                  "--trainer.limit_test_batches", "2", "--trainer.logger", "false"])
    metric = float(tested.trainer.callback_metrics["test/homo_mae_meV"])
    # both numbers are the MAE in meV of that checkpoint on the first 2 test batches, recomputed here
    dm = tested.datamodule
    for ckpt, reported in ((best, fitted), (last, metric)):
        model = type(cli.model).load_from_checkpoint(ckpt).eval()
        errors = []
        for i, batch in zip(range(2), dm.test_dataloader()):
            with torch.no_grad():
                errors.append((model(batch)[:, 0] - batch.y[:, 0].double()).abs())
        expected = float(torch.cat(errors).mean()) * 1000.0  # eV -> meV
        assert reported == pytest.approx(expected, rel=1e-5), ckpt


def test_bad_option_names_the_key(capsys):
    with pytest.raises(SystemExit):
        run(["fit", "-c", DATA, "-c", REGRESSION, "--model.backbone", SCHNET, "--model.not_an_option", "1"])
    assert "not_an_option" in capsys.readouterr().err


def test_console_script_installed():
    # the environment's own script directory first (a venv that is not activated), then PATH
    exe = shutil.which("zoo", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert exe, "the `zoo` console script is not installed: install with pip install -e ."
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fit" in out.stdout and "test" in out.stdout


#: warning lines a plain `zoo fit` may print, each with the reason the user cannot avoid it (none today)
ALLOWED_WARNINGS: tuple[str, ...] = ()


def test_plain_zoo_fit_prints_no_warning_the_user_cannot_act_on(cache_dir, tmp_path):
    """Issue 32 item 6: the console script, as a user runs it (fit, validation, test after fit), prints
    no Python warning (``file.py:123: message``) and no Lightning tip. Lightning's own notices for a
    budget this small (log_every_n_steps larger than the epoch) are avoided by the options."""
    exe = shutil.which("zoo", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    small = ["--model.init_args.backbone.init_args.width", "16", "--model.init_args.backbone.init_args.num_filters", "16",
             "--model.init_args.backbone.init_args.num_interactions", "1"]
    cmd = [exe, "fit", "-c", str(ROOT / "configs/experiments/rmd17_fixture_forces.yaml"),
           "--data.init_args.root", str(ROOT / "tests/data/md17_fixture"), "--data.init_args.cache_dir", str(cache_dir),
           *small, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "2"]
    # Python's default filters, as a user's shell has them (DeprecationWarnings of libraries hidden)
    # and no variable a library imported by another test left in this process (mace-torch sets
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD on import; atomzoo's own import restores it)
    unset = {"PYTHONWARNINGS", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs/rmd17_fixture_forces/version_0/test_metrics.json").is_file()  # fit, then test, ran
    lines = (done.stderr + done.stdout).splitlines()
    noise = [line for line in lines if re.search(r"\.py:\d+: |Warning|Tip:", line)
             and not any(allowed in line for allowed in ALLOWED_WARNINGS)]
    assert noise == []


def test_import_atomzoo_from_the_clones_parent_folder_gets_the_installed_package(tmp_path):
    """Issue 32 item 2: a script next to a clone named ``atomzoo`` (git clone's default name) imports the
    installed package, not the clone as an empty namespace package (the root ``__init__.py`` guard)."""
    (tmp_path / "atomzoo").symlink_to(ROOT, target_is_directory=True)
    (tmp_path / "my_script.py").write_text("import atomzoo, atomzoo.backbones\nprint(atomzoo.__file__, atomzoo.load.__name__)\n")
    installed = str(ROOT / "zoo" / "__init__.py")
    for cmd in ([sys.executable, "my_script.py"], [sys.executable, "-c", "import atomzoo; print(atomzoo.__file__, atomzoo.load.__name__)"]):
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        path, name = done.stdout.split()
        assert name == "load" and Path(path).resolve() == Path(installed).resolve()
    # without atomzoo installed: one error naming the clone and the fix
    isolated = [sys.executable, "-S", "-c", "import atomzoo"]  # -S: no site-packages, hence no atomzoo
    done = subprocess.run(isolated, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert f"`import atomzoo` found {tmp_path / 'atomzoo'}, a clone of the atomzoo repository" in done.stderr
    assert "pip install -e" in done.stderr



def test_checkpoint_monitor_chooses_the_tested_checkpoint_by_that_metric(cache_dir, tmp_path, capsys):
    """``--checkpoint_monitor val/homo_mae_meV``: with two targets ``val/loss`` averages both, so the best
    checkpoint (the one --test_after_fit tests) must be the one of least HOMO MAE, its score in meV."""
    import csv

    args = ["fit", "-c", DATA, "-c", REGRESSION, "--model.backbone", SCHNET, *TINY_SCHNET,
            "--data.targets", "[homo, lumo]", "--data.train_size", "32", "--data.batch_size", "16",
            "--trainer.max_steps", "5", "--trainer.val_check_interval", "1", "--trainer.check_val_every_n_epoch",
            "null", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2", "--model.lr", "5e-3",
            "--model.warmup_steps", "0", *common(tmp_path), "--trainer.logger.class_path",
            "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = run([*args, "--checkpoint_monitor", "val/homo_mae_meV", "--test_after_fit", "true"])
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/homo_mae_meV"
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        logged = [(int(r["step"]), float(r["val/homo_mae_meV"])) for r in csv.DictReader(f) if r["val/homo_mae_meV"]]
    assert len(logged) == 5
    best_step, best_mae = min(logged, key=lambda x: x[1])
    assert float(checkpoint.best_model_score) == pytest.approx(best_mae, rel=1e-6)
    assert Path(checkpoint.best_model_path).name.endswith(f"-{best_step + 1}.ckpt")
    assert "best by val/homo_mae_meV" in capsys.readouterr().err
    from atomzoo.cli import main

    with pytest.raises(SystemExit):
        main([*args, "--checkpoint_monitor", "homo_mae_meV"])
    assert "--checkpoint_monitor homo_mae_meV: the best checkpoint is chosen by a validation metric" in \
        capsys.readouterr().err


def test_validation_logs_the_embedding_diagnostics_without_changing_training(cache_dir, tmp_path):
    """Denoising with diagnostics on: every validation logs ``val/emb_std``, ``val/emb_erank`` and
    ``val/emb_sigreg`` of the validation molecules' embedding (equal to the statistics recomputed from the
    final weights), and training is bit-identical to the same run without any diagnostics (they draw no
    random numbers: a studied run and its remake without them train alike)."""
    from atomzoo.objectives.diagnostics import collapse_statistics

    base = ["fit", "-c", DATA, "-c", str(ROOT / "configs/objectives/denoising.yaml"), "--model.backbone", SCHNET,
            *TINY_SCHNET, "--data.targets", "null", "--data.train_size", "64", "--data.batch_size", "16",
            "--data.eval_batch_size", "16", "--trainer.max_steps", "4", "--trainer.check_val_every_n_epoch", "null",
            "--model.warmup_steps", "0", "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "2",
            *common(tmp_path)]
    validated = run([*base, "--model.diagnostics_every_n_steps", "1"])
    metrics = validated.trainer.callback_metrics
    assert {"val/emb_std", "val/emb_erank", "val/emb_sigreg"} <= set(metrics)
    model = validated.model.eval()
    stats = []
    for _, batch in zip(range(2), validated.datamodule.val_dataloader()):
        with torch.no_grad():
            terms = model.evaluation_terms(batch, model.evaluation_generator(len(stats)))
        stats.append(collapse_statistics(terms["embedding"]))
    for name in ("emb_std", "emb_erank", "emb_sigreg"):  # two full batches of 16: the plain mean
        assert float(metrics[f"val/{name}"]) == pytest.approx(float(sum(s[name] for s in stats) / 2), rel=1e-5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identity needs one thread (a multi-threaded scatter may add in any order)
    try:
        once = run([*base, "--model.diagnostics_every_n_steps", "1"])
        plain = run([*base, "--model.diagnostics_every_n_steps", "0"])
    finally:
        torch.set_num_threads(threads)
    assert "val/emb_std" not in plain.trainer.callback_metrics
    for (name, a), b in zip(once.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name
