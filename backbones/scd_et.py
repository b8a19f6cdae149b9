"""SCDET: the backbone of SCD's published models, and the loader of their checkpoints.

Perez & Gomez-Bombarelli, self-conditioned denoising (SCD), arXiv 2603.17196; official code
TyJPerez/SelfConditionedDenoisingAtoms, ``models/ET_models/scet.py`` (``ConditionalET``, the
``rep_model`` of their ``CET`` model, ``configs/model_configs/scd.yaml``): the backbone of the published
``Ty-Perez/ct-scd-pcq`` (PCQM4Mv2-pretrained) and ``ct-scd-amp`` checkpoints.

:class:`SCDET` is atomzoo's :class:`~atomzoo.backbones.et.ET` with SCD's per-layer conditioning
(``condition_dim = width``, tanh modulation: ``adaLN2`` / ``adaDyT2``) plus what SCD's "CT" variant adds
around each attention layer, written from ``ConditionalET.forward``::

    x, vec = clamp(x, +-clip), clamp(vec, +-clip)              (clip_value, 1000)
    vec_in = tanh(a * vec) * gamma + beta                       (vec_prenorm: DyT, per layer)
    dx, dvec = attention(x, vec_in, condition)                  (ET's layer, adaLN-conditioned)
    x, vec = x + clamp(dx), vec + clamp(dvec)
    x = LayerNorm_l(x)                                          (inv_post_norm; else one LayerNorm at the end)

The condition is ET's (``self.conditioning``: SCD's ``DropCond`` -- mask token and layer norm; the
network's outputs are invariant scalars ``[N, F]`` and equivariant vectors ``[N, 3, F]``. Not ported
(refused by :func:`scd_et_kwargs`): ``vec_post_norm`` / ``layernorm_on_vec`` (SCD's equivariant layer
norm of the vectors; off in ``scd.yaml``), ``cutoff_lower != 0``, RBFs other than ``expnorm``.
Unlike the reference, ``x`` is not detached in the adaLN input (forces stay exact gradients; values equal).

Loading (:func:`load_scd_et`): a checkpoint of their trainer (``last.ckpt`` as ``--load-hf`` downloads it:
``hyper_parameters`` + ``state_dict`` with keys ``model.rep_model.*``), a loaded dict, or a
``ConditionalET`` / ``CET`` module. Unpickling a checkpoint runs code from it: load files you trust.
``python -m atomzoo.convert scd`` writes it as an atomzoo backbone export (:mod:`atomzoo.convert`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .base import BackboneOutput
from .et import ET


class DyT(nn.Module):
    """Dynamic tanh of SCD's vectors (``DyT``, "Transformers without normalization", arXiv 2503.10622):
    ``tanh(alpha x) * gamma + beta`` over the last (channel) dimension; ``alpha`` init 0.2, ``gamma``
    1/0.2, ``beta`` 0, as the reference. Note ``beta`` is added to vectors as the reference does."""

    def __init__(self, width: int, alpha_init: float = 0.2) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.gamma = nn.Parameter(torch.full((width,), 1.0 / alpha_init))
        self.beta = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.alpha * x) * self.gamma + self.beta


class SCDET(ET):
    """SCD's "CT" equivariant transformer (module docstring). Arguments as :class:`ET` (``condition_dim``
    defaults to ``width``, SCD's condition size), plus:

    Args:
        vec_prenorm: DyT on the vectors before each attention layer (``scd.yaml``: true).
        inv_post_norm: a LayerNorm of the scalars after every layer (``scd.yaml``: true); false: one
            LayerNorm after the last layer (``post_norms[-1]``, as the reference).
        clip_value: features and updates are clamped to ``+-clip_value`` (reference: 1000).
    """

    def __init__(self, width: int = 256, num_interactions: int = 8, num_rbf: int = 64, num_heads: int = 8,
                 cutoff: float = 5.0, trainable_rbf: bool = False, neighbor_embedding: bool = True,
                 distance_influence: str = "both", activation: str = "silu", attn_activation: str = "silu",
                 vector_cutoff: bool = True, num_embeddings: int = 118, max_num_neighbors: int | None = None,
                 condition_dim: int | None = None, drop_path: float = 0.0, vec_prenorm: bool = True,
                 inv_post_norm: bool = True, clip_value: float = 1000.0) -> None:  # fmt: skip
        super().__init__(
            width=width, num_interactions=num_interactions, num_rbf=num_rbf, num_heads=num_heads, cutoff=cutoff,
            trainable_rbf=trainable_rbf, neighbor_embedding=neighbor_embedding, distance_influence=distance_influence,
            activation=activation, attn_activation=attn_activation, vector_cutoff=vector_cutoff,
            num_embeddings=num_embeddings, max_num_neighbors=max_num_neighbors,
            condition_dim=width if condition_dim is None else condition_dim, modulation="tanh", drop_path=drop_path,
        )  # fmt: skip
        del self.out_norm  # the reference's post norms replace it
        self.vec_prenorm, self.inv_post_norm, self.clip_value = bool(vec_prenorm), bool(inv_post_norm), float(clip_value)
        self.vec_norms = nn.ModuleList(DyT(width) for _ in range(num_interactions)) if vec_prenorm else None
        self.post_norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(num_interactions))

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        x, vec, edges, cond, graph = self.layer_inputs(data, condition)
        clip = self.clip_value
        if cond is not None:
            cond = cond.clamp(-clip, clip)
        for k, layer in enumerate(self.layers):
            x, vec = x.clamp(-clip, clip), vec.clamp(-clip, clip)
            vec_in = self.vec_norms[k](vec) if self.vec_norms is not None else vec
            dx, dvec = layer(x, vec_in, *edges, cond, data.batch)
            x, vec = x + dx.clamp(-clip, clip), vec + dvec.clamp(-clip, clip)
            if self.inv_post_norm:
                x = self.post_norms[k](x)
        if not self.inv_post_norm:
            x = self.post_norms[-1](x)
        return BackboneOutput(scalars=x, vectors=vec, graph=graph)


# ----- the reference's checkpoints ---------------------------------------------------------------
class SCDWeightsMismatch(ValueError):
    """SCD weights that do not fit the SCDET built from their hyperparameters (keys listed)."""


#: reference key (after ``rep_model.``) -> SCDET key
_RENAMES = (
    (re.compile(r"^distance_expansion\.(means|betas)$"), r"rbf.\1"),
    (re.compile(r"^neighbor_embedding_module\.(.+)$"), r"neighbor_embedding.\1"),
    (re.compile(r"^attention_layers\.(\d+)\.conditional_ln\.x_norm\.(weight|bias)$"), r"layers.\1.norm.\2"),
    (re.compile(r"^attention_layers\.(\d+)\.conditional_ln\.fc\.(\d)\.(weight|bias)$"), r"layers.\1.adaln.mlp.\2.\3"),
    (re.compile(r"^attention_layers\.(\d+)\.conditional_ln\.x_modulate\.alpha$"), r"layers.\1.adaln.squash"),
    (re.compile(r"^attention_layers\.(\d+)\.conditional_ln\.alpha_x$"), r"layers.\1.adaln.alpha"),
    (re.compile(r"^attention_layers\.(\d+)\.vec_norm\.norm_(alpha|gamma|beta)$"), r"vec_norms.\1.\2"),
    (re.compile(r"^attention_layers\.(\d+)\.(q|k|v|o|vec|dk|dv)_proj\.(weight|bias)$"), r"layers.\1.\2_proj.\3"),
    (re.compile(r"^x_post_norm\.(\d+)\.(weight|bias)$"), r"post_norms.\1.\2"),
    (re.compile(r"^drop_cond\.mask_token$"), r"conditioning.input.mask_token"),
    (re.compile(r"^drop_cond\.norm\.(weight|bias)$"), r"conditioning.input.norm.\1"),
    (re.compile(r"^embedding\.weight$"), r"embedding.weight"),
)
#: reference tensors the CT settings never use (equivariant post norms of the vectors: vec_post_norm and
#: layernorm_on_vec are off, which :func:`scd_et_kwargs` requires)
_UNUSED = re.compile(r"^v_post_norm\.\d+\.weight$")


def scd_et_kwargs(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`SCDET` arguments from the reference's ``CET`` hyperparameters (``scd.yaml`` names).

    Raises:
        ValueError: a feature SCDET does not implement (names it).
    """
    hp = dict(hparams)
    unsupported = [f"{key}={hp[key]!r}" for key in ("vec_post_norm", "layernorm_on_vec") if hp.get(key)]
    if float(hp.get("cutoff_lower", 0.0)) != 0.0:
        unsupported.append(f"cutoff_lower={hp['cutoff_lower']}")
    if hp.get("rbf_type", "expnorm") != "expnorm":
        unsupported.append(f"rbf_type={hp['rbf_type']!r}")
    if hp.get("model", "CET") != "CET":
        unsupported.append(f"model={hp['model']!r} (only the CET / ConditionalET backbone)")
    if unsupported:
        raise ValueError("SCD model uses features atomzoo's SCDET does not implement: " + "; ".join(unsupported))
    return {
        "width": int(hp.get("emb_dim", 256)), "num_interactions": int(hp.get("num_layers", 8)),
        "num_rbf": int(hp.get("num_rbf", 64)), "num_heads": int(hp.get("num_heads", 8)),
        "cutoff": float(hp.get("cutoff_upper", 5.0)), "trainable_rbf": bool(hp.get("trainable_rbf", True)),
        "neighbor_embedding": bool(hp.get("neighbor_embedding", True)),
        "distance_influence": str(hp.get("distance_influence", "both")), "activation": str(hp.get("activation", "silu")),
        "attn_activation": str(hp.get("activation", "silu")), "vector_cutoff": bool(hp.get("vector_cutoff", True)),
        "num_embeddings": int(hp.get("max_z", 118)), "vec_prenorm": bool(hp.get("vec_prenorm", True)),
        "inv_post_norm": bool(hp.get("inv_post_norm", False)),
    }  # fmt: skip


