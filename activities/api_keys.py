"""API keys: created by ops (``billow apikey create``), checked by the HTTP API.

Design:
- A key reads ``bk_<key_id>_<secret>``: ``key_id`` (12 hex digits) is public
  and finds the row; ``secret`` (32 random bytes, URL-safe base64) proves
  possession. Only ``sha256(secret)`` is stored, so the key is shown once, at
  creation, and a leaked database does not leak usable keys. The secret has
  256 bits of entropy, so a fast hash is enough (no password-style KDF), and
  the comparison is constant-time.
- Scopes: ``crm`` (create, amend and read contracts and invoices), ``usage``
  (send usage), ``ops`` (everything, including catalog and payments).
  A key carries one or more scopes.
- Revoking keeps the row (``revoked_at``) so audits can still name the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "KEY_PREFIX",
    "ApiKeyInfo",
    "NewApiKey",
    "Scope",
    "authenticate",
    "create_api_key",
    "hash_secret",
    "list_api_keys",
    "parse_key",
    "revoke_api_key",
]

KEY_PREFIX = "bk"


class Scope(StrEnum):
    CRM = "crm"
    USAGE = "usage"
    OPS = "ops"


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None = None

    def allows(self, *accepted: Scope) -> bool:
        """True if the key holds ``ops`` or any of ``accepted``."""
        return Scope.OPS in self.scopes or any(s in self.scopes for s in accepted)


@dataclass(frozen=True)
class NewApiKey:
    key: str  # the plaintext key: shown once, never stored
    info: ApiKeyInfo


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != 12 or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def parse_scopes(values: list[str] | tuple[str, ...]) -> frozenset[Scope]:
    """Validate scope names; raises ValueError naming the unknown one."""
    if not values:
        raise ValueError("at least one scope is required (crm, usage, ops)")
    out: set[Scope] = set()
    for v in values:
        try:
            out.add(Scope(v.strip().lower()))
        except ValueError:
            raise ValueError(
                f"unknown scope {v!r}; use one of {', '.join(s.value for s in Scope)}"
            ) from None
    return frozenset(out)


def _info(row: Any) -> ApiKeyInfo:
    return ApiKeyInfo(
        key_id=row.key_id, name=row.name, scopes=frozenset(Scope(s) for s in row.scopes),
        created_at=row.created_at, revoked_at=row.revoked_at,
    )


async def create_api_key(
    conn: AsyncConnection, scopes: list[str] | tuple[str, ...], name: str = ""
) -> NewApiKey:
    """Insert a new key and return it with its plaintext (the only time it exists)."""
    parsed = parse_scopes(scopes)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = (
        await conn.execute(
            text(
                "INSERT INTO api_keys (key_id, secret_hash, name, scopes) "
                "VALUES (:kid, :hash, :name, CAST(:scopes AS jsonb)) "
                "RETURNING key_id, name, scopes, created_at, revoked_at"
            ),
            {"kid": key_id, "hash": hash_secret(secret), "name": name,
             "scopes": json.dumps(sorted(s.value for s in parsed))},
        )
    ).one()
    return NewApiKey(key=f"{KEY_PREFIX}_{key_id}_{secret}", info=_info(row))


async def authenticate(conn: AsyncConnection, key: str) -> ApiKeyInfo | None:
    """The key's info if it exists, is not revoked and its secret matches."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = (
        await conn.execute(
            text(
                "SELECT key_id, secret_hash, name, scopes, created_at, revoked_at "
                "FROM api_keys WHERE key_id = :kid"
            ),
            {"kid": key_id},
        )
    ).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
        return None
    return _info(row)


async def list_api_keys(conn: AsyncConnection) -> list[ApiKeyInfo]:
    rows = (
        await conn.execute(
            text(
                "SELECT key_id, name, scopes, created_at, revoked_at FROM api_keys "
                "ORDER BY created_at, id"
            )
        )
    ).all()
    return [_info(r) for r in rows]


async def revoke_api_key(conn: AsyncConnection, key_id: str) -> bool:
    """Revoke a key by its id; False if no such active key."""
    revoked = await conn.scalar(
        text(
            "UPDATE api_keys SET revoked_at = now() "
            "WHERE key_id = :kid AND revoked_at IS NULL RETURNING key_id"
        ),
        {"kid": key_id},
    )
    return revoked is not None
