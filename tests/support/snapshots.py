"""Text snapshots: what a person sees, kept in the repository and compared whole.

``BILLOW_UPDATE_SNAPSHOTS=1 pytest ...`` rewrites them; review the diff
before committing it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

SNAPSHOTS = Path(__file__).resolve().parents[1] / "cli" / "snapshots"


def assert_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    text = "\n".join(ln.rstrip() for ln in text.splitlines()) + "\n"
    if os.environ.get("BILLOW_UPDATE_SNAPSHOTS") or not path.exists():
        if not os.environ.get("BILLOW_UPDATE_SNAPSHOTS"):
            path.write_text(text)
            raise AssertionError(f"new snapshot {path.name} written: review and commit it")
        path.write_text(text)
        return
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"{name} (snapshot)", f"{name} (now)"))
        raise AssertionError(f"{name} differs from its snapshot:\n{diff}")
