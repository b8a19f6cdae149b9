"""``torch.compile`` for backbones: one option (``--model.compile true``), graph building left eager.

What is compiled: the backbone's ``forward`` (``nn.Module.compile``, so parameter names and
checkpoints are unchanged), with ``dynamic=True`` so that batches of different sizes -- every batch of
molecules has its own number of atoms and edges -- reuse one compiled graph instead of recompiling
per shape. The neighbour list (:func:`atomzoo.nn.graph.build_graph`) has data-dependent output sizes
and is excluded from compilation (``torch.compiler.disable``): it runs eager, the message passing on
its output is compiled.

Limits, each turned into a clear warning and eager execution rather than an error:

* no compiler backend on this platform: inductor needs a C++ compiler on CPU (``g++``/``clang++``, or
  ``CXX``) and Triton on CUDA; when the first compiled call fails in the compiler
  (``BackendCompilerFailed``), the backbone falls back to eager for the rest of the run;
* training through force gradients (``create_graph=True``, e.g. a force loss): ``torch.compile``
  with AOTAutograd does not support double backward (torch 2.13: "torch.compile with aot_autograd
  does not currently support double backward"), so such runs stay eager (evaluation compiles).

Outputs of the compiled backbone equal eager ones within float32 round-off (``tests/test_compile.py``).
Speed and the number of recompilations are measured by ``benchmarks/backbone_speed.py``
(``<name>+compile``), numbers in ``docs/performance.md``.
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from torch import nn


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile``'s default backend (inductor) cannot run on ``device``, or ``None``."""
    device = torch.device(device)
    if device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "inductor needs a C++ compiler on CPU and none was found (install g++ or set CXX)"
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "inductor needs Triton on CUDA and it is not installed (pip install triton)"
    return None


class _EagerFallback:
    """The compiled call, or the eager one after the compiler has failed once (with a warning)."""

    def __init__(self, module: nn.Module, compiled) -> None:
        self.module_name = type(module).__name__
        self.eager = module._call_impl
        self.compiled = compiled
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                self.failed = True
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warnings.warn(
                    f"--model.compile true: torch.compile failed for {self.module_name} on this platform "
                    f"({first_line[:300]}); running eager from here on. Set --model.compile false to silence this.",
                    stacklevel=2,
                )
        return self.eager(*args, **kwargs)


def compile_backbone(backbone: nn.Module, device: torch.device | str = "cpu", **options) -> bool:
    """Compile ``backbone``'s forward in place (``dynamic=True``); returns whether it was compiled.

    ``options`` go to ``torch.compile`` (e.g. ``mode="max-autotune"``, ``backend=...``).

    Does nothing (and warns, naming the reason) when :func:`compile_unavailable` says the platform
    cannot compile; a compiler failure at the first call falls back to eager with a warning.
    Parameter names, ``state_dict`` and ``load_state_dict`` are unchanged.
    """
    reason = compile_unavailable(device)
    if reason is not None:
        warnings.warn(f"--model.compile true: {reason}; the backbone runs eager.", stacklevel=2)
        return False
    if isinstance(getattr(backbone, "_compiled_call_impl", None), _EagerFallback):
        return True  # already compiled (configure_model runs again for test after fit)
    backbone.compile(**{"dynamic": True, **options})
    backbone._compiled_call_impl = _EagerFallback(backbone, backbone._compiled_call_impl)
    return True


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (``torch._dynamo.utils.counters``).

    A batch whose shapes the compiled code cannot take forces a new graph: with ``dynamic=True``
    the count stays flat across batches of different sizes after the first step (the benchmark
    reports the graphs compiled during its timed steps).
    """
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
