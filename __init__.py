"""Not part of the atomzoo package: a guard in the root of the repository (issue 32, item 2).

``git clone`` names the repository's folder ``atomzoo``. A script (or ``python -c``) run from the
folder *above* the clone has that folder on ``sys.path``, and without this file Python would import
the clone as an empty namespace package named ``atomzoo`` before the installed one (an editable
install's finder comes after the path finder): ``module 'atomzoo' has no attribute 'load'``.

With this file the clone is a regular package, so Python runs it; it imports the installed
``atomzoo`` instead (searching ``sys.path`` without the clone's parent folder) and puts that in
``sys.modules``, so ``import atomzoo`` binds the installed package wherever the user stands. If
atomzoo is not installed it raises ``ImportError`` naming the folder and the fix. Imported under any
other name (a clone in a folder not called ``atomzoo``) it does nothing. The installed package's
root is ``zoo/__init__.py`` (``pyproject.toml``: ``package-dir``); this file is not packaged.
"""

import importlib
import os
import sys


def _installed_atomzoo():
    clone = os.path.dirname(os.path.abspath(__file__))
    parent = os.path.realpath(os.path.dirname(clone))
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != parent]
    del sys.modules[__name__]
    try:
        return importlib.import_module(__name__)
    except ImportError as err:
        raise ImportError(
            f"`import atomzoo` found {clone}, a clone of the atomzoo repository next to your script, and no "
            f"installed atomzoo: install it (`pip install -e {clone}`) or run the script from another folder"
        ) from err
    finally:
        sys.path[:] = saved


if __name__ == "atomzoo":
    sys.modules[__name__] = _installed_atomzoo()