def _kwargs_from_module(rep: nn.Module) -> dict[str, Any]:
    layer = rep.attention_layers[0]
    return {"model": "CET", "emb_dim": rep.hidden_channels, "num_layers": rep.num_layers, "num_rbf": rep.num_rbf,
            "num_heads": rep.num_heads, "cutoff_lower": rep.cutoff_lower, "cutoff_upper": rep.cutoff_upper,
            "rbf_type": rep.rbf_type, "trainable_rbf": rep.trainable_rbf,
            "neighbor_embedding": rep.neighbor_embedding_module is not None,
            "distance_influence": rep.distance_influence, "activation": rep.activation, "max_z": rep.max_z,
            "vector_cutoff": bool(layer.vector_cutoff), "vec_prenorm": bool(rep.vec_prenorm),
            "inv_post_norm": bool(rep.use_inv_post_norm), "vec_post_norm": bool(rep.use_vec_post_norm),
            "layernorm_on_vec": bool(rep.layernorm_on_vec)}  # fmt: skip


def read_scd_checkpoint(source) -> tuple[dict[str, Any], Mapping[str, Tensor]]:
    """``(hyperparameters, state_dict)`` of an SCD checkpoint path, loaded dict, or CET / ConditionalET module."""
    if isinstance(source, (str, Path)):
        from atomzoo.model_files import load_checkpoint_dict

        source = load_checkpoint_dict(source)  # atomzoo's one torch.load; FileNotFoundError in one line
    if isinstance(source, nn.Module):
        rep = getattr(source, "rep_model", source)
        if not hasattr(rep, "attention_layers") or not hasattr(rep, "drop_cond"):
            raise ValueError(f"{type(rep).__name__} is not SCD's ConditionalET (models/ET_models/scet.py)")
        return _kwargs_from_module(rep), {f"rep_model.{k}": v for k, v in rep.state_dict().items()}
    if isinstance(source, Mapping) and "state_dict" in source and "hyper_parameters" in source:
        return dict(source["hyper_parameters"]), source["state_dict"]
    raise TypeError("source must be an SCD checkpoint path, a loaded checkpoint dict with 'hyper_parameters' and "
                    f"'state_dict', or a CET / ConditionalET module; got {type(source).__name__}")  # fmt: skip


