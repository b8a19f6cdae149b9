"""Named pretrained models, offline: ``atomzoo.pretrained.list()``, ``path(name)``, ``card(name)``.

A name is the stem of an export (``python -m atomzoo.export``): ``<name>.safetensors`` with its model
card ``<name>.card.json`` (:mod:`atomzoo.cards`: SHA-256 of the weights, backbone, objective,
training data, test numbers). Names are looked up, first match wins, in

1. the ``models_dir`` a caller gives (``zoo models --models_dir D``),
2. the directories of ``$ATOMZOO_MODELS`` (``os.pathsep``-separated; for large files: ET, converted
   SCD / MACE checkpoints),
3. ``atomzoo/models/`` inside the package (small files shipped with atomzoo: :data:`SHIPPED`).

Nothing is ever downloaded. A name that is not found raises :class:`ModelNotFound` (a
``FileNotFoundError``) in one line naming the two files to put where. Every place that takes a
model file takes a name too -- ``atomzoo.load(name)``, ``zoo fit --model.init_from name``,
:func:`atomzoo.model_files.build_backbone` (the pretrained backbone) -- because :func:`atomzoo.model_files.read`, the one
reader, resolves names with :func:`resolve`; it also checks the weights' SHA-256 against the card on
every load (a modified file is refused in one line).

``zoo models [--models_dir D]`` prints every model found (:func:`main`).
"""

from __future__ import annotations

import builtins
import os
import re
from pathlib import Path

from .cards import card_path, read_card

#: the models shipped inside the package (package data, see pyproject.toml)
SHIPPED = Path(__file__).resolve().parent / "models"
#: environment variable naming directories of model files (``os.pathsep``-separated)
ENV = "ATOMZOO_MODELS"
#: what a name looks like: no path separator, no model-file suffix
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".model", ".json", ".yaml")


#: published models atomzoo converts but does not ship (too large, or another code's licence and hosting):
#: name -> where the source file comes from and the command that makes ``<name>.safetensors`` from it
PUBLISHED = {
    "ct-scd-pcq": ("SCD's PCQM4Mv2-pretrained backbone: last.ckpt of the Hugging Face repository Ty-Perez/ct-scd-pcq",
                   "python -m atomzoo.convert scd last.ckpt {dir}/ct-scd-pcq.safetensors"),
    "ct-scd-amp": ("SCD's published backbone ct-scd-amp: last.ckpt of the Hugging Face repository Ty-Perez/ct-scd-amp",
                   "python -m atomzoo.convert scd last.ckpt {dir}/ct-scd-amp.safetensors"),
}
#: names of converted mace-torch models (any MACE-MP / MACE-OFF .model file)
MACE_PREFIXES = ("mace-mp", "mace-off", "mace-omat", "mace-matpes")


class ModelNotFound(FileNotFoundError):
    """A model name found in none of the model directories; the message says which files to put where."""


def directories(models_dir: str | os.PathLike | None = None) -> builtins.list[Path]:
    """The directories names are looked up in, in order: ``models_dir``, ``$ATOMZOO_MODELS``, :data:`SHIPPED`."""
    dirs = [Path(models_dir).expanduser()] if models_dir else []
    dirs += [Path(d).expanduser() for d in os.environ.get(ENV, "").split(os.pathsep) if d.strip()]
    return dirs + [SHIPPED]


def is_name(value: str | os.PathLike) -> bool:
    """True when ``value`` reads as a model name (``painn64-denoising-qm9``), not as a file path."""
    text = os.fspath(value)
    return bool(_NAME.match(text)) and not text.endswith(_FILE_SUFFIXES)


def list(models_dir: str | os.PathLike | None = None) -> builtins.list[str]:  # noqa: A001 -- the issue's API name
    """Names of every model found (a card and its weights), sorted; a name in several directories once."""
    names: set[str] = set()
    for directory in directories(models_dir):
        if directory.is_dir():
            for card in directory.glob("*.card.json"):
                name = card.name[: -len(".card.json")]
                if (directory / f"{name}.safetensors").is_file():
                    names.add(name)
    return sorted(names)


