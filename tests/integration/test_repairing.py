"""Re-pairing on a real SQLite file: every reading is paired by the pairing that held at its own
timestamp, late ones included, in the day tables, the windows and the line protocol queued for
InfluxDB, so a pairing change never drops or double-counts energy."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone

import pytest

from chargewatch.bootstrap import sqlite_efficiency_stores
from chargewatch.lineprotocol import parse_lines
from chargewatch.pairing import PairingRegistry, PairingRule
from chargewatch.readings import READING, ReadingRules
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import SqliteReadingStore
from ingest.service import ingest_readings
from taskrunner.runner import TaskRunner

W = 300_000


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Fleet:
    """Readings sent through ingest's service function at the real clock (pairings change now)."""

    def __init__(self, store: SqliteReadingStore) -> None:
        self.store = store
        self.registry = PairingRegistry(store, PairingRule())
        self.sent: list[tuple[str, str, int, float]] = []  # kind, device, time_ms, kWh

    def send(self, kind: str, device_id: str, at: datetime, kwh: float) -> None:
        now = datetime.now(timezone.utc)
        payload = ({"meterId": device_id, "kwhConsumedAc": kwh, "voltage": 230.0} if kind == "meter" else
                   {"vehicleId": device_id, "soc": 50.0, "kwhDeliveredDc": kwh, "batteryTemp": 25.0})
        reading = READING.validate_python({**payload, "timestamp": at.isoformat()},
                                          context=ReadingRules(now=now).context())
        ingest_readings([reading], self.store, self.registry.current(), _ms(now))
        self.sent.append((kind, device_id, reading.time_ms, kwh))

    def repair(self, pairs: dict[str, str]) -> datetime:
        self.store.save_pairings(pairs)
        self.registry.invalidate()
        changed = datetime.now(timezone.utc)
        time.sleep(0.005)  # readings "after the change" are timestamped strictly after it
        return changed


@pytest.fixture(params=[None, 1_000_000], ids=["sqlite", "influx"])  # influx mode: the outbox attached
def store(request, tmp_path):
    store = SqliteReadingStore(tmp_path / "chargewatch.db", synchronous="normal", outbox_max_rows=request.param)
    yield store
    store.close()


def test_swapping_meters_attributes_every_reading_once_to_the_vehicle_it_was_paired_with_at_its_time(
    store, tmp_path
) -> None:
    fleet = Fleet(store)
    start = datetime.now(timezone.utc) - timedelta(minutes=40)
    # The default rule pairs VEHICLE_001 with METER_001 and VEHICLE_002 with METER_002.
    for minute in range(0, 30, 2):
        for n in (1, 2):
            fleet.send("meter", f"METER_00{n}", start + timedelta(minutes=minute), 1.0 + n / 10)
            fleet.send("vehicle", f"VEHICLE_00{n}", start + timedelta(minutes=minute), 0.9 + n / 10)

    swapped_at = fleet.repair({"VEHICLE_001": "METER_002", "VEHICLE_002": "METER_001"})

    # Late readings from before the swap arrive after it; new ones follow the swap.
    fleet.send("meter", "METER_001", start + timedelta(minutes=31), 0.7)
    fleet.send("vehicle", "VEHICLE_001", start + timedelta(minutes=31), 0.6)
    fleet.send("meter", "METER_002", swapped_at + timedelta(seconds=1), 0.5)
    fleet.send("meter", "METER_001", swapped_at + timedelta(seconds=2), 0.4)
    fleet.send("vehicle", "VEHICLE_001", swapped_at + timedelta(seconds=1), 0.45)

    def meter_energy_of(vehicle: str) -> float:
        expected_meter = {("VEHICLE_001", True): "METER_001", ("VEHICLE_002", True): "METER_002",
                          ("VEHICLE_001", False): "METER_002", ("VEHICLE_002", False): "METER_001"}
        return math.fsum(kwh for kind, device, t, kwh in fleet.sent if kind == "meter" and device ==
                         expected_meter[(vehicle, t < _ms(swapped_at))])

    # The day tables hold each meter reading with the vehicle of its time ...
    late = store.history("meter", "METER_001", _ms(start + timedelta(minutes=31)), _ms(start + timedelta(minutes=32)))
    assert [entry.vehicle_id for entry in late] == ["VEHICLE_001"]
    after = store.history("meter", "METER_001", _ms(swapped_at), _ms(swapped_at) + 60_000)
    assert [entry.vehicle_id for entry in after] == ["VEHICLE_002"]
    late_dc = store.history("vehicle", "VEHICLE_001", _ms(start + timedelta(minutes=31)), _ms(swapped_at))
    assert [entry.meter_id for entry in late_dc] == ["METER_001"]

    # ... so the windows count every kWh once, for the vehicle it was measured for.
    settings = Settings(data_dir=tmp_path, auth={"enabled": False})
    efficiency = sqlite_efficiency_stores(store.database)
    first_stop = _ms(start) // W * W
    TaskRunner(efficiency, settings).compute(first_stop, first_stop + 12 * W, _ms(datetime.now(timezone.utc)))
    windows = efficiency.windows.windows(W, first_stop, first_stop + 12 * W)
    for vehicle in ("VEHICLE_001", "VEHICLE_002"):
        assert math.isclose(math.fsum(w.ac_kwh for w in windows if w.vehicle_id == vehicle),
                            meter_energy_of(vehicle), abs_tol=1e-9), vehicle
    assert math.isclose(math.fsum(w.ac_kwh for w in windows),
                        math.fsum(kwh for kind, *_, kwh in fleet.sent if kind == "meter"), abs_tol=1e-9)

    if store.outbox is not None:  # and InfluxDB gets the same pairing tags
        lines = [row.line for row in store.outbox.oldest(1000)]
        points = [point for line in lines for point in parse_lines(line, "ms")[0]]
        late_point = next(p for p in points if p.measurement == "meter" and p.tags["meter_id"] == "METER_001"
                          and (p.timestamp_ns or 0) // 1_000_000 == _ms(start + timedelta(minutes=31)))
        assert late_point.tags["vehicle_id"] == "VEHICLE_001"
        new_point = next(p for p in points if p.measurement == "meter" and p.tags["meter_id"] == "METER_001"
                         and (p.timestamp_ns or 0) // 1_000_000 > _ms(swapped_at))
        assert new_point.tags["vehicle_id"] == "VEHICLE_002"


def test_a_late_reading_of_a_meter_freed_by_a_re_pairing_is_not_stored_unpaired(store) -> None:
    fleet = Fleet(store)
    before = datetime.now(timezone.utc) - timedelta(minutes=10)
    fleet.send("meter", "METER_001", before, 1.0)  # paired with VEHICLE_001 by the rule

    fleet.repair({"VEHICLE_001": "METER_017"})  # METER_001 now has no vehicle
    fleet.send("meter", "METER_001", before + timedelta(minutes=1), 1.1)  # late, from before the change

    history = store.history("meter", "METER_001", _ms(before), _ms(before) + 120_000)
    assert [entry.vehicle_id for entry in history] == ["VEHICLE_001", "VEHICLE_001"]
    assert store.load_pairing_history()[-1][:2] == ("VEHICLE_001", "METER_017")
