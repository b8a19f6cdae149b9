"""Building blocks shared by backbones and heads.

- :mod:`atomzoo.nn.batch` -- helpers for PyG batches of structures (``num_graphs``, ``with_positions``,
  ``atoms_to_batch``).
- :mod:`atomzoo.nn.statistics` -- label metadata and training statistics a DataModule hands a model
  (``TargetInfo``, ``TargetStatistics``, ``DataSummary``, ``MAX_Z``).
- :mod:`atomzoo.nn.graph` -- batched radius graph built inside a model's forward from current positions.
- :mod:`atomzoo.nn.radial` -- radial basis functions and cutoff envelopes (distances in Angstrom).
- :mod:`atomzoo.nn.conditioning` -- adaptive layer norm (adaLN) conditioning of scalar features.
- :mod:`atomzoo.nn.init` -- the reference implementations' weight initialisation (Xavier, zero bias; DiT for adaLN).

Nothing here imports the objectives, the data modules, the CLI or the benchmark runner.
"""
