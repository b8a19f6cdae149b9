"""Progress bars in log files: tqdm's carriage-return redraws turned into whole lines.

Used by the ``zoo`` commands' progress bar (:mod:`zoo.progress`) and by the benchmark runner
(:mod:`zoo.runner.execute`) whenever their output is not a terminal.
"""

from __future__ import annotations


class LineStream:
    """tqdm's output stream when stdout is not a terminal (a batch job's log file, a pipe, ``tee``):
    every refresh becomes one line. On a terminal tqdm rewrites its line with carriage returns; in a
    file those pile up into one line megabytes long that ``less`` and ``grep`` show as one record."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._last = ""

    def write(self, text: str) -> int:
        for part in text.replace("\x1b[A", "").split("\r"):  # tqdm's cursor-up and carriage returns
            part = part.strip()
            if part and part != self._last:  # a closing bar repeats its last state: once is enough
                self._stream.write(part + "\n")
                self._last = part
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
