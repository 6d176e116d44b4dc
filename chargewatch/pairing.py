"""Pairing: which meter measures the charger a vehicle is on.

Explicit pairings from the registry win; otherwise a default rule pairs ids that share a numeric
suffix under configured prefixes (``VEHICLE_001`` <-> ``METER_001``, ``EV-101`` <-> ``MTR-101``).
A meter or vehicle that is explicitly paired elsewhere is never also paired by the rule, so the
mapping stays one-to-one in both directions.

Explicit pairings have validity intervals (``PairingInterval``): a change starts a new interval
at the moment it is saved and ends the one it replaces, and a reading is paired by the pairing
that held at its own timestamp, so a late reading from before a re-pairing still reaches the
vehicle it was measured for, and no reading is attributed to two vehicles.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from pydantic import TypeAdapter, ValidationError

from chargewatch.readings import DeviceId


@dataclass(frozen=True)
class PairingRule:
    """Default rule: ``vehicle_prefix + digits`` <-> ``meter_prefix + the same digits``."""

    prefixes: tuple[tuple[str, str], ...] = (("VEHICLE_", "METER_"), ("EV-", "MTR-"))

    @classmethod
    def from_strings(cls, pairs: Iterable[str]) -> PairingRule:
        """Build from ``"VEHICLE_:METER_"`` strings (as in ``CHARGEWATCH_PAIRING__PREFIXES``)."""
        return cls(tuple((vehicle, meter) for vehicle, _, meter in (item.partition(":") for item in pairs)))

    def meter_for(self, vehicle_id: str) -> str | None:
        return _swap_prefix(vehicle_id, ((v, m) for v, m in self.prefixes))

    def vehicle_for(self, meter_id: str) -> str | None:
        return _swap_prefix(meter_id, ((m, v) for v, m in self.prefixes))


def _swap_prefix(device_id: str, prefix_pairs: Iterable[tuple[str, str]]) -> str | None:
    for source, target in prefix_pairs:
        if device_id.startswith(source):
            suffix = device_id[len(source):]
            if suffix.isdigit() and suffix.isascii():
                return target + suffix
    return None


class PairingInterval(NamedTuple):
    """An explicit pairing and when it held: ``[valid_from_ms, valid_to_ms)``, epoch ms; an open
    interval (the pairing holds now) has ``valid_to_ms`` None."""

    vehicle_id: str
    meter_id: str
    valid_from_ms: int
    valid_to_ms: int | None


@dataclass(frozen=True)
class Pairings:
    """An immutable view of explicit pairings plus the default rule.

    ``explicit`` holds since ``since_ms``; ``earlier`` holds the views of the times before it, as
    ``(from_ms, Pairings)`` in time order (before the first, only the rule held), for readings
    timestamped before the last change (:meth:`at`)."""

    explicit: Mapping[str, str] = field(default_factory=dict)  # vehicle_id -> meter_id
    rule: PairingRule = field(default_factory=PairingRule)
    since_ms: int | None = None
    earlier: tuple[tuple[int, Pairings], ...] = field(default=(), repr=False)
    _by_meter: Mapping[str, str] = field(init=False, repr=False, compare=False)
    _resolved: dict[tuple[str, str], str | None] = field(init=False, repr=False, compare=False)
    _starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_meter", {m: v for v, m in self.explicit.items()})
        # Answers memoised per device: a fleet asks about the same few thousand ids all day.
        object.__setattr__(self, "_resolved", {})
        object.__setattr__(self, "_starts", [start for start, _ in self.earlier])

    @classmethod
    def from_history(cls, intervals: Iterable[PairingInterval], rule: PairingRule) -> Pairings:
        """The view of every time the intervals cover; the returned object is the one holding now."""
        intervals = list(intervals)
        changes = sorted({i.valid_from_ms for i in intervals} | {i.valid_to_ms for i in intervals
                                                                 if i.valid_to_ms is not None})
        views: list[tuple[int, Pairings]] = []
        for start in changes:
            explicit = {i.vehicle_id: i.meter_id for i in intervals
                        if i.valid_from_ms <= start and (i.valid_to_ms is None or start < i.valid_to_ms)}
            views.append((start, cls(explicit, rule, start)))
        if not views:
            return cls({}, rule)
        (since, latest), earlier = views[-1], tuple(views[:-1])
        return cls(latest.explicit, rule, since, earlier)

    def at(self, time_ms: int) -> Pairings:
        """The pairings that held at ``time_ms`` (epoch ms)."""
        if self.since_ms is None or time_ms >= self.since_ms:
            return self
        index = bisect.bisect_right(self._starts, time_ms) - 1
        return self.earlier[index][1] if index >= 0 else Pairings({}, self.rule)

    def partner_at(self, kind: str, device_id: str, time_ms: int) -> str | None:
        """:meth:`partner_of` by the pairings that held at ``time_ms``."""
        if self.since_ms is None or time_ms >= self.since_ms:
            return self.partner_of(kind, device_id)
        return self.at(time_ms).partner_of(kind, device_id)

    def partner_of(self, kind: str, device_id: str) -> str | None:
        """The meter of a vehicle, or the vehicle of a meter (``kind`` is the device's own kind)."""
        key = (kind, device_id)
        try:
            return self._resolved[key]
        except KeyError:
            partner = self.meter_for(device_id) if kind == "vehicle" else self.vehicle_for(device_id)
            if len(self._resolved) < 1_000_000:
                self._resolved[key] = partner
            return partner

    def meter_for(self, vehicle_id: str) -> str | None:
        meter = self.explicit.get(vehicle_id)
        if meter is not None:
            return meter
        meter = self.rule.meter_for(vehicle_id)
        if meter is None or meter in self._by_meter:
            return None
        return meter

    def vehicle_for(self, meter_id: str) -> str | None:
        vehicle = self._by_meter.get(meter_id)
        if vehicle is not None:
            return vehicle
        vehicle = self.rule.vehicle_for(meter_id)
        if vehicle is None or vehicle in self.explicit:
            return None
        return vehicle

    def source_of(self, vehicle_id: str) -> str | None:
        """``"registry"``, ``"rule"`` or None (unpaired)."""
        if vehicle_id in self.explicit:
            return "registry"
        return "rule" if self.meter_for(vehicle_id) else None


class PairingConflict(ValueError):
    """A meter is already paired with another vehicle."""


class PairingStore(Protocol):
    """Durable storage for explicit pairings, shared by every process."""

    def pairings_version(self) -> int:
        """A number that changes whenever the pairings change."""

    def load_pairings(self) -> dict[str, str]:
        """All explicit pairings that hold now, vehicle id -> meter id."""

    def load_pairing_history(self) -> list[PairingInterval]:
        """Every explicit pairing with its validity interval, the current ones open."""

    def save_pairings(self, pairs: Mapping[str, str], *, replace: bool = False) -> None:
        """Set pairings atomically; ``replace`` removes every pairing not in ``pairs``.

        A pairing that changes ends its interval now and starts a new one; saving a pairing that
        already holds changes nothing. Raises PairingConflict when a meter would end up paired
        with two vehicles.
        """

    def delete_pairing(self, vehicle_id: str) -> bool:
        """Remove one pairing; False when there was none."""


class PairingRegistry:
    """Cached pairings: reloads when the store's version moves, which it checks at most every
    ``recheck_seconds`` (a change made in another process applies to ingest within that long), or
    on every ``current(fresh=True)`` (what the pairing API answers: a change made through another
    worker is there at once)."""

    def __init__(self, store: PairingStore, rule: PairingRule, recheck_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._rule = rule
        self._lock = threading.Lock()
        self._version: int | None = None
        self._pairings = Pairings(rule=rule)
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._checked_at = float("-inf")

    def invalidate(self) -> None:
        """Reload on the next ``current()`` (after this process changed the pairings)."""
        self._checked_at = float("-inf")

    def current(self, fresh: bool = False) -> Pairings:
        now = self._clock()
        if not fresh and now - self._checked_at < self._recheck_seconds:
            return self._pairings
        self._checked_at = now
        version = self._store.pairings_version()
        if version != self._version:
            with self._lock:
                if version != self._version:
                    self._pairings = Pairings.from_history(self._store.load_pairing_history(), self._rule)
                    self._version = version
        return self._pairings


_PAIRING_FILE = TypeAdapter(dict[DeviceId, DeviceId])


def read_pairing_file(path: Path) -> dict[str, str]:
    """Load ``{"VEHICLE_001": "METER_017", ...}``; raises ValueError naming the problem."""
    try:
        pairs = _PAIRING_FILE.validate_json(path.read_bytes())
    except OSError as err:
        raise ValueError(f"cannot read pairing file {path}: {err.strerror}") from err
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"pairing file {path}: {where or 'document'}: {first['msg']}") from err
    check_one_to_one(pairs)
    return pairs


def check_one_to_one(pairs: Mapping[str, str]) -> None:
    """Raise PairingConflict when two vehicles name the same meter."""
    seen: dict[str, str] = {}
    for vehicle, meter in pairs.items():
        if meter in seen:
            raise PairingConflict(f"meter {meter} is paired with both {seen[meter]} and {vehicle}")
        seen[meter] = vehicle


def dump_pairing_file(pairs: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(pairs.items())), indent=2) + "\n"
