"""The efficiency window definition, as pure functions (no I/O, no clock).

Windows are ``window`` long, aligned to the Unix epoch, half-open ``[start, stop)`` and labelled by
their **stop** time, as Flux ``aggregateWindow`` labels them. A reading belongs to the window that
contains its device timestamp. Per vehicle, meter and window:

- ``ac_kwh`` is the sum of the energy of the meter readings paired with the vehicle,
- ``dc_kwh`` the sum of the vehicle's own energy readings,
- ``ac_readings``/``dc_readings`` count them, ``avg_battery_temp`` is the mean battery temperature
  of the vehicle readings (None without any),
- ``efficiency = dc_kwh / ac_kwh`` when ``ac_kwh >= min_energy_kwh``, else None (idle).

A window exists when either side has at least one reading; a missing side has zero energy and
count. Readings without a vehicle (unpaired meter readings) belong to no window. The Flux task in
``chargewatch/influx/tasks`` implements the same definition; ``tests/fixtures/efficiency_windows.json`` holds
readings and the windows both engines must produce.

Sums use ``math.fsum`` so a window's energy is the correctly rounded sum of its readings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

DEFAULT_WINDOW_MS = 5 * 60 * 1000
DEFAULT_MIN_ENERGY_KWH = 0.1

WindowKey = tuple[str, str | None, int]  # (vehicle_id, meter_id, stop_ms)


class MeterEnergy(NamedTuple):
    vehicle_id: str | None
    meter_id: str
    time_ms: int
    kwh: float


class VehicleEnergy(NamedTuple):
    vehicle_id: str
    meter_id: str | None
    time_ms: int
    kwh: float
    battery_temp: float


@dataclass(frozen=True)
class SideTotals:
    """One side (AC or DC) of one window: what the SQL aggregate or the reference code produces."""

    kwh: float
    readings: int
    battery_temp_sum: float = 0.0  # DC side only


class EfficiencyWindow(NamedTuple):
    """One vehicle's window (one row per meter that fed it). A named tuple, not a frozen dataclass:
    the task runner builds tens of thousands a run from stored rows, at a third of the cost each."""

    vehicle_id: str
    meter_id: str | None
    stop_ms: int
    ac_kwh: float
    dc_kwh: float
    ac_readings: int
    dc_readings: int
    avg_battery_temp: float | None
    efficiency: float | None


def window_stop_ms(time_ms: int, window_ms: int = DEFAULT_WINDOW_MS) -> int:
    """Stop (label) of the window holding ``time_ms``: the next multiple of ``window_ms`` above it."""
    return (time_ms // window_ms + 1) * window_ms


def efficiency_of(ac_kwh: float, dc_kwh: float, min_energy_kwh: float) -> float | None:
    """``dc / ac`` when enough AC energy flowed for the ratio to mean something, else None."""
    if ac_kwh < min_energy_kwh or ac_kwh <= 0:
        return None
    return dc_kwh / ac_kwh


def combine(
    ac: dict[WindowKey, SideTotals], dc: dict[WindowKey, SideTotals], min_energy_kwh: float = DEFAULT_MIN_ENERGY_KWH
) -> list[EfficiencyWindow]:
    """Windows from per-side totals keyed by (vehicle, meter, stop); ordered by stop, vehicle, meter."""
    empty = SideTotals(0.0, 0)
    windows = []
    for key in sorted(ac.keys() | dc.keys(), key=lambda k: (k[2], k[0], k[1] or "")):
        a, d = ac.get(key, empty), dc.get(key, empty)
        vehicle_id, meter_id, stop_ms = key
        windows.append(EfficiencyWindow(
            vehicle_id=vehicle_id, meter_id=meter_id, stop_ms=stop_ms,
            ac_kwh=a.kwh, dc_kwh=d.kwh, ac_readings=a.readings, dc_readings=d.readings,
            avg_battery_temp=d.battery_temp_sum / d.readings if d.readings else None,
            efficiency=efficiency_of(a.kwh, d.kwh, min_energy_kwh),
        ))
    return windows


def windows_from_readings(
    meters: Iterable[MeterEnergy],
    vehicles: Iterable[VehicleEnergy],
    window_ms: int = DEFAULT_WINDOW_MS,
    min_energy_kwh: float = DEFAULT_MIN_ENERGY_KWH,
) -> list[EfficiencyWindow]:
    """The reference implementation: every window the given readings make."""
    ac_parts: dict[WindowKey, list[float]] = {}
    dc_parts: dict[WindowKey, list[tuple[float, float]]] = {}
    for m in meters:
        if m.vehicle_id is not None:
            ac_parts.setdefault((m.vehicle_id, m.meter_id, window_stop_ms(m.time_ms, window_ms)), []).append(m.kwh)
    for v in vehicles:
        key = (v.vehicle_id, v.meter_id, window_stop_ms(v.time_ms, window_ms))
        dc_parts.setdefault(key, []).append((v.kwh, v.battery_temp))
    ac = {k: SideTotals(math.fsum(parts), len(parts)) for k, parts in ac_parts.items()}
    dc = {
        k: SideTotals(math.fsum(e for e, _ in parts), len(parts), math.fsum(t for _, t in parts))
        for k, parts in dc_parts.items()
    }
    return combine(ac, dc, min_energy_kwh)


def charging_windows(windows: Sequence[EfficiencyWindow], active_since_ms: int, active_kwh: float
                     ) -> list[EfficiencyWindow]:
    """``windows`` narrowed to the vehicles with a window stopping after ``active_since_ms`` whose
    meters together reached ``active_kwh`` on either side (the alert rules' charging test), in order."""
    ac: dict[tuple[str, int], float] = {}
    dc: dict[tuple[str, int], float] = {}
    for w in windows:
        if w.stop_ms > active_since_ms:
            key = (w.vehicle_id, w.stop_ms)
            ac[key] = ac.get(key, 0.0) + w.ac_kwh
            dc[key] = dc.get(key, 0.0) + w.dc_kwh
    charging = {vehicle_id for (vehicle_id, stop) in ac
                if ac[(vehicle_id, stop)] >= active_kwh or dc[(vehicle_id, stop)] >= active_kwh}
    return [w for w in windows if w.vehicle_id in charging]


class SpanTotals(NamedTuple):
    """Sums over many windows of one vehicle: the basis of reports and alerts (a named tuple: a fleet
    summary builds one per vehicle)."""

    ac_kwh: float
    dc_kwh: float
    ac_readings: int
    dc_readings: int
    windows: int
    battery_temp_sum: float
    battery_temp_readings: int

    @property
    def efficiency(self) -> float | None:
        return self.dc_kwh / self.ac_kwh if self.ac_kwh > 0 else None

    @property
    def avg_battery_temp(self) -> float | None:
        return self.battery_temp_sum / self.battery_temp_readings if self.battery_temp_readings else None


def span_totals(windows: Iterable[EfficiencyWindow]) -> SpanTotals:
    """Exact sums (fsum) over windows; efficiency of a span is a ratio of sums, never a mean of ratios."""
    ws = list(windows)
    temps = [(w.avg_battery_temp * w.dc_readings) for w in ws if w.avg_battery_temp is not None]
    return SpanTotals(
        ac_kwh=math.fsum(w.ac_kwh for w in ws),
        dc_kwh=math.fsum(w.dc_kwh for w in ws),
        ac_readings=sum(w.ac_readings for w in ws),
        dc_readings=sum(w.dc_readings for w in ws),
        windows=len(ws),
        battery_temp_sum=math.fsum(temps),
        battery_temp_readings=sum(w.dc_readings for w in ws if w.avg_battery_temp is not None),
    )


# (meter_id, stop_ms, ac_kwh, dc_kwh, ac_readings, dc_readings, avg_battery_temp) of one window
SumRow = tuple[str | None, int, float, float, int, int, float | None]


def sum_row(window: EfficiencyWindow) -> SumRow:
    """The columns of a window that :func:`window_sums` adds up."""
    return (window.meter_id, window.stop_ms, window.ac_kwh, window.dc_kwh, window.ac_readings,
            window.dc_readings, window.avg_battery_temp)


def window_sums(rows: Sequence[SumRow]) -> dict[str, Any]:
    """Exact (fsum) sums over one vehicle's windows: ``ac_kwh``, ``dc_kwh``, the same for windows where
    both sides reported (``matched_*``), reading counts, ``windows`` (distinct stops),
    ``battery_temp_sum``/``battery_temp_readings`` and ``meters``. Every window source reports with
    it; it takes plain rows because a report is the hot path (no window objects built for 288 rows a day)."""
    matched = [r for r in rows if r[4] and r[5]]
    temps = [(r[6] * r[5], r[5]) for r in rows if r[6] is not None]
    return {
        "ac_kwh": math.fsum(r[2] for r in rows), "dc_kwh": math.fsum(r[3] for r in rows),
        "matched_ac_kwh": math.fsum(r[2] for r in matched), "matched_dc_kwh": math.fsum(r[3] for r in matched),
        "ac_readings": sum(r[4] for r in rows), "dc_readings": sum(r[5] for r in rows),
        "windows": len({r[1] for r in rows}), "meters": sorted({r[0] for r in rows if r[0]}),
        "battery_temp_sum": math.fsum(t for t, _ in temps), "battery_temp_readings": sum(n for _, n in temps),
    }
