"""The benchmark runner: a matrix of backbones x objectives x targets x label budgets x seeds.

    python -m atomzoo.bench run benchmarks/matrices/qm9_objectives.yaml
    python -m atomzoo.bench report runs/bench/qm9_objectives

Every cell is an ordinary ``zoo fit`` run (its resolved ``config.yaml`` is saved in its folder, so
any cell can be rerun by hand); finished cells are skipped, crashed ones rerun; results accumulate in
one long-format CSV from which the Markdown table and the plots are regenerated.
"""

from .matrix import Cell, Matrix, load_matrix

__all__ = ["Cell", "Matrix", "load_matrix"]
