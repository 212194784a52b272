"""Settings for Temporal Cloud and secured clusters -> ``Client.connect`` options."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from worker.settings import Settings
from worker.temporal_client import connect_options, tls_option

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BILLOW_") or name in ("DATABASE_URL", "TEMPORAL_ADDRESS"):
            monkeypatch.delenv(name)


def test_plain_server_has_no_tls_and_no_key() -> None:
    opts = connect_options(Settings(temporal_address="temporal:7233"))
    assert opts["target_host"] == "temporal:7233"
    assert opts["namespace"] == "default"
    assert opts["tls"] is False
    assert opts["api_key"] is None
    assert opts["interceptors"] == []


def test_temporal_cloud_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLOW_TEMPORAL_ADDRESS", "us-east-1.aws.api.temporal.io:7233")
    monkeypatch.setenv("BILLOW_TEMPORAL_NAMESPACE", "billing.a1b2c")
    monkeypatch.setenv("BILLOW_TEMPORAL_API_KEY", "secret-key")
    settings = Settings()
    opts = connect_options(settings)
    assert opts["target_host"] == "us-east-1.aws.api.temporal.io:7233"
    assert opts["namespace"] == "billing.a1b2c"
    assert opts["api_key"] == "secret-key"
    assert opts["tls"] is True  # an API key implies TLS with the system roots
    assert "secret-key" not in repr(settings)  # never logged by accident


def test_mtls_with_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client.pem").write_text(CERT)
    (tmp_path / "client.key").write_text(KEY)
    (tmp_path / "ca.pem").write_text(CERT)
    monkeypatch.setenv("BILLOW_TEMPORAL_TLS_CERT", str(tmp_path / "client.pem"))
    monkeypatch.setenv("BILLOW_TEMPORAL_TLS_KEY", str(tmp_path / "client.key"))
    monkeypatch.setenv("BILLOW_TEMPORAL_TLS_CA", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("BILLOW_TEMPORAL_TLS_SERVER_NAME", "temporal.internal")
    tls = tls_option(Settings())
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == CERT.encode()
    assert tls.client_private_key == KEY.encode()
    assert tls.server_root_ca_cert == CERT.encode()
    assert tls.domain == "temporal.internal"


def test_mtls_with_inline_pem() -> None:
    tls = tls_option(Settings(temporal_tls_cert=CERT, temporal_tls_key=KEY))
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == CERT.encode()
    assert tls.server_root_ca_cert is None  # system roots (Temporal Cloud)


def test_explicit_tls_without_files() -> None:
    assert tls_option(Settings(temporal_tls=True)) is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temporal_tls_cert": CERT}, "go together"),
        ({"temporal_tls_key": KEY}, "go together"),
        ({"temporal_tls": False, "temporal_tls_ca": CERT}, "contradicts"),
        ({"temporal_tls_cert": "/nonexistent/client.pem", "temporal_tls_key": KEY},
         "BILLOW_TEMPORAL_TLS_CERT: cannot read"),
    ],
)
def test_inconsistent_tls_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tls_option(Settings.model_validate(kwargs))


def test_tracing_interceptor_when_enabled() -> None:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    opts = connect_options(Settings(otel_enabled=True, otel_exporter="none"))
    assert [type(i) for i in opts["interceptors"]] == [TracingInterceptor]
