"""atomzoo core: the ``zoo`` command line, graph construction and shared neural-network pieces.

Where things live:

- :mod:`zoo.graph` -- batched radius graph built inside a model's forward from current positions.
- :mod:`zoo.radial` -- radial basis functions and cutoff envelopes (distances in Angstrom).
- :mod:`zoo.cli` -- the ``zoo`` LightningCLI entry point.

Backbones live in the top-level package :mod:`backbones`, objectives (LightningModules) in
:mod:`objectives`, data in :mod:`datamodules`.
"""

__version__ = "0.1.0"
