"""Compile billow's modules to bytecode before a bench, as the image does.

deploy/Dockerfile runs ``compileall`` on the installed package, so a
production worker reads ``.pyc`` files. A checkout run with
``PYTHONDONTWRITEBYTECODE=1`` (this machine sets it) never writes them, and
the workflow sandbox then compiles ``workflows/contract.py`` from source for
every workflow instance it creates: every new contract, every cache miss,
every continue-as-new. That is a cost of the checkout, not of billow, so the
benches remove it from both sides before they measure (RESULTS section 9).
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGES = ("models", "workflows", "activities", "worker", "api", "documents", "bench")


def precompile(root: Path | None = None) -> bool:
    """Write ``__pycache__`` for every package under ``root`` (the repository)."""
    base = root or Path(__file__).resolve().parent.parent
    ok = True
    for name in PACKAGES:
        if (base / name).is_dir():
            ok = compileall.compile_dir(str(base / name), quiet=1) and ok
    return bool(ok)
