"""A progress bar for the whole run: training batches done of the run's total and the time left,
validations and the test after fit included (the ``zoo`` command's default progress bar).

Lightning's :class:`~lightning.pytorch.callbacks.TQDMProgressBar` restarts its bar every epoch, so
nothing says how long a run of 8 epochs plus its validations and test will take. :class:`RunProgressBar`
keeps Lightning's bars for validation, test and predict and makes the training bar span the run::

    Epoch 3/8:  31%|█████▏       | 1571/5000 batches [01:32 elapsed, ~03:40 left: training, 5 validations, test; 17.1 batches/s, loss=0.113]

The run's length (:class:`RunPlan`) is what Lightning will do: the batches of ``max_steps`` optimizer
steps or ``max_epochs`` x batches per epoch, whichever ends first, and the
validations its ``val_check_interval`` / ``check_val_every_n_epoch`` schedule places in that span
(the rule of Lightning's ``_TrainingEpochLoop._should_check_val_fx``). The time left is measured, not
guessed: the mean wall time of a training batch so far (validation excluded) times the batches left,
plus the mean duration of a validation (before the first one: the sanity check's time per batch times
the validation batches) times the validations left, plus, with ``--test_after_fit``, the test batches
at the validation's time per batch. Early stopping or ``max_time`` can end the run sooner; the time
left is then an upper bound. Wall time, so other jobs on a shared machine lengthen it as they slow
the run.

When stdout is not a terminal (a batch job's log), the bars write whole lines, one every 30 s
(``line_interval``) and one after each validation, instead of carriage returns.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

from .line_stream import LineStream


@dataclass(frozen=True)
class RunPlan:
    """What a fit will run, in training batches and validations.

    Attributes:
        batches_per_epoch: training batches per epoch (after ``limit_train_batches``).
        total_batches: training batches of the whole run (the batches of ``max_steps`` optimizer steps, an
            epoch's last batches stepping even when fewer than ``accumulate_grad_batches``, or
            ``max_epochs`` x ``batches_per_epoch``, whichever is smaller).
        max_epochs: epochs the run may take (``ceil(total_batches / batches_per_epoch)``).
        val_every: validation every ``val_every`` batches (per epoch, or of the run when ``per_epoch`` is
            False); 0: no validation.
        val_epoch_every: only epochs ``e`` with ``(e + 1) % val_epoch_every == 0`` validate (per_epoch only).
        per_epoch: ``val_every`` counts the batches of the epoch (Lightning's ``check_val_every_n_epoch`` set).
    """

    batches_per_epoch: int
    total_batches: int
    max_epochs: int
    val_every: int
    val_epoch_every: int = 1
    per_epoch: bool = True

    @classmethod
    def of(cls, trainer) -> "RunPlan | None":
        """The plan of ``trainer``'s fit (call once its training data is set up, e.g. ``on_train_start``);
        ``None`` when the length is unknown (an iterable dataset without a length)."""
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int) or per_epoch <= 0:
            return None
        limits = []
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            # an epoch's last batches step the optimizer even when fewer than accumulate_grad_batches
            accumulate = max(1, trainer.accumulate_grad_batches)
            epochs, steps = divmod(trainer.max_steps, math.ceil(per_epoch / accumulate))
            limits.append(epochs * per_epoch + min(steps * accumulate, per_epoch))
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        if max_epochs is not None:
            limits.append(max_epochs * per_epoch)
        if not limits:
            return None
        total = min(limits)
        val_every, epoch_every = 0, trainer.check_val_every_n_epoch
        if trainer.enable_validation and getattr(trainer, "_val_check_time_interval", None) is None:
            check = trainer.val_check_batch
            val_every = per_epoch if check is None or check == float("inf") else int(check)
        return cls(per_epoch, total, math.ceil(total / per_epoch), val_every, epoch_every or 1, epoch_every is not None)

    def validations_after(self, batches: int) -> int:
        """Validations Lightning runs within the first ``batches`` training batches of the run."""
        if self.val_every <= 0:
            return 0
        batches = min(batches, self.total_batches)
        if not self.per_epoch:
            return batches // self.val_every
        epochs, rest = divmod(batches, self.batches_per_epoch)
        partial = rest // self.val_every if (epochs + 1) % self.val_epoch_every == 0 else 0
        return (epochs // self.val_epoch_every) * (self.batches_per_epoch // self.val_every) + partial

    @property
    def validations(self) -> int:
        """Validations of the whole run."""
        return self.validations_after(self.total_batches)


def seconds_left(batches_left: int, batch_s: float | None, validations_left: int, validation_s: float | None,
                 test_s: float | None) -> float | None:
    """Wall seconds a run has left: ``batches_left`` x ``batch_s`` + ``validations_left`` x
    ``validation_s`` + ``test_s`` (the test after fit; ``None``: none). ``None`` while ``batch_s`` is not
    measured yet; an unmeasured validation or test counts 0 s."""
    if batch_s is None:
        return None
    return batches_left * batch_s + validations_left * (validation_s or 0.0) + (test_s or 0.0)


class _RunTqdm(Tqdm):
    """Lightning's tqdm with one more field for ``bar_format``: ``{run_left}``, set by the callback; in
    line mode (``line_interval`` seconds, not None) a refresh writes a line at most every
    ``line_interval`` seconds, and always at the first and the last batch."""

    run_left = "time left: measuring"

    def __init__(self, *args, line_interval: float | None = None, **kwargs) -> None:
        self.line_interval = line_interval
        self._line_at: float | None = None
        self._wrote_end = False
        self.hold = False  # line mode: no line while set (the callback writes one when it is done)
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "run_left": self.run_left}

    def refresh(self, nolock: bool = False, lock_args=None, force: bool = False):
        if self.line_interval is not None and not self.disable:
            if self.hold:
                return None
            now = time.perf_counter()
            at_end = self.total is not None and self.n >= self.total
            due = self.n > 0 and (self._line_at is None or now - self._line_at >= self.line_interval)
            if not (force or (at_end and not self._wrote_end) or (due and not at_end)):
                return None
            self._line_at, self._wrote_end = now, at_end
        return super().refresh(nolock=nolock, lock_args=lock_args)

    def close(self) -> None:
        if self.line_interval is not None and self._wrote_end:
            self.leave = False  # its last state is written already; tqdm would write it once more
        super().close()


class RunProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar with one training bar for the whole run and its time left (see
    the module docstring).

    Args:
        refresh_rate: update the bars every this many batches (Lightning's option).
        test_after_fit: count the test after fit in the time left (the ``zoo`` command sets it from
            ``--test_after_fit``).
        leave, process_position: Lightning's options.
        line_interval: in line mode, seconds between two lines of a bar (> 0; ``ValueError`` otherwise).
        lines: line mode on / off; ``None`` (default): on when stdout is not a terminal.

    Line mode is for logs (a batch job's output file, a pipe): each bar writes whole lines -- at its
    first batch, then at most one every ``line_interval`` seconds, after each validation (with its
    metrics) and at its end -- instead of the carriage returns that redraw a bar on a terminal; the
    sanity check's and fit's validation bars are not shown (the run's bar counts them).
    """

    RUN_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} batches [{elapsed} elapsed, {run_left}; {rate_noinv_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 test_after_fit: bool = False, line_interval: float = 30.0, lines: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        if not line_interval > 0:
            raise ValueError(f"RunProgressBar: line_interval must be > 0 seconds, got {line_interval}")
        self.test_after_fit = test_after_fit
        self.line_interval = float(line_interval)
        self._lines = lines
        self.plan: RunPlan | None = None
        self._reset_clocks()

    @property
    def lines(self) -> bool:
        """Line mode: stdout is not a terminal (unless ``lines`` was given)."""
        if self._lines is not None:
            return self._lines
        isatty = getattr(sys.stdout, "isatty", None)
        return not (isatty and isatty())

    def _bar(self, desc: str, leave: bool, disable: bool = False, position: int = 0, **kwargs) -> _RunTqdm:
        """A tqdm bar on stdout: on a terminal Lightning's, in line mode one line per ``line_interval``."""
        lines = self.lines
        return _RunTqdm(desc=desc, position=0 if lines else 2 * self.process_position + position,
                        disable=self.is_disabled or disable, leave=leave, dynamic_ncols=not lines,
                        file=LineStream(sys.stdout) if lines else sys.stdout,
                        line_interval=self.line_interval if lines else None, **kwargs)

    def init_sanity_tqdm(self) -> Tqdm:
        # in line mode the sanity check and fit's validations have no bar: the run's bar says when they ran
        return self._bar(self.sanity_check_description, leave=False, disable=self.lines, bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        in_fit = self.trainer.state.fn != "validate"
        return self._bar(self.validation_description, leave=not in_fit, disable=in_fit and self.lines,
                         position=int(in_fit), bar_format=self.BAR_FORMAT)

    def init_test_tqdm(self) -> Tqdm:
        return self._bar("Testing", leave=True, bar_format=self.BAR_FORMAT)

    def init_predict_tqdm(self) -> Tqdm:
        return self._bar(self.predict_description, leave=True, smoothing=0, bar_format=self.BAR_FORMAT)

    def _reset_clocks(self) -> None:
        self._train_s = 0.0  # wall time of training batches in this process (validation excluded)
        self._train_batches = 0
        self._mark: float | None = None  # start of the training interval being timed
        self._val_s = 0.0
        self._val_runs = 0
        self._val_batch_s: float | None = None  # per validation batch (sanity check or validation)
        self._val_start = 0.0
        self._first_batch: int | None = None  # batches of the run done before this process (a resumed run)
        self._test_batches: int | None = None

    # ----- the training bar spans the run ------------------------------------------------------------
    def init_train_tqdm(self) -> Tqdm:
        return self._bar(self.train_description, leave=True, smoothing=0, bar_format=self.RUN_BAR_FORMAT,
                         unit=" batches")

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        self._reset_clocks()  # before the sanity check, which times the first validation batches

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        super().on_sanity_check_start(trainer, pl_module)
        self._val_start = time.perf_counter()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        super().on_sanity_check_end(trainer, pl_module)
        batches = sum(trainer.num_sanity_val_batches or [0])
        if batches:
            self._val_batch_s = (time.perf_counter() - self._val_start) / batches

    def on_train_start(self, trainer, pl_module) -> None:
        self.plan = RunPlan.of(trainer)
        super().on_train_start(trainer, pl_module)
        if self.plan is not None:
            self.train_progress_bar.total = self.plan.total_batches
            self.train_progress_bar.initial = 0
        if self.test_after_fit:
            self._test_batches = self._count_test_batches(trainer)

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        if self.plan is None:  # unknown length: Lightning's bar, per epoch
            return super().on_train_epoch_start(trainer, *_)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{self.plan.max_epochs}")
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.plan is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        now = time.perf_counter()
        if self._mark is not None:
            self._train_s += now - self._mark
            self._train_batches += 1
        self._mark = now
        done = min(trainer.current_epoch * self.plan.batches_per_epoch + batch_idx + 1, self.plan.total_batches)
        if self._first_batch is None:  # batches of the run before this process (a resumed run): known at its first batch
            self._first_batch = done - 1
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and self._should_update(done, bar.total):
            bar.run_left = self.describe_left(done)
            bar.n = done
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def batches_done(self, trainer) -> int:
        """Training batches of the run done so far (earlier processes of a resumed run included), outside
        ``on_train_batch_end`` (Lightning counts a batch completed after its hooks)."""
        loop = trainer.fit_loop.epoch_loop
        return min(trainer.current_epoch * self.plan.batches_per_epoch + loop.batch_progress.current.completed,
                   self.plan.total_batches)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.plan is None or not self._leave:
            return super().on_train_epoch_end(trainer, pl_module)
        if not self.train_progress_bar.disable:  # one bar for the run: not closed at the epoch's end
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    # ----- validation and test time ------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        bar = self.train_progress_bar if self._train_progress_bar is not None else None
        if bar is not None:
            bar.hold = True  # Lightning's postfix update: the line comes below, with the time left updated
        try:
            super().on_validation_end(trainer, pl_module)
        finally:
            if bar is not None:
                bar.hold = False
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        now = time.perf_counter()
        self._val_s += now - self._val_start
        self._val_runs += 1
        batches = sum(trainer.num_val_batches or [0])
        if batches:
            self._val_batch_s = self._val_s / (self._val_runs * batches)
        self._mark = now  # the next training interval starts after validation (and its checkpoints)
        if self.plan is not None and self.train_progress_bar is not None:
            bar = self.train_progress_bar
            bar.run_left = self.describe_left(self.batches_done(trainer))
            if not bar.disable:
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
                bar.refresh(force=True)  # in line mode: one line after each validation, with its metrics

    def _count_test_batches(self, trainer) -> int | None:
        """Test batches of the test after fit (the DataModule's test loader, else the model's;
        ``limit_test_batches``)."""
        source = trainer.datamodule if trainer.datamodule is not None else trainer.lightning_module
        try:
            batches = len(source.test_dataloader())
        except Exception:  # noqa: BLE001 -- no test data yet or a loader without a length: the time left omits the test
            return None
        limit = trainer.limit_test_batches
        if isinstance(limit, int):
            return min(batches, limit)
        return int(batches * float(limit)) if limit is not None else batches

    # ----- the time left -----------------------------------------------------------------------------
    def describe_left(self, batches_done: int) -> str:
        """``~MM:SS left: training, N validations, test`` (the parts still to come), or ``time left:
        measuring`` before the first timed batch."""
        plan = self.plan
        batch_s = self._train_s / self._train_batches if self._train_batches else None
        if self._val_runs:
            validation_s = self._val_s / self._val_runs
        elif self._val_batch_s is not None:  # from the sanity check
            validation_s = self._val_batch_s * sum(self.trainer.num_val_batches or [0])
        else:
            validation_s = None
        # validations of this process counted as they end: one due at this very batch is still to come
        validations_left = max(plan.validations - plan.validations_after(self._first_batch or 0) - self._val_runs, 0)
        test_s = (self._test_batches * self._val_batch_s
                  if self._test_batches is not None and self._val_batch_s is not None else None)  # fmt: skip
        left = seconds_left(plan.total_batches - batches_done, batch_s, validations_left, validation_s, test_s)
        if left is None:
            return "time left: measuring"
        parts = ["training"] if batches_done < plan.total_batches else []
        if validations_left:
            parts.append(f"{validations_left} validation{'s' if validations_left != 1 else ''}")
        if self.test_after_fit:
            parts.append("test")
        return f"~{tqdm.format_interval(left)} left: {', '.join(parts) or 'done'}"
