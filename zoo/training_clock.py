"""The compute a training run took, summed over the attempts that resumed one another.

A benchmark cell killed mid-run (a session's end, a reboot) resumes from its last checkpoint in a new
process, so the CPU time the operating system reports for the last process (``os.wait4``) is only the
last attempt's. Comparisons "at equal pretraining CPU time" need the whole run's. :class:`TrainingClock`
keeps it in the run's checkpoints: each checkpoint stores the training time accumulated up to the
moment it was written, a resumed attempt starts from the checkpoint's value, and so work done after
the last checkpoint of a killed attempt (and repeated by the next one) is counted once. (Lightning's
``Timer`` callback keeps elapsed wall time in checkpoints the same way, but no CPU time, which is
what a comparison on a shared or loaded machine needs.)

``zoo fit`` adds the clock to every run (:class:`atomzoo.cli.ZooCLI`); at the end of training it writes
``training_clock.json`` next to the run's ``config.yaml``, which the benchmark runner records as
``train_cpu_s``, ``train_wall_s``, ``train_attempts``, ``train_attempt_cpu_s`` and ``train_clock_complete``
(:mod:`atomzoo.runner.results`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

#: file the clock writes in the run's log folder at the end of training
CLOCK_FILE = "training_clock.json"


class TrainingClock(Callback):
    """Training CPU and wall time of a run, across resumed attempts (Lightning callback with checkpointed state).

    Measured from ``on_train_start`` to ``on_train_end`` of each attempt: the training loop with its
    validations, not the process start-up, the sanity check or a test after fit.

    - ``cpu_s``: CPU time (user + system, ``time.process_time``: every thread of the process) of the
      rank-0 process, s. Under DDP each rank spends about as much; the run's total is about
      ``cpu_s x world_size`` (``world_size`` is recorded).
    - ``wall_s``: wall time of training, s, summed over attempts.
    - ``attempts``: processes that trained this run (1 for a run never resumed).
    - ``complete``: False when an attempt resumed from a checkpoint written without a clock (by an
      older version), whose earlier time is then unknown and not included.
    - ``attempt_cpu_s``: the last attempt's own share of ``cpu_s``.
    """

    def __init__(self) -> None:
        self.cpu_s = 0.0  # accumulated by earlier attempts, up to the checkpoint this one resumed from
        self.wall_s = 0.0
        self.attempts = 0
        self.complete = True
        self._restored = False
        self._start: tuple[float, float] | None = None  # (process_time, perf_counter) at this attempt's start

    @property
    def state_key(self) -> str:
        return "TrainingClock"

    def totals(self) -> dict[str, Any]:
        """``{"cpu_s", "wall_s", "attempts", "complete", "attempt_cpu_s"}`` up to now (this attempt's time
        included; ``attempt_cpu_s``: this attempt's own training CPU time)."""
        own_cpu = own_wall = 0.0
        if self._start is not None:
            own_cpu = time.process_time() - self._start[0]
            own_wall = time.perf_counter() - self._start[1]
        return {"cpu_s": self.cpu_s + own_cpu, "wall_s": self.wall_s + own_wall, "attempts": self.attempts,
                "complete": self.complete, "attempt_cpu_s": own_cpu}

    def state_dict(self) -> dict[str, Any]:
        return self.totals()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cpu_s = float(state_dict["cpu_s"])
        self.wall_s = float(state_dict["wall_s"])
        self.attempts = int(state_dict["attempts"])
        self.complete = bool(state_dict["complete"])
        self._restored = True

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path and not self._restored:  # resumed from a checkpoint that has no clock
            self.complete = False
        self.attempts += 1
        self._start = (time.process_time(), time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        totals = {**self.totals(), "world_size": trainer.world_size}
        log_dir = trainer.log_dir if trainer.loggers else None  # a collective under DDP: asked on every rank
        if log_dir and trainer.is_global_zero:
            path = Path(log_dir) / CLOCK_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(totals, indent=1))
            os.replace(tmp, path)
