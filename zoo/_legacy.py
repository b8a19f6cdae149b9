"""Old module paths keep working: ``backbones.SchNet`` -> ``atomzoo.backbones.SchNet``, with a warning.

Up to version 0.1 the distribution installed four top-level packages (``zoo``, ``backbones``,
``objectives``, ``datamodules``). Since then everything lives under :mod:`atomzoo`. Configs
(``class_path: backbones.SchNet``), checkpoints (their hyperparameters record class paths) and
safetensors exports (their metadata records ``class_path``) written before the move still load:
this import hook maps each old module name onto the same module object under :mod:`atomzoo` (so
classes stay identical: ``isinstance`` checks keep holding) and emits a ``FutureWarning`` that names
the new path.

The hook never shadows an unrelated package: an old top-level name that resolves elsewhere on
``sys.path`` (a different project called ``backbones``, say) is left to it. It is installed by
importing :mod:`atomzoo` (the ``zoo`` command does).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path

#: old module name -> new module name (submodules follow their package)
RENAMED = {
    "backbones": "atomzoo.backbones",
    "objectives": "atomzoo.objectives",
    "datamodules": "atomzoo.datamodules",
    "zoo.graph": "atomzoo.nn.graph",
    "zoo.radial": "atomzoo.nn.radial",
    "zoo.conditioning": "atomzoo.nn.conditioning",
    "zoo.cli": "atomzoo.cli",
    "zoo.bench": "atomzoo.bench",
    "zoo": "atomzoo",
}


def new_name(old: str) -> str | None:
    """The :mod:`atomzoo` module name for an old module name, or ``None`` if it was never renamed."""
    for prefix in sorted(RENAMED, key=len, reverse=True):
        if old == prefix or old.startswith(prefix + "."):
            return RENAMED[prefix] + old[len(prefix):]
    return None


def new_class_path(class_path: str) -> str:
    """``"backbones.SchNet"`` -> ``"atomzoo.backbones.SchNet"``; other paths are returned unchanged."""
    module, _, name = class_path.rpartition(".")
    renamed = new_name(module) if module else None
    return f"{renamed}.{name}" if renamed else class_path


def _ours(old: str, new: str) -> bool:
    """True if ``old`` is free to alias: not importable elsewhere, or found only in our own folders."""
    if "." in old:  # a submodule: ours exactly when its parent is our alias
        parent = old.rpartition(".")[0]
        return parent in sys.modules and sys.modules[parent] is sys.modules.get(new_name(parent) or "")
    spec = importlib.machinery.PathFinder.find_spec(old)
    if spec is None:
        return True
    target = importlib.util.find_spec(new)
    ours = {Path(p).resolve() for p in (target.submodule_search_locations or [])} if target else set()
    found = {Path(p).resolve() for p in (spec.submodule_search_locations or [])}
    return bool(found) and found <= ours


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec  # the import system overwrote it with the alias's spec


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that serves old module names (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None or not _ours(fullname, new):
            return None
        if "." not in fullname or fullname in RENAMED:
            warnings.warn(
                f"module {fullname!r} is now {new!r}: update class paths and imports "
                f"(for example 'class_path: {new}.<Class>'); the old name will be removed",
                FutureWarning,
                stacklevel=2,
            )
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=True)


def install() -> None:
    """Put :class:`LegacyFinder` first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LegacyFinder())


def upgrade_class_paths(obj) -> bool:
    """Rewrite old ``class_path`` / ``_class_path`` values in a (nested) config dict in place.

    Returns True if anything changed. Used on checkpoint hyperparameters before Lightning reads
    them (its loader only accepts class paths whose module is already imported).
    """
    changed = False
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("class_path", "_class_path") and isinstance(value, str):
                new = new_class_path(value)
                if new != value:
                    obj[key] = new
                    changed = True
            else:
                changed |= upgrade_class_paths(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            changed |= upgrade_class_paths(value)
    return changed