def convert_state_dict(state_dict: Mapping[str, Tensor], model: SCDET) -> tuple[dict[str, Tensor], list[str]]:
    """Reference keys (any prefix up to ``rep_model.``) -> SCDET keys; returns ``(mapped, skipped)``
    (``skipped``: keys outside ``rep_model`` -- heads, priors, EMA copies -- and the unused vector post norms).

    Raises:
        SCDWeightsMismatch: a key with no counterpart, a missing one, or a shape that differs (all listed).
    """
    mapped, skipped, unknown = {}, [], []
    own = model.state_dict()
    for key, value in state_dict.items():
        if "rep_model." not in key:
            skipped.append(key)
            continue
        key = key.split("rep_model.", 1)[1]
        if _UNUSED.match(key):
            skipped.append(key)
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                mapped[new] = value.reshape(own[new].shape) if new in own and value.numel() == own[new].numel() else value
                break
        else:
            unknown.append(key)
    extras = {k for k in own if k.endswith("mask_embedding")}  # atomzoo's atom masking: keeps its initialisation
    missing = sorted(set(own) - set(mapped) - extras)
    shapes = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in mapped if k in own
              and mapped[k].shape != own[k].shape]  # fmt: skip
    if unknown or missing or shapes:
        raise SCDWeightsMismatch(f"SCD weights do not fit SCDET: no counterpart {sorted(unknown)}; missing {missing}; "
                                 f"shapes {shapes}")  # fmt: skip
    return mapped, skipped


def load_scd_et(source, **overrides) -> SCDET:
    """An :class:`SCDET` with the reference's hyperparameters and weights (module docstring for ``source``).

    Args:
        source: checkpoint path (their trainer's ``last.ckpt``), loaded dict, or ``CET`` / ``ConditionalET``.
        **overrides: SCDET arguments that do not change shapes (``max_num_neighbors``, ``drop_path``).

    Returns: the SCDET in the weights' floating dtype, training mode; ``atom masking`` embeddings
    (atomzoo's addition) keep their initialisation.

    Raises:
        ValueError: an unsupported feature (:func:`scd_et_kwargs`); SCDWeightsMismatch: keys or shapes differ.
    """
    hparams, state_dict = read_scd_checkpoint(source)
    model = SCDET(**{**scd_et_kwargs(hparams), **overrides})
    mapped, _ = convert_state_dict(state_dict, model)
    dtypes = {v.dtype for v in mapped.values() if torch.is_floating_point(v)}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=False)
    return model


__all__ = ["DyT", "SCDET", "SCDWeightsMismatch", "convert_state_dict", "load_scd_et", "read_scd_checkpoint",
           "scd_et_kwargs"]
