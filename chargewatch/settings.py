"""Configuration: one pydantic-settings tree read from ``CHARGEWATCH_...`` environment variables.

Top-level fields are ``CHARGEWATCH_<NAME>``; nested ones use a double underscore, for example
``CHARGEWATCH_INGEST__PORT=8080`` or ``CHARGEWATCH_LIMITS__MAX_FUTURE_SKEW_SECONDS=120``.
Invalid values fail at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
        description="full: a 2xx only once the readings' commit is on disk (fdatasync of the WAL after each "
        "group commit; survives power loss); normal: once it is in the kernel's page cache (survives a crash of "
        "chargewatch, not of the machine or its power).",
    )
    busy_timeout_ms: int = Field(10_000, ge=0, description="How long a connection waits for another's write lock.")
    cache_size_mib: int = Field(64, ge=1, description="SQLite page cache per connection.")
    writer: Literal["group", "process", "thread"] = Field(
        "group",
        description="group: each process commits the requests queued in it in one transaction, processes take "
        "turns, and the fsync follows outside the lock (one covers the commits of every process before it); "
        "process / thread: one writer that every process on the file shares, in a process of its own or in a "
        "thread of the first process that writes (one fsync covers the requests of every process; measured no "
        "faster for single readings on the 2-core build machine, see README).",
    )


class AuthSettings(BaseModel):
    enabled: bool = Field(True, description="Token auth; false lets anyone read and write (logged loudly).")
    write_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated device tokens (write scope)."
    )
    read_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated query tokens (read scope)."
    )

    _split = field_validator("write_tokens", "read_tokens", mode="before")(_split_csv)


class ServiceSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8080, ge=0, le=65535, description="Port.")
    workers: int = Field(2, ge=1, description="gunicorn worker processes (default: one per core).")
    threads: int = Field(8, ge=1, description="Threads per worker; concurrent requests share commits.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body on the wire.")
    max_decompressed_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gzip-decoded body (guards against gzip bombs)."
    )
    request_timeout_seconds: float = Field(
        10.0, gt=0, description="A request must arrive in full (headers and body) within this; a slower "
        "client is answered 408 and its connection closed. It never holds a thread while it is arriving.",
    )


class AnalyticsServiceSettings(ServiceSettings):
    port: int = Field(8081, ge=0, le=65535, description="Port (the console and the API).")


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


class EfficiencySettings(BaseModel):
    """The window definition and the embedded task runner (docs/architecture.md "Efficiency windows")."""

    window_seconds: int = Field(300, ge=60, le=3600, description="Window length W; windows align to the epoch.")
    offset_seconds: int = Field(30, ge=0, description="Run this long after each window closes, so stragglers land.")
    recompute_windows: int = Field(
        6, ge=1, description="Influx mode: trailing windows the Flux task recomputes on every run (late data). "
        "The embedded runner recomputes only the windows late readings marked.")
    min_energy_kwh: float = Field(0.1, ge=0, description="Below this AC energy a window has no efficiency (idle).")

    @field_validator("window_seconds")
    @classmethod
    def _divides_an_hour(cls, value: int) -> int:
        if 3600 % value:
            raise ValueError("must divide an hour evenly (60, 120, 300, 600, 900, 1200, 1800 or 3600)")
        return value


class AlertSettings(BaseModel):
    """Low-efficiency and data-quality alerts (docs/alerts.md "The rules")."""

    threshold: float = Field(0.85, gt=0, lt=1, description="Low-efficiency threshold (DC/AC).")
    above_one_threshold: float = Field(1.0, ge=1, description="Efficiency above this is a data-quality alert.")
    span_minutes: int = Field(30, ge=5, description="Trailing span whose sums are compared.")
    fast_span_minutes: int = Field(
        10, ge=5, description="Shorter span that also counts while a session goes on (faults that start mid-session)."
    )
    pending_minutes: int = Field(5, ge=0, description="How long the condition must hold before firing.")
    hysteresis: float = Field(0.02, ge=0, lt=0.5, description="Resolve only this far back on the good side.")
    min_span_energy_kwh: float = Field(0.5, ge=0, description="Least AC energy in the span for a verdict.")
    max_session_hours: float = Field(4.0, gt=0, description="Longest session measured whole once it has ended.")
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated URLs that get Alertmanager-style webhook POSTs."
    )
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one webhook delivery.")
    webhook_max_attempts: int = Field(8, ge=1, description="Deliveries are retried with exponential backoff.")
    webhook_backoff_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles up to 5 minutes.")
    alertmanager_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Alertmanager base URLs (e.g. http://alertmanager:9093); firing and resolved "
        "alerts go to their API v2 (POST <url>/api/v2/alerts), retried until delivered.",
    )
    alertmanager_resend_seconds: float = Field(
        60.0, ge=1, description="While an alert fires it is re-sent to every Alertmanager this often, with endsAt "
        "4 intervals ahead (as Prometheus does): Alertmanager resolves an alert that stops arriving.",
    )
    replay_notify: bool = Field(
        False, description="Webhooks for every alert the task runner finds when it replays backfilled hours "
        "(default: only for those still firing)."
    )

    _split = field_validator("webhook_urls", "alertmanager_urls", mode="before")(_split_csv)

    @field_validator("alertmanager_urls")
    @classmethod
    def _http_base_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parsed = urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(f"{url!r} is not an http(s) base URL such as http://alertmanager:9093")
            if parsed.path.rstrip("/").endswith("/api/v2/alerts"):
                raise ValueError(f"{url!r}: give the base URL; chargewatch appends /api/v2/alerts")
        return [url.rstrip("/") for url in value]


class InfluxSettings(BaseModel):
    """InfluxDB 2.x (``CHARGEWATCH_STORE=influx``): where the forwarder ships readings, and how.

    Ingest writes every new reading to a durable outbox in the local SQLite file; one forwarder per
    data directory (``chargewatch forward``) ships it in batches and deletes only what InfluxDB
    acknowledged.
    """

    url: str = Field("http://localhost:8086", description="InfluxDB base URL.")
    org: str = Field("chargewatch", description="Organization name (or 16-hex ID).")
    token: SecretStr = Field(SecretStr(""), description="API token with write access to the telemetry bucket.")
    telemetry_bucket: str = Field("telemetry", description="Bucket the forwarder writes readings to.")
    efficiency_bucket: str = Field("efficiency", description="Bucket the efficiency task writes windows to.")
    telemetry_retention_days: int | None = Field(
        None, ge=0, description="Retention `chargewatch influx setup` gives a new telemetry bucket "
        "(default: CHARGEWATCH_RETENTION_DAYS; 0 = forever)."
    )
    efficiency_retention_days: int = Field(
        400, ge=0, description="Retention `chargewatch influx setup` gives a new efficiency bucket (0 = forever)."
    )
    batch_max_lines: int = Field(5000, ge=1, le=100_000, description="Most lines in one write request.")
    batch_max_wait_seconds: float = Field(
        1.0, ge=0, description="A batch that is not full is sent once its oldest line has waited this long."
    )
    outbox_max_rows: int = Field(
        5_000_000, ge=1,
        description="Outbox bound: beyond it ingest answers 503 with Retry-After. 5,000,000 lines (about "
        "1 GB of disk) hold 8 h of a 10,000-device fleet reporting every minute.",
    )
    gzip: bool = Field(True, description="Send write bodies gzip-compressed.")
    backoff_base_seconds: float = Field(1.0, gt=0, description="First retry delay after a failed write; doubles.")
    backoff_max_seconds: float = Field(
        30.0, gt=0, description="Retry delay ceiling (so a recovered InfluxDB is found within it); a "
        "Retry-After header is honoured up to this."
    )
    config_error_retry_seconds: float = Field(
        60.0, gt=0, description="Retry delay after 401/403/404 (token, org or bucket wrong): rows are kept."
    )
    request_timeout_seconds: float = Field(10.0, gt=0, description="Connect and read timeout of one write.")
    poll_seconds: float = Field(0.2, gt=0, description="How often an idle forwarder looks for new lines.")


class Settings(BaseSettings):
    """Everything chargewatch reads from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Database, tokens, locks and metrics files; every process shares it.")
    store: Literal["sqlite", "influx"] = Field(
        "sqlite", description="sqlite: embedded store; influx: history goes to InfluxDB through the outbox."
    )
    retention_days: int = Field(30, ge=1, description="Readings older than this are refused and dropped.")
    telemetry_bucket: str = Field(
        "telemetry", description="Bucket name line-protocol writers must use (POST /api/v2/write?bucket=...)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR.")
    limits: ReadingLimits = Field(default_factory=ReadingLimits)
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    ingest: ServiceSettings = Field(default_factory=ServiceSettings)
    analytics: AnalyticsServiceSettings = Field(default_factory=AnalyticsServiceSettings)
    efficiency: EfficiencySettings = Field(default_factory=EfficiencySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    pairing: PairingSettings = Field(default_factory=PairingSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)

    @property
    def sqlite_path(self) -> Path:
        return self.sqlite.path or self.data_dir / "chargewatch.db"

    @property
    def tokens_path(self) -> Path:
        return self.data_dir / "tokens.json"


def load_settings() -> Settings:
    """The settings of the ``CHARGEWATCH_...`` environment, for a command's start: invalid
    configuration exits with one line naming every bad variable."""
    try:
        return Settings()
    except ValidationError as err:
        problems = "; ".join(
            f"CHARGEWATCH_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors()
        )
        raise SystemExit(f"chargewatch: invalid configuration: {problems}") from None
