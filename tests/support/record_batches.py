"""Test helper callbacks for resume tests (imported by ``zoo fit`` subprocesses via PYTHONPATH)."""

from __future__ import annotations

import json
import os
import signal

import lightning as L

import atomzoo


class RecordBatches(L.Callback):
    """Append ``{"step", "idx", "loss", "atomzoo": the imported package's file}`` per training batch to ``path`` (JSON lines)."""

    def __init__(self, path: str, kill_at_step: int = -1) -> None:
        self.path = path
        self.kill_at_step = kill_at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "idx": batch.idx.tolist(),
                                "loss": float(outputs["loss"]), "atomzoo": atomzoo.__file__}) + "\n")
        if trainer.global_step == self.kill_at_step:
            # let the step checkpoint of this step be written first (callbacks run in order; ours is
            # added last), then die the hard way
            os.kill(os.getpid(), signal.SIGKILL)


class DumpWeights(L.Callback):
    """Every rank saves its own ``state_dict`` at the start and end of fit, to
    ``{prefix}{rank}_start.pt`` and ``{prefix}{rank}.pt`` (DDP consistency checks)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _save(self, trainer, pl_module, suffix: str) -> None:
        import torch

        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, f"{self.prefix}{trainer.global_rank}{suffix}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "_start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "")
