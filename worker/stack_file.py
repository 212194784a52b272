"""Where a running ``billow up`` serves its API, for the CLI in another shell.

``billow up`` records its API URL in its data directory once the stack is up
and removes it when it stops; the ops commands read it when BILLOW_API_URL is
not set, so a second shell in the same directory finds a stack started on
another port (as ``apikey create`` finds its database). A record is believed
only while a ``billow up`` still holds the directory's lock: a stack that was
killed leaves a stale file that is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path

API_URL_FILE = "api.url"
LOCK_FILE = "up.lock"


def record_api_url(data_dir: Path, url: str) -> None:
    with contextlib.suppress(OSError):
        (data_dir / API_URL_FILE).write_text(url + "\n")


def forget_api_url(data_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (data_dir / API_URL_FILE).unlink(missing_ok=True)


def _locked_by_a_running_stack(data_dir: Path) -> bool:
    try:
        fh = (data_dir / LOCK_FILE).open("r")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # `billow up` holds it exclusively
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def running_api_url(data_dir: Path) -> str | None:
    """The API URL of the `billow up` running on ``data_dir``, if one is."""
    data_dir = Path(data_dir).expanduser()
    if not _locked_by_a_running_stack(data_dir):
        return None
    try:
        url = (data_dir / API_URL_FILE).read_text().strip()
    except OSError:
        return None
    return url or None
