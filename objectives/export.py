"""Backbone weights alone: export from any objective's checkpoint, and load for fine-tuning.

Export (``safetensors`` file + JSON metadata, loadable without unpickling)::

    python -m atomzoo.objectives.export runs/zoo/version_0/checkpoints/last.ckpt schnet_denoised.safetensors

writes ``schnet_denoised.safetensors`` holding only the ``backbone.*`` tensors (with the prefix
stripped: the keys of ``backbone.state_dict()``) and ``schnet_denoised.json`` with::

    {"class_path": "atomzoo.backbones.schnet.SchNet", "init_args": {...}, "init_args_complete": true,
     "source": "<checkpoint>", "objective": "atomzoo.objectives.denoising.Denoising"}

The same JSON is stored in the safetensors header metadata (key ``"atomzoo"``), so the
``.safetensors`` file alone is enough. ``init_args`` come from the checkpoint's hyperparameters when
the run was configured by class_path / init_args (the ``zoo`` CLI); for a backbone instance built
in Python they are recovered best-effort from the backbone's attributes and
``init_args_complete`` says whether every constructor argument was found.

Loading: :func:`load_backbone_weights` reads either a Lightning checkpoint of ANY objective (its
``backbone.*`` entries; heads, EMA targets etc. are ignored) or such a safetensors file, and
returns ``(state_dict, metadata)``. :func:`check_backbone_compatible` raises a clear error naming
both backbone classes when the class or the tensor shapes differ. ``Objective(init_from=...)``
uses both.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

import torch
from atomzoo.backbones.base import OPTIONAL_PARAMETERS
from torch import Tensor, nn

PREFIX = "backbone."
META_KEY = "atomzoo"


def class_path_of(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_class(class_path: str | None):
    """The object a config's or checkpoint's ``class_path`` names, or None when it cannot be imported
    (callers report that in their own terms)."""
    if not class_path or "." not in str(class_path):
        return None
    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def backbone_init_args(backbone: nn.Module) -> tuple[dict, bool]:
    """Best-effort constructor arguments of a backbone instance from same-named attributes.

    Returns ``(init_args, complete)``; ``complete`` is False when some argument was not found.
    """
    args, complete = {}, True
    for name, param in inspect.signature(type(backbone).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(backbone, name, inspect.Parameter.empty)
        if isinstance(value, Tensor):
            value = value.tolist()
        if value is inspect.Parameter.empty or isinstance(value, nn.Module) or not _jsonable(value):
            complete = False
            continue
        args[name] = value
    return args, complete


def _metadata_from_checkpoint(checkpoint: dict, source: str) -> dict:
    hparams = checkpoint.get("hyper_parameters", {}) or {}
    backbone = hparams.get("backbone")
    meta = {"source": str(source), "objective": checkpoint.get("objective_class_path")}
    if isinstance(backbone, dict) and "class_path" in backbone:  # CLI run: the config itself
        meta.update(class_path=backbone["class_path"], init_args=dict(backbone.get("init_args", {})), init_args_complete=True)
    elif isinstance(backbone, nn.Module):
        args, complete = backbone_init_args(backbone)
        meta.update(class_path=class_path_of(backbone), init_args=args, init_args_complete=complete)
    else:
        meta.update(
            class_path=checkpoint.get("backbone_class_path"),
            init_args=checkpoint.get("backbone_init_args", {}),
            init_args_complete=bool(checkpoint.get("backbone_init_args_complete", False)),
        )
    if not meta.get("class_path") and checkpoint.get("backbone_class_path"):
        meta["class_path"] = checkpoint["backbone_class_path"]
    return meta


def load_backbone_weights(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """``(backbone state_dict, metadata)`` from a Lightning checkpoint or an exported safetensors file.

    Checkpoints are unpickled (``torch.load(weights_only=False)``): only load checkpoints you trust.
    Safetensors files are never unpickled.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"init_from: {path} does not exist (to reload a fine-tuned checkpoint without it, pass init_from=None)"
        )
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        meta = json.loads(header.get(META_KEY, "{}"))
        sidecar = path.with_suffix(".json")
        if not meta and sidecar.exists():
            meta = json.loads(sidecar.read_text())
        return load_file(str(path)), meta
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict")
    if state is None:
        raise ValueError(f"{path} is neither a Lightning checkpoint (no 'state_dict') nor a .safetensors file")
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not weights:
        raise ValueError(f"{path} has no 'backbone.*' weights: not a checkpoint of an atomzoo objective")
    return weights, _metadata_from_checkpoint(checkpoint, str(path))


