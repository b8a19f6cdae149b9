"""Load the equivariant-transformer weights of a TorchMD-NET model or checkpoint into :class:`ET`.

Published pretrained ET weights (e.g. Zaidi et al.'s denoising-pretrained ET, arXiv 2206.00133, or
any ``torchmd-train`` checkpoint) can then be fine-tuned in the zoo. Only the representation model
(``representation_model.*``) is loaded: TorchMD-NET's output heads, priors and the
standardisation ``mean``/``std`` are not part of a zoo backbone and are reported, not loaded.

Accepted sources:

* a path to a TorchMD-NET Lightning checkpoint (``.ckpt``: ``hyper_parameters`` + ``state_dict``
  whose keys start with ``model.``); loading it unpickles the file, so only load checkpoints you trust;
* such a checkpoint already loaded (a dict with ``hyper_parameters`` and ``state_dict``);
* a TorchMD-NET module: ``TorchMD_Net`` (from ``torchmdnet.models.model.create_model`` /
  ``load_model``) or a bare ``TorchMD_ET``.

torchmd-net itself is never imported here (it is not a dependency of the zoo).

Example::

    from atomzoo.backbones.et_torchmd import load_torchmd_et
    backbone = load_torchmd_et("epoch=99.ckpt")             # an atomzoo.backbones.ET
    # then: zoo fit ... --model.backbone configs/backbones/et.yaml with the same hyperparameters
    # and --model.init_from a checkpoint that holds these weights, or use it directly in Python.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .et import ET

# TorchMD-NET representation-model key (after "representation_model.") -> our key
_RENAMES = (
    (re.compile(r"^distance_expansion\.(means|betas)$"), r"rbf.\1"),
    (re.compile(r"^attention_layers\.(\d+)\.layernorm\.(weight|bias)$"), r"layers.\1.norm.\2"),
    (re.compile(r"^attention_layers\.(\d+)\.(q|k|v|o|vec|dk|dv)_proj\.(weight|bias)$"), r"layers.\1.\2_proj.\3"),
    (re.compile(r"^(embedding\.weight|out_norm\.(weight|bias))$"), r"\1"),
    (re.compile(r"^neighbor_embedding\.(embedding\.weight|(distance_proj|combine)\.(weight|bias))$"),
     r"neighbor_embedding.\1"),
)
# buffers of TorchMD-NET's modules that carry no learned state for a non-periodic molecule
_IGNORED = re.compile(r"^distance\.box$")


class TorchMDWeightsMismatch(ValueError):
    """The TorchMD-NET weights do not fit the ET built from their hyperparameters (keys listed)."""


def et_kwargs_from_torchmd(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """ET constructor arguments from TorchMD-NET hyperparameters (``torchmd-train`` names).

    Raises:
        ValueError: the model is not the equivariant transformer or uses something ET does not
            implement (``cutoff_lower != 0``, an RBF other than ``expnorm``, a periodic box).
    """
    hp = dict(hparams)
    model = hp.get("model", "equivariant-transformer")
    if model != "equivariant-transformer":
        raise ValueError(f"only TorchMD-NET's 'equivariant-transformer' maps onto ET, got model={model!r}")
    unsupported = []
    if float(hp.get("cutoff_lower", 0.0)) != 0.0:
        unsupported.append(f"cutoff_lower={hp['cutoff_lower']} (ET supports 0 only)")
    if hp.get("rbf_type", "expnorm") != "expnorm":
        unsupported.append(f"rbf_type={hp['rbf_type']!r} (ET implements 'expnorm' only)")
    if hp.get("box_vecs") is not None:
        unsupported.append("box_vecs (periodic boxes are not supported)")
    if unsupported:
        raise ValueError("TorchMD-NET model uses features ET does not implement: " + "; ".join(unsupported))
    return {
        "width": int(hp.get("embedding_dimension", 256)),
        "num_interactions": int(hp.get("num_layers", 6)),
        "num_rbf": int(hp.get("num_rbf", 64)),
        "num_heads": int(hp.get("num_heads", 8)),
        "cutoff": float(hp.get("cutoff_upper", 5.0)),
        "trainable_rbf": bool(hp.get("trainable_rbf", False)),
        "neighbor_embedding": bool(hp.get("neighbor_embedding", True)),
        "distance_influence": str(hp.get("distance_influence", "both")),
        "activation": str(hp.get("activation", "silu")),
        "attn_activation": str(hp.get("attn_activation", "silu")),
        "vector_cutoff": bool(hp.get("vector_cutoff", False)),
        "num_embeddings": int(hp.get("max_z", 100)),
    }


def _kwargs_from_module(rep: nn.Module) -> dict[str, Any]:
    """Hyperparameters of a built ``TorchMD_ET`` module (read from its attributes)."""
    layers = rep.attention_layers
    hp = {
        "model": "equivariant-transformer",
        "embedding_dimension": rep.hidden_channels,
        "num_layers": rep.num_layers,
        "num_rbf": rep.num_rbf,
        "num_heads": rep.num_heads,
        "cutoff_lower": rep.cutoff_lower,
        "cutoff_upper": rep.cutoff_upper,
        "rbf_type": rep.rbf_type,
        "trainable_rbf": rep.trainable_rbf,
        "neighbor_embedding": rep.neighbor_embedding is not None,
        "distance_influence": rep.distance_influence,
        "activation": rep.activation,
        "attn_activation": rep.attn_activation,
        "vector_cutoff": bool(getattr(layers[0], "vector_cutoff", False)) if len(layers) else False,
        "max_z": rep.max_z,
    }
    box = getattr(getattr(rep, "distance", None), "box", None)
    if box is not None and getattr(rep.distance, "use_periodic", False):
        hp["box_vecs"] = box
    return hp


def convert_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map TorchMD-NET keys onto ET keys.

    Accepts keys with any prefix up to ``representation_model.`` (``model.representation_model.``
    in a checkpoint) or bare ``TorchMD_ET`` keys. Returns ``(mapped, skipped)``: ``skipped`` are
    keys outside the representation model (output model, prior, ``mean``/``std``).

    Raises:
        TorchMDWeightsMismatch: a representation-model key has no counterpart in ET.
    """
    prefixed = any("representation_model." in k for k in state_dict)
    mapped, skipped, unknown = {}, [], []
    for key, value in state_dict.items():
        if prefixed:
            if "representation_model." not in key:
                skipped.append(key)
                continue
            key = key.split("representation_model.", 1)[1]
        if _IGNORED.match(key):
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(key):
                mapped[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise TorchMDWeightsMismatch(
            "TorchMD-NET representation weights with no counterpart in atomzoo's ET: " + ", ".join(sorted(unknown))
        )
    return mapped, skipped


def _unpack(source) -> tuple[dict[str, Any], Mapping[str, Tensor]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"TorchMD-NET checkpoint {path} does not exist")
        from atomzoo.model_files import load_checkpoint_dict

        source = load_checkpoint_dict(path)  # unpickled as TorchMD-NET saved it (atomzoo's one torch.load)
    if isinstance(source, nn.Module):
        rep = getattr(source, "representation_model", source)
        if not hasattr(rep, "attention_layers"):
            raise ValueError(f"{type(rep).__name__} is not TorchMD-NET's equivariant transformer (TorchMD_ET)")
        return _kwargs_from_module(rep), rep.state_dict()
    if isinstance(source, Mapping) and "state_dict" in source and "hyper_parameters" in source:
        return dict(source["hyper_parameters"]), source["state_dict"]
    raise TypeError(
        "source must be a TorchMD-NET checkpoint path, a loaded checkpoint dict with 'hyper_parameters' and "
        f"'state_dict', or a TorchMD_Net / TorchMD_ET module; got {type(source).__name__}"
    )


def load_torchmd_et(source, **overrides) -> ET:
    """Build an :class:`ET` with TorchMD-NET's hyperparameters and load its representation weights.

    Args:
        source: checkpoint path, loaded checkpoint dict or TorchMD-NET module (see module docstring).
        **overrides: extra :class:`ET` arguments that do not change the weights' shapes, e.g.
            ``max_num_neighbors``, ``drop_path``, or ``condition_dim`` (the adaLN modules are then
            new and keep their initialisation; everything else is loaded). The atom-masking
            embeddings (``mask_embedding``, ``neighbor_mask_embedding``) are the zoo's additions and
            keep their initialisation too.

    Returns:
        the ET in the floating dtype of the TorchMD-NET weights (float64 weights give a float64 ET),
        in training mode.

    Raises:
        ValueError: unsupported TorchMD-NET model or feature (see :func:`et_kwargs_from_torchmd`).
        TorchMDWeightsMismatch: keys missing on either side or tensors of the wrong shape; the
            message lists every mismatched key.
    """
    hparams, state_dict = _unpack(source)
    kwargs = et_kwargs_from_torchmd(hparams)
    kwargs.update(overrides)
    model = ET(**kwargs)
    mapped, _ = convert_state_dict(state_dict)
    dtypes = {v.dtype for v in mapped.values() if torch.is_floating_point(v)}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    own = model.state_dict()
    # the zoo's additions keep their initialisation: atom-masking embeddings (one per element table)
    # and, with condition_dim, the conditioning (mask token, condition norm, per-layer adaLN)
    new_ok = {k for k in own if k.endswith("mask_embedding")}
    if kwargs.get("condition_dim", 0):
        new_ok |= {k for k in own if ".adaln." in k or k.startswith("conditioning.")}
    missing = sorted(set(own) - set(mapped) - new_ok)
    unexpected = sorted(set(mapped) - set(own))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs ET {tuple(own[k].shape)}"
        for k in set(mapped) & set(own)
        if mapped[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append("missing from the TorchMD-NET weights: " + ", ".join(missing))
        if unexpected:
            parts.append("not in ET: " + ", ".join(unexpected))
        if wrong_shape:
            parts.append("shape mismatch: " + "; ".join(wrong_shape))
        raise TorchMDWeightsMismatch(
            f"TorchMD-NET weights do not match ET({kwargs}): " + " | ".join(parts)
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=False)
    return model


__all__ = ["TorchMDWeightsMismatch", "convert_state_dict", "et_kwargs_from_torchmd", "load_torchmd_et"]
