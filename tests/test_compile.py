"""``--model.compile``: compiled backbones equal eager ones, do not recompile per batch, fall back cleanly.

Compiling takes 10-40 s per model on this project's 2-core CI machine, so the models are small
(the compiled code's size depends on the number of operations, not on the width).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Batch

from atomzoo.backbones import ET, MACE, PaiNN, SchNet
from atomzoo.nn.compile import _EagerFallback, compile_backbone, compile_unavailable, compiled_graphs

pytestmark = pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="no C++ compiler for inductor")

FACTORIES = {
    "schnet": lambda: SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=8, cutoff=5.0),
    "painn": lambda: PaiNN(width=16, num_interactions=1, num_rbf=8, cutoff=5.0),
    "et": lambda: ET(width=16, num_interactions=1, num_rbf=8, num_heads=2, cutoff=5.0),
    "mace": lambda: MACE(cutoff=5.0, num_bessel=4, max_ell=1, correlation=2, num_interactions=2,
                         hidden_irreps="8x0e+8x1o", radial_MLP=[8], atomic_numbers=[1, 6, 7, 8, 9]),
}
#: compiling e3nn's tensor products takes about 2 minutes even for this tiny MACE
PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name == "mace" else name for name in FACTORIES]


@pytest.fixture(scope="module")
def batches(qm9):
    """Three batches of real QM9 validation molecules with different numbers of molecules and atoms."""
    val = qm9.dataset("val")
    sizes, start, out = (7, 12, 5), 0, []
    for n in sizes:
        out.append(Batch.from_data_list([val[i] for i in range(start, start + n)]))
        start += n
    return out


def assert_close_to_scale(got, want, tolerance, floor=0.0):
    """Float32 agreement relative to the tensor's scale (sums of many terms in another order); ``floor``
    is the smallest scale, for tensors that are zero up to round-off."""
    scale = max(float(want.abs().max()), floor, 1e-12)
    assert float((got - want).abs().max()) <= tolerance * scale, float((got - want).abs().max()) / scale


def energy_and_grads(model, batch):
    pos = batch.pos.detach().clone().requires_grad_(True)
    data = batch.clone()
    data.pos = pos
    out = model(data)
    readout = torch.linspace(-1.0, 1.0, out.scalars.size(-1))  # not the plain sum: layer norms make that constant
    energy = (out.scalars @ readout).square().sum()
    grads = torch.autograd.grad(energy, [pos, *model.parameters()], allow_unused=True)
    return out.scalars.detach(), grads


@pytest.mark.parametrize("name", PARAMS)
def test_compiled_backbone_equals_eager_and_compiles_once(name, batches):
    """Features, position gradients and parameter gradients of the compiled backbone equal eager within
    float32 round-off on three batches of different sizes, and the 2nd and 3rd batch compile no new graph
    (dynamic shapes)."""
    torch.manual_seed(0)
    eager = FACTORIES[name]()
    compiled = FACTORIES[name]()
    compiled.load_state_dict(eager.state_dict())
    assert compile_backbone(compiled)
    assert isinstance(compiled._compiled_call_impl, _EagerFallback)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints unchanged
    graphs_after_first = None
    for k, batch in enumerate(batches):
        want_x, want_g = energy_and_grads(eager, batch)
        got_x, got_g = energy_and_grads(compiled, batch)
        assert_close_to_scale(got_x, want_x, 1e-5)
        largest = max(float(g.abs().max()) for g in want_g if g is not None)
        for got, want in zip(got_g, want_g):
            if want is not None:
                assert_close_to_scale(got, want, 1e-4, floor=1e-2 * largest)
        if k == 0:
            graphs_after_first = compiled_graphs()
            assert graphs_after_first > 0  # it really was compiled
    assert compiled_graphs() == graphs_after_first, "a batch of another size recompiled the backbone"
    assert not compiled._compiled_call_impl.failed


def test_compiler_failure_falls_back_to_eager_with_a_warning(batches):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch.manual_seed(0)
    eager = FACTORIES["schnet"]()
    model = FACTORIES["schnet"]()
    model.load_state_dict(eager.state_dict())
    assert compile_backbone(model, backend=broken_backend)
    with pytest.warns(UserWarning, match="torch.compile failed for SchNet.*running eager"):
        out = model(batches[0])
    torch.testing.assert_close(out.scalars, eager(batches[0]).scalars)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then silently eager
        model(batches[1])


def test_platform_without_a_compiler_runs_eager_and_says_why(monkeypatch):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in compile_unavailable("cpu")
    model = FACTORIES["schnet"]()
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler|none was found.*runs eager"):
        assert not compile_backbone(model)
    assert model._compiled_call_impl is None


def test_force_training_stays_eager_with_a_clear_warning():
    """A force loss differentiates position gradients (double backward): the objective refuses to
    compile for training and says so; energy-only objectives compile."""
    from atomzoo.objectives import Denoising, Regression

    force_model = Regression(FACTORIES["schnet"](), targets=["energy"], forces=True, compile=True)
    assert force_model.trains_through_forces()
    force_model._trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"),
                                           strategy=SimpleNamespace(root_device=torch.device("cpu")))
    with pytest.warns(UserWarning, match="double backward"):
        force_model.configure_model()
    assert force_model.backbone._compiled_call_impl is None
    denoiser = Denoising(FACTORIES["schnet"](), compile=True)
    assert not denoiser.trains_through_forces()
    denoiser._trainer = force_model._trainer
    denoiser.configure_model()
    assert isinstance(denoiser.backbone._compiled_call_impl, _EagerFallback)


def test_zoo_fit_and_test_with_compile(cache_dir, tmp_path):
    """Through the CLI: `--model.compile true` compiles the backbone of a denoising run; with the same
    seed its training loss after 4 steps is eager's (float32 round-off) and its parameter names are
    eager's."""
    from atomzoo.cli import run

    args = [
        "-c", "configs/data/qm9.yaml", "-c", "configs/objectives/denoising.yaml",
        "--model.backbone", "configs/backbones/schnet.yaml", "--data.targets", "null",
        "--data.cache_dir", str(cache_dir), "--data.train_size", "256", "--data.batch_size", "32",
        "--model.backbone.init_args.width", "16", "--model.backbone.init_args.num_filters", "16",
        "--model.backbone.init_args.num_interactions", "2", "--model.backbone.init_args.num_rbf", "8",
        "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    compiled = run(["fit", *args, "--model.compile", "true"])
    eager = run(["fit", *args])
    assert isinstance(compiled.model.backbone._compiled_call_impl, _EagerFallback)
    assert not compiled.model.backbone._compiled_call_impl.failed
    assert eager.model.backbone._compiled_call_impl is None
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    assert "compile" in compiled.model.hparams  # the run's own record; checkpoints leave it out (next test)
    # same seed, same batches, same weights: the same training trajectory up to float32 round-off
    got, want = compiled.trainer.callback_metrics["train/loss"], eager.trainer.callback_metrics["train/loss"]
    assert abs(float(got) - float(want)) <= 1e-3 * abs(float(want))


def test_zoo_test_of_a_force_model_compiles_and_matches_eager(force_checkpoint):
    """Forces at evaluation are a single backward: `zoo test --model.compile true` compiles and reports
    the eager run's energy and force errors (the checkpoint does not carry `compile`, which Lightning's
    CLI would otherwise apply over the command line)."""
    from atomzoo.cli import run

    run_dir = force_checkpoint.parent.parent
    common = ["test", "-c", str(run_dir / "config.yaml"), "--ckpt_path", str(force_checkpoint),
              "--trainer.limit_test_batches", "2", "--trainer.logger", "false"]  # fmt: skip
    compiled = run([*common, "--model.compile", "true"])
    eager = run(common)
    assert isinstance(compiled.model.backbone._compiled_call_impl, _EagerFallback)
    assert not compiled.model.backbone._compiled_call_impl.failed
    for key in ("test/forces_mae_meV_per_A", "test/energy_mae_meV"):
        got, want = float(compiled.trainer.callback_metrics[key]), float(eager.trainer.callback_metrics[key])
        assert abs(got - want) <= 1e-3 * want, key


def test_compile_checks_the_device_the_strategy_runs_on():
    """Lightning calls configure_model before moving the model: the platform check must look at the
    strategy's device (here a CUDA device without Triton), not at the CPU the weights still sit on."""
    import importlib.util

    from atomzoo.objectives import Denoising

    if importlib.util.find_spec("triton") is not None:
        pytest.skip("Triton is installed: a CUDA target would compile")
    model = Denoising(FACTORIES["schnet"](), compile=True)
    model._trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"),
                                     strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    with pytest.warns(UserWarning, match="Triton"):
        model.configure_model()
    assert model.backbone._compiled_call_impl is None