def path(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    """The weights file (``<name>.safetensors``) of the model ``name``; its card lies next to it.

    Raises:
        ModelNotFound: in no directory of :func:`directories` (one line: the files and where to put them).
    """
    for directory in directories(models_dir):
        weights = directory / f"{name}.safetensors"
        if weights.is_file() and card_path(weights).is_file():
            return weights
    where = f"${ENV} (now {os.environ[ENV]!r})" if os.environ.get(ENV) else f"a directory named by ${ENV}"
    known = list(models_dir)
    target = str(models_dir or (os.environ.get(ENV, "").split(os.pathsep)[0] or "$ATOMZOO_MODELS"))
    if name in PUBLISHED:
        source, command = PUBLISHED[name]
        raise ModelNotFound(f"no model named {name!r} here: it is {source}; convert it once with "
                            f"`{command.format(dir=target)}` (writes the card too) and keep it in {where} or --models_dir")
    if name.startswith(MACE_PREFIXES):
        raise ModelNotFound(
            f"no model named {name!r} here: convert the mace-torch .model file once with `python -m atomzoo.convert mace "
            f"FILE.model {target}/{name}.safetensors` (needs mace-torch, the [mace] extra) and keep it in {where} or "
            "--models_dir"
        )
    raise ModelNotFound(
        f"no model named {name!r}: put {name}.safetensors and {name}.card.json (written by python -m atomzoo.export) "
        f"into {where} or --models_dir; models found: {', '.join(known) if known else 'none'}"
    )


def card(name: str, models_dir: str | os.PathLike | None = None) -> dict:
    """The model card of ``name`` (:func:`atomzoo.cards.read_card`; :class:`ModelNotFound` if absent)."""
    return read_card(path(name, models_dir))


def resolve(path_or_name: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path:
    """A model file: ``path_or_name`` itself when it exists or reads as a path, else the weights of that name.

    Raises:
        ModelNotFound: a name (:func:`is_name`) that is not an existing file and not a known model.
    """
    candidate = Path(path_or_name)
    if candidate.exists() or not is_name(path_or_name):
        return candidate
    return path(os.fspath(path_or_name), models_dir)


# ----- zoo models ----------------------------------------------------------------------------------
def _backbone_text(entry: dict) -> str:
    backbone = entry.get("backbone") or {}
    args = backbone.get("init_args") or {}
    keys = ("width", "hidden_channels", "num_interactions", "num_layers", "cutoff")
    shown = ", ".join(f"{k} {args[k]}" for k in keys if k in args)
    return f"{str(backbone.get('class_path') or '?').rpartition('.')[2]}({shown})"


def _data_text(entry: dict) -> str:
    data = entry.get("training_data") or {}
    cls = str(data.get("class_path") or "?").rpartition(".")[2]
    args = data.get("init_args") or {}
    size = args.get("train_size") or args.get("num_train")
    return f"{cls}" + (f" ({size} training structures)" if size else "") if data else "not recorded"


def test_numbers(entry: dict) -> builtins.list[str]:
    """The card's test numbers as text: the benchmark's fine-tuning results, then the run's own test metrics."""
    lines = []
    benchmark = entry.get("benchmark")
    if benchmark is not None and not benchmark.get("finetune"):
        lines.append("no finished fine-tuning cell of the benchmark yet (python benchmarks/export_pretrained.py "
                     "adds its numbers when one has finished)")
    for row in (benchmark or {}).get("finetune") or []:
        scratch = row.get("scratch_value")
        lines.append(f"fine-tuned {row['target']} on {row['label_budget']} labels: {row['metric']} {row['value']:.1f}"
                     + (f" (from scratch {scratch:.1f})" if scratch is not None else ""))  # fmt: skip
    for key, value in sorted((entry.get("test_metrics") or {}).items()):
        lines.append(f"{key} {value:.4g}")
    return lines or ["none recorded"]


def describe(name: str, models_dir: str | os.PathLike | None = None) -> str:
    """The lines ``zoo models`` prints for one model."""
    weights = path(name, models_dir)
    entry = read_card(weights)
    objective = str(entry.get("objective") or "not recorded").rpartition(".")[2]
    lines = [
        f"{name}",
        f"  kind        {entry.get('model_format')}",
        f"  backbone    {_backbone_text(entry)}",
        f"  objective   {objective}",
        f"  training    {_data_text(entry)}; elements {entry.get('elements')}",
        f"  size        {weights.stat().st_size / 1e6:.2f} MB  ({weights})",
        *(f"  test        {line}" for line in test_numbers(entry)),
        f"  sha256      {entry.get('sha256')}",
    ]
    return "\n".join(lines)


def main(argv: builtins.list[str] | None = None) -> None:
    """``zoo models [--models_dir D] [NAME ...]``: print every model found (or the named ones)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="zoo models", description="List the pretrained models atomzoo finds "
                                     f"(--models_dir, ${ENV}, the shipped ones); nothing is downloaded.")
    parser.add_argument("names", nargs="*", help="only these models")
    parser.add_argument("--models_dir", default=None, help="a directory of <name>.safetensors + <name>.card.json")
    args = parser.parse_args(argv)
    names = args.names or list(args.models_dir)
    if not names:
        print(f"no models found in {', '.join(str(d) for d in directories(args.models_dir))}")
        return
    try:
        print("\n\n".join(describe(name, args.models_dir) for name in names))
    except (FileNotFoundError, ValueError) as err:
        parser.exit(1, f"zoo models: error: {err}\n")
    sys.stdout.flush()


__all__ = ["ENV", "MACE_PREFIXES", "PUBLISHED", "SHIPPED", "ModelNotFound", "card", "describe", "directories", "is_name", "list", "main", "path",
           "resolve", "test_numbers"]  # fmt: skip