def check_backbone_compatible(backbone: nn.Module, weights: dict[str, Tensor], meta: dict, source: str) -> None:
    """Raise ``ValueError`` naming both backbones if the class or any tensor name / shape differs."""
    ours = class_path_of(backbone)
    theirs = meta.get("class_path")
    their_cls = resolve_class(theirs)
    if theirs and (their_cls is not type(backbone)) and theirs.rpartition(".")[2] != type(backbone).__qualname__:
        raise ValueError(
            f"init_from={source}: the checkpoint's backbone is {theirs} but this model's backbone is {ours}; "
            "use the same backbone class (and the same init_args) as the pretraining run"
        )
    own = backbone.state_dict()
    # checkpoints from before atom masking have no mask embedding: the model keeps its initial one
    missing = sorted(k for k in set(own) - set(weights) if k not in OPTIONAL_PARAMETERS)
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        details = []
        if shapes:
            details.append("shape mismatches: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            details.append(f"missing in checkpoint: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            details.append(f"not in model: {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
        raise ValueError(
            f"init_from={source}: backbone weights do not fit. checkpoint backbone {theirs or 'unknown class'} "
            f"{meta.get('init_args', {})} vs model backbone {ours}. " + " | ".join(details)
        )


def load_into_backbone(backbone: nn.Module, path: str | Path) -> dict:
    """Load ``backbone.*`` weights from ``path`` into ``backbone`` (strict); returns the metadata."""
    weights, meta = load_backbone_weights(path)
    check_backbone_compatible(backbone, weights, meta, str(path))
    backbone.load_state_dict(weights, strict=True)
    return meta


def export_backbone(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the backbone weights of ``checkpoint`` to ``out`` (``.safetensors``) and ``out.json``; return the metadata."""
    from safetensors.torch import save_file

    weights, meta = load_backbone_weights(checkpoint)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(tensors, str(out), metadata={META_KEY: json.dumps(meta)})
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def build_backbone(path: str | Path) -> nn.Module:
    """Instantiate the backbone described by an exported file's metadata and load its weights."""
    weights, meta = load_backbone_weights(path)
    cls = resolve_class(meta.get("class_path"))
    if cls is None:
        raise ValueError(f"{path}: cannot import backbone class {meta.get('class_path')!r}")
    if not meta.get("init_args_complete", False):
        raise ValueError(f"{path}: init_args are incomplete ({meta.get('init_args')}); build the backbone yourself and use load_into_backbone")
    backbone = cls(**meta.get("init_args", {}))
    check_backbone_compatible(backbone, weights, meta, str(path))
    backbone.load_state_dict(weights, strict=True)
    return backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atomzoo.objectives.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint of any atomzoo objective")
    parser.add_argument("out", help="output .safetensors path (a .json with the metadata is written next to it)")
    args = parser.parse_args(argv)
    meta = export_backbone(args.checkpoint, args.out)
    print(f"wrote {Path(args.out).with_suffix('.safetensors')} ({meta.get('class_path')})")


if __name__ == "__main__":
    main()

__all__ = ["backbone_init_args", "build_backbone", "check_backbone_compatible", "export_backbone",
           "load_backbone_weights", "load_into_backbone", "main"]
