"""The reading port every service talks to (``chargewatch.bootstrap`` picks its adapter).

Adapters translate their own failures into :class:`StorageUnavailable`; nothing above this package
sees a third-party exception type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

from chargewatch.pairing import PairingStore
from chargewatch.readings import AnyReading

Kind = Literal["meter", "vehicle"]


class StorageUnavailable(RuntimeError):
    """The store cannot take or serve data right now (disk full, locked too long, I/O error)."""


class PairedReading(NamedTuple):
    """A validated reading with the pairing that held at its timestamp."""

    reading: AnyReading
    vehicle_id: str | None
    meter_id: str | None
    received_ms: int


@dataclass(frozen=True)
class WriteResult:
    stored: int
    duplicates: int  # already stored with the same values (a device's retry)
    conflicts: int = 0  # already stored with other values: the first copy is kept


@dataclass(frozen=True)
class StoredReading:
    """A reading as stored, with the pairing written alongside it (also a last-value cache entry)."""

    kind: Kind
    device_id: str
    time_ms: int
    received_ms: int
    vehicle_id: str | None
    meter_id: str | None
    values: dict[str, float]  # wire names: kwhConsumedAc/voltage or soc/kwhDeliveredDc/batteryTemp


class ReadingStore(PairingStore, Protocol):
    """Append-only reading history plus the last-value cache.

    Contract:
    - ``write`` returns only once every reading is durable; a reading whose (device, timestamp) is
      already stored is not stored again and the first copy is kept: a duplicate when its values
      equal the stored copy's, a conflict when they differ.
    - The cache keeps, per device, the reading with the newest device timestamp; an older reading
      arriving later never replaces it.
    - Ranges are half-open ``[start_ms, end_ms)`` in epoch milliseconds, results ordered by time.
    - Failures raise StorageUnavailable.
    """

    def write(self, readings: Sequence[PairedReading]) -> WriteResult: ...

    def current(self, kind: Kind, device_id: str) -> StoredReading | None: ...

    def list_current(
        self, kind: Kind | None = None, after: tuple[str, str] | None = None, limit: int = 100,
        unpaired_only: bool = False,
    ) -> list[StoredReading]:
        """Devices ordered by (kind, device_id), strictly after the ``after`` key."""

    def history(self, kind: Kind, device_id: str, start_ms: int, end_ms: int) -> list[StoredReading]: ...

    def count_by_minute(self, kind: Kind, start_ms: int, end_ms: int) -> dict[int, int]:
        """Stored readings of one kind timed in [start_ms, end_ms), per minute of reading time: the
        minute's start (epoch ms) -> count, minutes without readings left out (the console's
        ingest health)."""

    def drop_expired(self, now: datetime, retention_days: int) -> list[str]:
        """Drop whole UTC days older than retention; returns the day tables dropped (``meter_20261001``)."""

    def ping(self) -> None:
        """Raise StorageUnavailable unless the store can serve requests."""

    def close(self) -> None: ...
