"""Where the shared specification and scenarios live.

They sit next to the repository (``../shared``, read-only). A clone made
elsewhere (``git clone . /tmp/fresh``) finds them through ``BILLOW_SHARED_DIR``
or the workspace's ``/work/shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    candidates = [
        Path(os.environ["BILLOW_SHARED_DIR"]) if os.environ.get("BILLOW_SHARED_DIR") else None,
        REPO.parent / "shared",
        Path("/work/shared"),
    ]
    for candidate in candidates:
        if candidate is not None and (candidate / "scenarios").is_dir():
            return candidate
    raise FileNotFoundError("shared/ not found: set BILLOW_SHARED_DIR to its path")


ACME = shared_dir() / "scenarios" / "acme"
