"""Connecting to Temporal with billow's data converter.

Plain ``host:port`` for a local or in-cluster server; for Temporal Cloud or a
secured cluster, settings add an API key (Cloud; implies TLS), mTLS client
certificate and key, a private CA and a TLS server name (deploy/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from worker.settings import Settings
from worker.telemetry import tracing_interceptors

log = logging.getLogger("billow.temporal")

# Waits between connection attempts: 1 s, doubling, at most 30 s.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


def _pem(value: str, setting: str) -> bytes:
    """A PEM given inline (``-----BEGIN ...``) or as a file path."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def tls_option(settings: Settings) -> bool | TLSConfig:
    """``Client.connect``'s ``tls`` argument for these settings."""
    s = settings
    if bool(s.temporal_tls_cert) != bool(s.temporal_tls_key):
        raise ValueError(
            "BILLOW_TEMPORAL_TLS_CERT and BILLOW_TEMPORAL_TLS_KEY go together (mTLS needs both)"
        )
    files = (s.temporal_tls_cert, s.temporal_tls_key, s.temporal_tls_ca,
             s.temporal_tls_server_name)
    wanted = s.temporal_tls
    if wanted is None:
        wanted = s.temporal_api_key is not None or any(files)
    if not wanted:
        if any(files):
            raise ValueError("BILLOW_TEMPORAL_TLS=false contradicts the TLS files/server name set")
        return False
    if not any(files):
        return True  # system roots, no client certificate
    return TLSConfig(
        server_root_ca_cert=_pem(s.temporal_tls_ca, "BILLOW_TEMPORAL_TLS_CA")
        if s.temporal_tls_ca else None,
        domain=s.temporal_tls_server_name,
        client_cert=_pem(s.temporal_tls_cert, "BILLOW_TEMPORAL_TLS_CERT")
        if s.temporal_tls_cert else None,
        client_private_key=_pem(s.temporal_tls_key, "BILLOW_TEMPORAL_TLS_KEY")
        if s.temporal_tls_key else None,
    )


def connect_options(settings: Settings) -> dict[str, Any]:
    """Everything ``Client.connect`` gets besides the runtime (tested on its own)."""
    return {
        "target_host": settings.temporal_address or f"127.0.0.1:{settings.temporal_port}",
        "namespace": settings.temporal_namespace,
        "api_key": settings.temporal_api_key.get_secret_value()
        if settings.temporal_api_key else None,
        "tls": tls_option(settings),
        "data_converter": pydantic_data_converter,
        "interceptors": tracing_interceptors(settings),
    }


async def connect(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    return await Client.connect(**connect_options(settings), runtime=runtime)


def _unreachable(exc: BaseException) -> bool:
    """A failure that waiting can cure: nothing listening, DNS, a server starting.

    Bad settings (a TLS file that cannot be read, cert without key) raise
    ``ValueError`` before any attempt and are not retried; nor is a refused
    API key, which no wait repairs.
    """
    if isinstance(exc, RPCError):
        return exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
    # The SDK's "Failed client connect: ... transport error" (no RPC was made).
    return isinstance(exc, RuntimeError) and "connect" in str(exc).lower()


async def connect_with_retry(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    stop: asyncio.Event | None = None,
    first_delay: float = RETRY_FIRST_S,
    max_delay: float = RETRY_MAX_S,
) -> Client | None:
    """Connect, retrying while Temporal is unreachable, with capped exponential backoff.

    Each failed attempt is logged with the wait before the next one. Returns
    None if ``stop`` is set meanwhile (a SIGTERM while waiting for Temporal).
    """
    options = connect_options(settings)
    target = options["target_host"]
    delay = first_delay
    while True:
        try:
            return await Client.connect(**options, runtime=runtime)
        except Exception as exc:
            if not _unreachable(exc):
                raise
            log.warning("Temporal at %s not reachable, retrying in %g s (%s)",
                        target, delay, str(exc).splitlines()[0][:300])
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
            else:
                return None
        delay = min(delay * 2, max_delay)
