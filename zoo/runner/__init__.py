"""The experiment runner (``zoo-bench``): a matrix of backbones x objectives x tasks x label budgets x seeds.

    zoo-bench run benchmarks/matrices/qm9_objectives.yaml        # or: python -m atomzoo.runner run ...
    zoo-bench report benchmarks/matrices/qm9_objectives.yaml

Every cell is an ordinary ``zoo fit`` run (its resolved ``config.yaml`` is saved in its folder, so
any cell can be rerun by hand). ``results.csv`` is the record of finished cells: they are never
rerun; an unfinished cell resumes from its newest checkpoint. The Markdown report and the plots are
regenerated from that CSV.

- :mod:`~atomzoo.runner.matrix`: the matrix file format and its expansion into cells;
- :mod:`~atomzoo.runner.execute`: the cells' commands and processes (the one place a command is built);
- :mod:`~atomzoo.runner.results`: ``results.csv`` (the one place results are stored, atomically);
- :mod:`~atomzoo.runner.report`: ``results.md`` (the one place results are reported), with the plots of
  :mod:`~atomzoo.runner.plots` and the paired statistics of :mod:`~atomzoo.runner.paired`;
- :mod:`~atomzoo.runner.probe`: the closed-form linear probe of a pretraining run (``zoo-bench probe``).
"""

from .matrix import Cell, Matrix, load_matrix

__all__ = ["Cell", "Matrix", "load_matrix"]
