"""The in-memory store: the fake that unit tests run services on, held to the same contract suite as
the real adapters (tests/integration/test_reading_store_contract.py).

History is grouped into the same UTC days as the SQLite day tables, so retention reports the same
names (``meter_20261123``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

from chargewatch.pairing import PairingConflict, PairingInterval, check_one_to_one
from chargewatch.readings import MeterReading
from chargewatch.stores import Kind, PairedReading, StoredReading, WriteResult

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def _day_of(time_ms: int) -> date:
    return (_EPOCH + timedelta(milliseconds=time_ms)).date()


def _cache_entry(paired: PairedReading) -> StoredReading:
    r = paired.reading
    if isinstance(r, MeterReading):
        values = {"kwhConsumedAc": r.kwh_consumed_ac, "voltage": r.voltage}
    else:
        values = {"soc": r.soc, "kwhDeliveredDc": r.kwh_delivered_dc, "batteryTemp": r.battery_temp}
    return StoredReading(r.kind, r.device_id, r.time_ms, paired.received_ms, paired.vehicle_id, paired.meter_id,
                         values)


def _history_entry(paired: PairedReading) -> StoredReading:
    # A history row keeps only the partner's id; the device's own id stands for its side (as in the
    # SQLite day tables, which have no separate column for it).
    entry = _cache_entry(paired)
    if entry.kind == "meter":
        return replace(entry, meter_id=entry.device_id)
    return replace(entry, vehicle_id=entry.device_id)


def _is_unpaired(entry: StoredReading) -> bool:
    return (entry.vehicle_id if entry.kind == "meter" else entry.meter_id) is None


class InMemoryReadingStore:
    """ReadingStore in process memory: thread-safe, gone when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: dict[tuple[Kind, str, int], StoredReading] = {}  # (kind, device_id, time_ms)
        self._current: dict[tuple[Kind, str], StoredReading] = {}  # (kind, device_id)
        self._pairings: dict[str, str] = {}  # vehicle_id -> meter_id
        self._pairing_history: list[PairingInterval] = []
        self._pairings_version = 0

    def write(self, readings: Sequence[PairedReading]) -> WriteResult:
        stored = conflicts = 0
        with self._lock:
            for paired in readings:
                r = paired.reading
                key = (r.kind, r.device_id, r.time_ms)
                first = self._history.get(key)
                if first is not None:
                    conflicts += first.values != _cache_entry(paired).values
                    continue
                self._history[key] = _history_entry(paired)
                stored += 1
                latest = self._current.get((r.kind, r.device_id))
                if latest is None or r.time_ms > latest.time_ms:
                    self._current[(r.kind, r.device_id)] = _cache_entry(paired)
        return WriteResult(stored=stored, duplicates=len(readings) - stored - conflicts, conflicts=conflicts)

    def current(self, kind: Kind, device_id: str) -> StoredReading | None:
        with self._lock:
            return self._current.get((kind, device_id))

    def list_current(
        self, kind: Kind | None = None, after: tuple[str, str] | None = None, limit: int = 100,
        unpaired_only: bool = False,
    ) -> list[StoredReading]:
        """Devices ordered by (kind, device_id), strictly after the ``after`` key."""
        with self._lock:
            entries = sorted(self._current.items())
        matches = [
            entry for key, entry in entries
            if (kind is None or entry.kind == kind)
            and (after is None or key > tuple(after))
            and (not unpaired_only or _is_unpaired(entry))
        ]
        return matches[:limit]

    def history(self, kind: Kind, device_id: str, start_ms: int, end_ms: int) -> list[StoredReading]:
        with self._lock:
            entries = [
                entry for (k, d, time_ms), entry in self._history.items()
                if k == kind and d == device_id and start_ms <= time_ms < end_ms
            ]
        return sorted(entries, key=lambda entry: entry.time_ms)

    def count_by_minute(self, kind: Kind, start_ms: int, end_ms: int) -> dict[int, int]:
        counts: dict[int, int] = {}
        with self._lock:
            for k, _, time_ms in self._history:
                if k == kind and start_ms <= time_ms < end_ms:
                    minute = time_ms // 60_000 * 60_000
                    counts[minute] = counts.get(minute, 0) + 1
        return counts

    def drop_expired(self, now: datetime, retention_days: int) -> list[str]:
        """Drop whole UTC days older than retention; returns day names like ``meter_20261123``."""
        cutoff = (now - timedelta(days=retention_days)).astimezone(timezone.utc).date()
        with self._lock:
            expired = [key for key in self._history if _day_of(key[2]) < cutoff]
            for key in expired:
                del self._history[key]
        days = sorted({(kind, _day_of(time_ms)) for kind, _, time_ms in expired})
        return [f"{kind}_{day:%Y%m%d}" for kind, day in days]

    def pairings_version(self) -> int:
        with self._lock:
            return self._pairings_version

    def load_pairings(self) -> dict[str, str]:
        with self._lock:
            return dict(self._pairings)

    def load_pairing_history(self) -> list[PairingInterval]:
        with self._lock:
            return sorted(self._pairing_history, key=lambda interval: interval.valid_from_ms)

    def _record_history(self, before: Mapping[str, str], now_ms: int) -> None:
        for vehicle in before.keys() | self._pairings.keys():
            if before.get(vehicle) == self._pairings.get(vehicle):
                continue
            self._pairing_history = [
                i._replace(valid_to_ms=now_ms) if i.vehicle_id == vehicle and i.valid_to_ms is None else i
                for i in self._pairing_history
            ]
            self._pairing_history = [i for i in self._pairing_history
                                     if i.valid_to_ms is None or i.valid_from_ms < i.valid_to_ms]
            if vehicle in self._pairings:
                self._pairing_history.append(PairingInterval(vehicle, self._pairings[vehicle], now_ms, None))

    def save_pairings(self, pairs: Mapping[str, str], *, replace: bool = False) -> None:
        """Set pairings atomically; ``replace`` removes every pairing not in ``pairs``.

        Raises PairingConflict, changing nothing, when a meter would end up with two vehicles.
        """
        check_one_to_one(pairs)
        with self._lock:
            kept = {} if replace else {v: m for v, m in self._pairings.items() if v not in pairs}
            holders = {meter: vehicle for vehicle, meter in kept.items()}
            for meter in pairs.values():
                if meter in holders:
                    raise PairingConflict(f"meter {meter} is already paired with {holders[meter]}")
            before, self._pairings = self._pairings, {**kept, **pairs}
            self._record_history(before, _now_ms())
            self._pairings_version += 1

    def delete_pairing(self, vehicle_id: str) -> bool:
        with self._lock:
            before = dict(self._pairings)
            if self._pairings.pop(vehicle_id, None) is None:
                return False
            self._record_history(before, _now_ms())
            self._pairings_version += 1
            return True

    def ping(self) -> None:
        """Always ready: there is nothing to reach."""

    def close(self) -> None:
        """Nothing to release; the data stays readable, as a reopened SQLite store's would."""
