"""atomzoo: self-supervised pretraining of 3D atomistic neural networks, on PyTorch Lightning.

Where things live (repository folder -> import name):

- ``backbones/``   -> :mod:`atomzoo.backbones`: networks mapping a batch of structures to per-atom features.
- ``objectives/``  -> :mod:`atomzoo.objectives`: LightningModules that train any backbone (supervised, denoising, SCD, JEPA).
- ``datamodules/`` -> :mod:`atomzoo.datamodules`: datasets as memory-mapped stores with seeded splits.
- ``zoo/nn/``      -> :mod:`atomzoo.nn`: building blocks shared by backbones and heads (radius graph,
  radial bases and cutoffs, adaLN conditioning). Imports nothing above it.
- ``zoo/model_files.py`` -> :mod:`atomzoo.model_files`: the one reader of checkpoints and exports
  and the one class-path resolver (beside :mod:`atomzoo.cards`, the model cards).
- ``zoo/cli.py``   -> :mod:`atomzoo.cli`: the ``zoo`` LightningCLI; ``zoo/runner/`` -> :mod:`atomzoo.runner`:
  the experiment runner (``zoo-bench``). The application layer: nothing below imports it.

Class paths from before version 0.2 (``backbones.SchNet``, ``zoo.graph.Graph``, ...) inside configs,
checkpoints and exports are translated to their ``atomzoo`` paths with a ``FutureWarning``
(:data:`atomzoo.model_files.RENAMED`), so old files load; no old module name is importable.
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    """``atomzoo.load`` (:func:`atomzoo.inference.load`) and ``atomzoo.pretrained`` (named models), imported
    lazily so that ``import atomzoo`` stays light."""
    if name == "load":
        from .inference import load

        return load
    if name == "pretrained":  # atomzoo.pretrained.list() after a plain `import atomzoo`
        import importlib

        return importlib.import_module(".pretrained", __name__)
    raise AttributeError(f"module 'atomzoo' has no attribute {name!r}")
