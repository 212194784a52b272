"""Runtime configuration, read from the environment (``BILLOW_`` prefix).

Only ``worker`` and ``api`` import this module, and only inside functions:
nothing reads settings at import time of ``models`` or ``workflows``. The
conventional unprefixed ``DATABASE_URL`` and ``TEMPORAL_ADDRESS`` are honoured
too, so a user who sets them gets their services instead of the embedded ones.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob billow reads. ``None`` means "use the embedded service"."""

    model_config = SettingsConfigDict(env_prefix="BILLOW_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BILLOW_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL (postgresql+asyncpg://...). Unset: embedded PostgreSQL.",
    )
    temporal_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BILLOW_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"),
        description="host:port of a Temporal frontend. Unset: embedded dev server.",
    )
    temporal_namespace: str = "default"
    task_queue: str = "billow"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    data_dir: Path = Path("./.billow")

    @property
    def temporal_ui_url(self) -> str:
        return f"http://localhost:{self.temporal_ui_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"


def load_settings() -> Settings:
    return Settings()
