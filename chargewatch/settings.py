"""Configuration: one pydantic-settings tree read from ``CHARGEWATCH_...`` environment variables.

Top-level fields are ``CHARGEWATCH_<NAME>``; nested ones use a double underscore, for example
``CHARGEWATCH_INGEST__PORT=8080`` or ``CHARGEWATCH_LIMITS__MAX_FUTURE_SKEW_SECONDS=120``.
Invalid values fail at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, NoDecode
from typing_extensions import Annotated

ENV_PREFIX = "CHARGEWATCH_"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/chargewatch``, else ``~/.local/share/chargewatch``."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "chargewatch"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class ReadingLimits(BaseModel):
    """What a plausible reading looks like; readings outside these bounds are rejected."""

    max_energy_kwh_per_reading: float = Field(
        10.0, gt=0, description="Ceiling for kwhConsumedAc / kwhDeliveredDc in one reading."
    )
    max_future_skew_seconds: float = Field(
        300.0, ge=0, description="How far in the future a device timestamp may be."
    )
    max_batch_items: int = Field(10_000, ge=1, description="Most readings in one request.")


class SqliteSettings(BaseModel):
    path: Path | None = Field(None, description="Database file; default <data_dir>/chargewatch.db.")
    synchronous: Literal["full", "normal"] = Field(
        "full",
        description="full: fsync every group commit (survives power loss); "
        "normal: survives a process crash, not a power loss.",
    )
    busy_timeout_ms: int = Field(10_000, ge=0)
    cache_size_mib: int = Field(64, ge=1)


class AuthSettings(BaseModel):
    enabled: bool = True
    write_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated device tokens (write scope)."
    )
    read_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated query tokens (read scope)."
    )

    _split = field_validator("write_tokens", "read_tokens", mode="before")(_split_csv)


class ServiceSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(2, ge=1, description="gunicorn worker processes (default: one per core).")
    threads: int = Field(8, ge=1, description="Threads per worker; concurrent requests share commits.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body on the wire.")
    max_decompressed_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gzip-decoded body (guards against gzip bombs)."
    )


class PairingSettings(BaseModel):
    prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["VEHICLE_:METER_", "EV-:MTR-"],
        description="Default rule as vehicle-prefix:meter-prefix pairs; the shared suffix must be digits.",
    )
    file: Path | None = Field(None, description="JSON file of {vehicleId: meterId} loaded at start-up.")

    _split = field_validator("prefixes", mode="before")(_split_csv)

    @field_validator("prefixes")
    @classmethod
    def _check_prefix_pairs(cls, value: list[str]) -> list[str]:
        for item in value:
            vehicle, sep, meter = item.partition(":")
            if not sep or not vehicle or not meter:
                raise ValueError(f"{item!r} is not 'vehiclePrefix:meterPrefix'")
        return value


class Settings(BaseSettings):
    """Everything chargewatch reads from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    store: Literal["sqlite"] = Field("sqlite", description="Reading store adapter.")
    retention_days: int = Field(30, ge=1, description="Readings older than this are refused and dropped.")
    telemetry_bucket: str = Field(
        "telemetry", description="Bucket name line-protocol writers must use (POST /api/v2/write?bucket=...)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    limits: ReadingLimits = Field(default_factory=ReadingLimits)
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    ingest: ServiceSettings = Field(default_factory=ServiceSettings)
    pairing: PairingSettings = Field(default_factory=PairingSettings)

    @property
    def sqlite_path(self) -> Path:
        return self.sqlite.path or self.data_dir / "chargewatch.db"

    @property
    def tokens_path(self) -> Path:
        return self.data_dir / "tokens.json"
