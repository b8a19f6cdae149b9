"""Optimizer parameter groups: weight decay on weight matrices only.

The references decay weight matrices and nothing else: the SCD code (``get_parameter_groups``,
TyJPerez/SelfConditionedDenoisingAtoms) means to exempt biases, norms, embeddings, the adaLN ``alpha``
and the mask token; mace-torch (``get_params_options``) exempts the element embedding and everything of an
interaction block but its linear weights. SCD decides by parameter name, so it also decays what its
patterns miss: LayerNorm gains inside an ``nn.Sequential`` (named ``fc.2.weight``), LayerNorms named
``layernorm`` and 1-D parameters such as trainable RBF centres; the rule here decides by module type and
shape and decays none of those (``docs/objectives.md``, ``tests/test_weight_decay_vs_scd.py``). Decaying a LayerNorm gain pulls it towards 0 (not 1), decaying
an embedding or a mask token shrinks learned vectors that are no weights of a map -- the SCD authors
report that shrinking element embeddings destabilised fine-tuning.

Rule (:func:`parameter_groups`), for every trainable parameter:

* a submodule whose ``weight_decay_parameters()`` returns a list (``Backbone``'s default returns
  ``None``: no opinion) decides for its own parameters (MACE:
  mace-torch's rule, since e3nn stores weight matrices flattened to 1-D);
* otherwise a parameter is decayed iff it has at least 2 dimensions and does not belong to an
  ``nn.Embedding``, a normalisation layer (LayerNorm, GroupNorm, BatchNorm, ...) or a backbone's
  ``element_embedding_parameters()``. Biases, norm gains, scalars such as ``alpha`` and vectors such as
  a mask token are 1-D or 0-D, hence exempt.
"""

from __future__ import annotations

from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)


def no_decay_ids(module: nn.Module) -> set[int]:
    """``id``s of parameters that must not be decayed whatever their shape: embeddings and norms."""
    ids: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, (nn.Embedding, *NORM_TYPES)):
            ids.update(id(p) for p in sub.parameters(recurse=False))
        element = getattr(sub, "element_embedding_parameters", None)
        if callable(element):
            ids.update(id(p) for p in element())
    return ids


def decayed_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that take weight decay (rule in the module docstring)."""
    exempt = no_decay_ids(module)
    decided: dict[int, bool] = {}
    for sub in module.modules():  # parents first: a hook on an outer module wins
        hook = getattr(sub, "weight_decay_parameters", None)
        chosen = hook() if callable(hook) else None  # None: no opinion (Backbone's default), the rule below
        if chosen is not None:
            chosen = {id(p) for p in chosen}
            for p in sub.parameters():
                decided.setdefault(id(p), id(p) in chosen)
    out = []
    for p in module.parameters():
        decay = decided.get(id(p), p.dim() >= 2 and id(p) not in exempt)
        if decay:
            out.append(p)
    return out


def parameter_groups(module: nn.Module, weight_decay: float, only: list[nn.Parameter] | None = None) -> list[dict]:
    """AdamW parameter groups: ``[{"name": "decay", ...}, {"name": "no_decay", weight_decay 0}]``.

    Args:
        module: the model (an objective: backbone and heads).
        weight_decay: decay of the first group (>= 0, else ``ValueError``).
        only: the parameters to optimise, in this order (default: those with ``requires_grad``);
            frozen parameters are left out, as before. An empty group is dropped.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0 (--model.weight_decay)")
    decay_ids = {id(p) for p in decayed_parameters(module)}
    trainable = list(only) if only is not None else [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"name": "decay", "params": [p for p in trainable if id(p) in decay_ids], "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": [p for p in trainable if id(p) not in decay_ids], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def scale_learning_rate(groups: list[dict], params, multiplier: float, lr: float) -> list[dict]:
    """Split every group into the parameters of ``params`` (the backbone) and the rest; the first get
    ``"lr": lr * multiplier`` and ``"lr_scale": multiplier`` (layer-wise learning rate, "soft freeze"),
    the rest ``lr`` and 1. ``multiplier == 1``: ``groups`` unchanged. Group names get ``"/backbone"``.
    Schedules scale each group's own rate (``LambdaLR`` multiplies every ``initial_lr``)."""
    if multiplier == 1.0:
        return groups
    ids = {id(p) for p in params}
    out = []
    for group in groups:
        inside = [p for p in group["params"] if id(p) in ids]
        outside = [p for p in group["params"] if id(p) not in ids]
        if inside:
            out.append({**group, "name": f"{group['name']}/backbone", "params": inside, "lr": lr * multiplier,
                        "lr_scale": multiplier})  # fmt: skip
        if outside:
            out.append({**group, "params": outside, "lr": lr, "lr_scale": 1.0})
    return out


def freeze_parameters(module: nn.Module, prefixes: list[str] | None) -> list[str]:
    """``requires_grad=False`` for every parameter of ``module`` whose name is one of ``prefixes`` or lies
    under one (``"backbone.layers.0"`` matches ``backbone.layers.0.q_proj.weight``); returns the prefixes.

    Raises:
        ValueError: a prefix that matches no parameter, naming the modules there are (``--model.freeze``).
    """
    prefixes = [str(p).strip(".") for p in (prefixes or [])]
    named = dict(module.named_parameters())
    for prefix in prefixes:
        matched = [n for n in named if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            names = sorted({".".join(n.split(".")[:2]) for n in named})
            raise ValueError(f"--model.freeze {prefix!r} matches no parameter; modules: {', '.join(names)}")
        for name in matched:
            named[name].requires_grad_(False)
    return prefixes


__all__ = ["NORM_TYPES", "decayed_parameters", "freeze_parameters", "no_decay_ids", "parameter_groups",
           "scale_learning_rate"]
