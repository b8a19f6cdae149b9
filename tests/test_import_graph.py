"""atomzoo's modules import each other without a circle, and the floors keep their direction.

The import graph is read from the source files with ``ast``: every ``import``, also those inside
functions (where circles hide; ``if TYPE_CHECKING:`` blocks excepted), plus the implicit edge to each
package whose ``__init__`` an import runs. A module's own enclosing packages are not edges: they are
initialised before it in any case. Then every module is imported first, in an interpreter where no
atomzoo module is loaded yet, so an import that only works in some order fails here too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """``{package name: folder}`` as pyproject.toml installs them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    explicit = {name: ROOT / folder for name, folder in config.get("package-dir", {}).items()}
    out = {}
    for name in config["packages"]:
        if name in explicit:
            out[name] = explicit[name]
        else:  # a subpackage inside its parent's folder
            parent, _, leaf = name.rpartition(".")
            out[name] = explicit.get(parent, out.get(parent, ROOT)) / leaf
    return out


def module_files() -> dict[str, Path]:
    """Every atomzoo module (``__main__`` scripts excepted) and its source file."""
    out = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.glob("*.py")):
            if path.stem == "__main__":
                continue
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(module: str, path: Path, modules: set[str]) -> set[str]:
    """The atomzoo modules that importing ``module`` imports (directly, or through a package ``__init__``)."""
    is_package = path.stem == "__init__"
    base = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                source = f"{anchor}.{node.module}" if node.module else anchor
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                targets.add(candidate if candidate in modules else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    own_packages = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
    if is_package:
        own_packages.add(module)
    out = set()
    for target in targets:
        if target not in modules or target in own_packages:
            continue
        out.add(target)
        parts = target.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ first (a module's own packages are already running)
        parents = (".".join(parts[:k]) for k in range(1, len(parts)))
        out.update(p for p in parents if p in modules and p not in own_packages)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {module: imported_modules(module, path, names) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_graph_reader_sees_imports_in_functions_and_package_inits():
    graph = import_graph()
    assert "atomzoo.nn.graph" in graph["atomzoo.backbones.base"]
    assert "atomzoo.inference" in graph["atomzoo.calculator"]
    assert "atomzoo.backbones" in graph["atomzoo.objectives.regression"]  # runs backbones/__init__ first
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    graph = import_graph()
    found = cycles(graph)
    rings = ["; ".join(f"{a} -> {b}" for a in ring for b in sorted(graph[a]) if b in ring) for ring in found]
    assert not found, "import circles (the imports inside each ring, one ring per line):\n" + "\n".join(rings)


def test_the_floors_import_downwards_only():
    """atomzoo.nn imports nothing above it; data modules and objectives do not import each other; the
    calculator imports inference, not the other way round."""
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("atomzoo.nn"):
            above = sorted(t for t in targets if not t.startswith("atomzoo.nn") and t != "atomzoo.units")
            assert not above, f"{module} (a building block) imports {above}"
        if module.startswith("atomzoo.objectives"):
            data = sorted(t for t in targets if t.startswith("atomzoo.datamodules"))
            assert not data, f"{module} imports {data}: objectives get their data through DataModule.data_summary"
        if module.startswith("atomzoo.datamodules"):
            objectives = sorted(t for t in targets if t.startswith("atomzoo.objectives"))
            assert not objectives, f"{module} imports {objectives}"
    assert "atomzoo.calculator" not in graph["atomzoo.inference"]
    assert not {t for t in graph["atomzoo.units"] if t != "atomzoo"}, "atomzoo.units is a leaf"


def test_every_module_imports_first():
    """Each module imported as the first atomzoo module of an interpreter (third-party packages stay
    loaded between them: they import nothing of atomzoo)."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'atomzoo' or m.startswith('atomzoo.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ':\\n' + traceback.format_exc(limit=-3))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *sorted(module_files())], capture_output=True, text=True,
                          cwd=ROOT / "tests")  # fmt: skip
    assert done.returncode == 0, f"modules that fail to import first:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
