"""WorldModel: trains through `zoo fit` with every shipped backbone config on the committed GFN2-xTB
trajectories, its loss falls, each loss term is the documented one (recomputed here from the parts),
the target embedding receives gradient (no stop-gradient), the action conditions the predictor
through AdaLN-zero, and its backbone fine-tunes through ``init_from``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from atomzoo.backbones import SchNet
from atomzoo.cli import run
from atomzoo.datamodules import TrajectoryDataModule
from atomzoo.objectives import Regression, WorldModel
from atomzoo.objectives.sigreg import sigreg

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "trajectories" / "xtb_qm9_md.extxyz"
BACKBONES = sorted(p.stem for p in (ROOT / "configs/backbones").glob("*.yaml"))
#: small widths of each shipped backbone config (the objective config is used as shipped)
SMALL = {
    "schnet": {"width": 32, "num_filters": 32, "num_interactions": 2, "num_rbf": 16},
    "painn": {"width": 32, "num_interactions": 2},
    "et": {"width": 32, "num_interactions": 2, "num_heads": 4},
    "mace": {"hidden_irreps": "16x0e+16x1o", "correlation": 2, "max_ell": 2, "radial_MLP": "[16, 16]"},
}
SLOW = {"mace"}
SCHNET = {"width": 32, "num_filters": 32, "num_interactions": 2, "num_rbf": 16, "cutoff": 5.0}


def logger_option(logger_class: str, **init_args) -> str:
    """``--trainer.logger`` value: a Lightning logger class with its arguments, as JSON."""
    return json.dumps({"class_path": f"lightning.pytorch.loggers.{logger_class}", "init_args": init_args})


def zoo_fit(tmp_path, backbone: str, *extra: str, logger: str = "false"):
    args = ["fit", "-c", str(ROOT / "configs/data/trajectories.yaml"),
            "-c", str(ROOT / "configs/objectives/world_model.yaml"),
            "--model.backbone", str(ROOT / f"configs/backbones/{backbone}.yaml"),
            *(a for k, v in SMALL[backbone].items() for a in (f"--model.backbone.init_args.{k}", str(v))),
            "--data.init_args.path", str(FIXTURE), "--data.cache_dir", str(tmp_path / "cache"),
            "--data.batch_size", "8", "--data.eval_batch_size", "16", "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger", logger, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path), *extra]  # fmt: skip
    return run(args)


@pytest.mark.parametrize("backbone", [pytest.param(b, marks=pytest.mark.slow) if b in SLOW else b for b in BACKBONES])
def test_trains_with_every_shipped_backbone_through_zoo_fit(backbone, tmp_path):
    assert {"schnet", "painn", "mace", "et"} <= set(BACKBONES) and set(BACKBONES) <= set(SMALL)
    cli = zoo_fit(tmp_path, backbone, "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2",
                  "--trainer.limit_val_batches", "2", "--trainer.callbacks", "[]",
                  "--trainer.enable_checkpointing", "false")  # fmt: skip
    model, m = cli.model, {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert isinstance(model, WorldModel) and cli.trainer.global_step == 2
    assert {"train/loss", "train/pred_loss", "train/sigreg", "train/persistence_loss", "val/loss", "val/pred_loss",
            "train/emb_std", "train/emb_erank", "train/emb_sigreg"} <= set(m)  # fmt: skip
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
    assert m["train/loss"] == pytest.approx(m["train/pred_loss"] + 0.1 * m["train/sigreg"], rel=1e-5)
    assert m["train/emb_std"] > 0
    # LeWM's optimiser from the shipped config: AdamW lr 5e-5, weight decay 1e-3, gradient clipping 1.0
    assert model.lr == 5e-5 and model.weight_decay == 1e-3 and cli.trainer.gradient_clip_val == 1.0
    assert model.sigreg_slices == 1024 and len(model.predictor.blocks) == 6


def test_loss_falls_over_a_few_dozen_steps_on_the_real_trajectories(tmp_path):
    cli = zoo_fit(tmp_path, "schnet", "--model.lr", "1e-3", "--model.warmup_steps", "5", "--model.predictor_depth", "2",
                  "--data.batch_size", "16", "--trainer.max_steps", "40", "--trainer.limit_train_batches", "10",
                  "--trainer.limit_val_batches", "4", "--trainer.log_every_n_steps", "1", "--trainer.callbacks", "[]",
                  "--trainer.enable_checkpointing", "false",
                  logger=logger_option("CSVLogger", save_dir=str(tmp_path)))  # fmt: skip
    (log,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(log.open()))
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    pred = [float(r["train/pred_loss"]) for r in rows if r.get("train/pred_loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert cli.trainer.global_step == 40 and len(train) == 40 and len(val) == 4
    first, last = sum(train[:5]) / 5, sum(train[-5:]) / 5
    assert last < 0.7 * first, (first, last)  # measured: 0.74 -> 0.32
    assert sum(pred[-5:]) < 0.5 * sum(pred[:5])
    assert val[-1] < val[0]


def window_batch(tmp_path, windows: int = 8):
    dm = TrajectoryDataModule(str(FIXTURE), split="time", horizons=[1, 3], cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    return dm.dataset("train").collate(list(range(0, 20 * windows, 20)))


def small_model(**options) -> WorldModel:
    torch.manual_seed(0)
    options = {"predictor_depth": 2, "predictor_heads": 4, "predictor_head_dim": 16, "predictor_mlp": 64, **options}
    return WorldModel(SchNet(**SCHNET), **options)


def test_each_loss_term_is_the_documented_one(tmp_path):
    batch = window_batch(tmp_path)
    model = small_model().eval()  # eval: no dropout, BatchNorm with fixed statistics -- the same numbers twice
    terms = model.compute_loss(batch)
    # the parts, recomputed: encoder on every frame, windows assembled by (window, window_position)
    z = model(batch)
    windows, positions = 8, 4
    rows = [[int(((batch.window == w) & (batch.window_position == p)).nonzero()) for p in range(positions)]
            for w in range(windows)]  # fmt: skip
    frames = z[torch.tensor(rows)]  # [W, P, D]
    history, target = frames[:, :3], frames[:, 3]
    action = model.action_encoder(batch.horizon, batch.temperature)
    pred = model.prediction_head(model.predictor(history, action[:, None].expand(-1, 3, -1))[:, -1])
    mse = ((pred - target) ** 2).sum() / target.numel()  # the target is frame t + k, not t
    reg = sum(sigreg(frames[:, p], 1024, 0, num_knots=17, t_max=3.0) for p in range(positions)) / positions
    assert torch.allclose(terms["pred_loss"], mse, rtol=1e-6, atol=0)
    assert torch.allclose(terms["sigreg"], reg, rtol=1e-6, atol=0)  # every position, history and target
    assert torch.allclose(terms["loss"], mse + 0.1 * reg, rtol=1e-6, atol=0)  # lambda 0.1
    assert torch.allclose(terms["persistence_loss"], ((history[:, -1] - target) ** 2).mean())
    assert torch.allclose(terms["target_std"], target.std(dim=0).mean())
    assert torch.equal(terms["embedding"], frames.reshape(-1, frames.size(-1)))
    assert terms["pred_loss"] > 0 and terms["sigreg"] > 0


def test_the_residual_predictor_starts_at_no_change_and_predicts_the_change(tmp_path):
    """``residual=True`` (not LeWM's): pred = z_t + head(...), the head's last Linear zero-initialised, so at
    step 0 the prediction error is exactly the persistence error; once the head moves, pred - z_t is its output."""
    batch = window_batch(tmp_path)
    model = small_model(residual=True).eval()
    terms = model.compute_loss(batch)
    assert torch.equal(terms["pred_loss"], terms["persistence_loss"]) and terms["pred_loss"] > 0
    with torch.no_grad():
        model.prediction_head.net[-1].bias.fill_(0.5)
    z = model.embed_windows(batch)
    pred = model.predict(z[:, :3], batch.horizon, batch.temperature)
    torch.testing.assert_close(pred - z[:, 2], torch.full_like(pred, 0.5), rtol=0, atol=1e-6)
    # the default is LeWM's absolute prediction: not the last frame at initialisation
    absolute = small_model().eval().compute_loss(batch)
    assert not torch.allclose(absolute["pred_loss"], absolute["persistence_loss"])
    # recorded with the hyperparameters, so a checkpoint rebuilds the same predictor
    assert WorldModel(SchNet(**SCHNET), residual=True).hparams.residual is True


def test_difference_input_feeds_the_normalised_differences_then_the_last_embedding(tmp_path):
    """``predictor_input="differences"`` (not LeWM's): the predictor's tokens are BatchNorm(z_{t-1} - z_{t-2}),
    BatchNorm(z_t - z_{t-1}), z_t; the default feeds the embeddings themselves; the BatchNorm learns the
    differences' statistics in training; an unknown choice is refused naming the option."""
    batch = window_batch(tmp_path)
    seen = {}

    def capture(module, inputs):
        seen["tokens"] = inputs[0].detach().clone()

    for option in ("embeddings", "differences"):
        model = small_model(predictor_input=option, residual=True).eval()
        handle = model.predictor.register_forward_pre_hook(capture)
        with torch.no_grad():
            z = model.embed_windows(batch)
            model.predict(z[:, :3], batch.horizon, batch.temperature)
        handle.remove()
        tokens, history = seen["tokens"], z[:, :3]
        if option == "embeddings":
            assert torch.equal(tokens, history) and model.difference_norm is None
            continue
        assert torch.equal(tokens[:, -1], history[:, -1])  # the last embedding, untouched
        norm = model.difference_norm  # fresh running statistics: mean 0, variance 1
        torch.testing.assert_close(tokens[:, :2], (history[:, 1:] - history[:, :-1]) / (1 + norm.eps) ** 0.5)
        # training mode: the differences are standardised over the batch, and the statistics move
        model.train()
        with torch.no_grad():
            tokens = model.predictor_tokens(history)
        d = tokens[:, :2].reshape(-1, tokens.size(-1))
        torch.testing.assert_close(d.mean(0), torch.zeros_like(d.mean(0)), rtol=0, atol=1e-5)
        assert float(norm.running_var.mean()) < 1.0 and norm.num_batches_tracked == 1
        assert WorldModel(SchNet(**SCHNET), predictor_input="differences").hparams.predictor_input == "differences"
    with pytest.raises(ValueError, match="--model.predictor_input"):
        small_model(predictor_input="deltas")


def test_no_stop_gradient_the_target_embedding_receives_the_mse_gradient(tmp_path):
    batch = window_batch(tmp_path)
    model = small_model().eval()
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["z"] = output

    handle = model.projection.register_forward_hook(keep)
    terms = model.compute_loss(batch)
    handle.remove()
    terms["pred_loss"].backward()
    with torch.no_grad():
        frames = model.embed_windows(batch)
        pred = model.predict(frames[:, :3], batch.horizon, batch.temperature)
        expected = -2.0 * (pred - frames[:, 3]) / pred.numel()  # d MSE / d target
    grad = captured["z"].grad[batch.window_position == 3]  # the target frames, window by window
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-12)


def test_the_action_enters_through_adaln_zero(tmp_path):
    batch = window_batch(tmp_path)
    model = small_model(predictor_dropout=0.0)
    model.eval()
    with torch.no_grad():
        frames = model.embed_windows(batch)
        hot = model.predict(frames[:, :3], batch.horizon, batch.temperature + 300.0)
        cold = model.predict(frames[:, :3], batch.horizon, batch.temperature)
    assert torch.equal(hot, cold)  # zero-initialised modulation: every block starts as the identity
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        model.compute_loss(batch)["loss"].backward()
        assert model.predictor.blocks[0].modulation[-1].weight.grad.abs().sum() > 0
        optimizer.step()
    model.eval()
    with torch.no_grad():
        frames = model.embed_windows(batch)
        hot = model.predict(frames[:, :3], batch.horizon, batch.temperature + 300.0)
        cold = model.predict(frames[:, :3], batch.horizon, batch.temperature)
        far = model.predict(frames[:, :3], batch.horizon * 4, batch.temperature)
    assert not torch.allclose(hot, cold) and not torch.allclose(far, cold)


def test_needs_window_batches_and_enough_history_slots(tmp_path):
    batch = window_batch(tmp_path)
    model = small_model(history=2)
    with pytest.raises(ValueError, match="3 history frames but the predictor covers 2"):
        model.compute_loss(batch)
    del batch.window
    with pytest.raises(ValueError, match="needs window batches"):
        small_model().compute_loss(batch)
    with pytest.raises(ValueError, match="--model.history"):
        small_model(history=0)


def test_init_from_a_world_model_checkpoint_into_regression(tmp_path):
    backbone = {f"--model.backbone.init_args.{k}": str(v) for k, v in SCHNET.items()}
    cli = zoo_fit(tmp_path, "schnet", *(a for kv in backbone.items() for a in kv), "--trainer.max_steps", "3",
                  "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
                  logger=logger_option("TensorBoardLogger", save_dir=str(tmp_path), name="wm"))  # fmt: skip
    (ckpt,) = tmp_path.glob("wm/version_*/checkpoints/last.ckpt")
    trained = cli.model.backbone.state_dict()
    reloaded = WorldModel.load_from_checkpoint(ckpt)
    assert all(torch.equal(v, reloaded.backbone.state_dict()[k]) for k, v in trained.items())
    torch.manual_seed(1)
    fresh = SchNet(**SCHNET).state_dict()
    regression = Regression(SchNet(**SCHNET), targets=["energy"], init_from=str(ckpt))
    state = regression.backbone.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in trained.items())
    assert any(not torch.equal(v, state[k]) for k, v in fresh.items())  # the weights came from the checkpoint
    out = regression.backbone(window_batch(tmp_path, windows=2))
    assert torch.isfinite(out.scalars).all()
