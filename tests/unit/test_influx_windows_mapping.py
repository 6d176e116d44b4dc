"""How rows of the analytics Flux queries map to the embedded store's types, without InfluxDB."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

from chargewatch.efficiency import EfficiencyWindow, SpanTotals
from chargewatch.stores.influx_windows import totals_from_record, window_from_record

STOP = datetime(2026, 11, 23, 6, 5, tzinfo=timezone.utc)


def test_a_window_row_maps_to_an_efficiency_window_labelled_by_its_stop() -> None:
    row = {"result": "_result", "table": 0, "_time": STOP, "vehicle_id": "EV-101", "meter_id": "MTR-101",
           "ac_kwh": 0.6, "dc_kwh": 0.5, "ac_readings": 1, "dc_readings": 1, "avg_battery_temp": 30.0,
           "efficiency": 0.5 / 0.6}
    assert window_from_record(row) == EfficiencyWindow("EV-101", "MTR-101", 1_795_413_900_000, 0.6, 0.5, 1, 1, 30.0,
                                                       0.5 / 0.6)


def test_an_absent_null_or_empty_tag_or_field_is_none() -> None:
    bare = {"_time": STOP, "vehicle_id": "CAR-9", "ac_kwh": 0.0, "dc_kwh": 0.4, "ac_readings": 0, "dc_readings": 1}
    for extra in ({}, {"meter_id": None, "avg_battery_temp": None, "efficiency": None}, {"meter_id": ""}):
        window = window_from_record({**bare, **extra})
        assert (window.meter_id, window.avg_battery_temp, window.efficiency) == (None, None, None)
        assert type(window.ac_readings) is int and type(window.stop_ms) is int


def test_a_totals_row_without_temperatures_has_zero_of_them() -> None:
    row = {"vehicle_id": "V1", "ac_kwh": 2.0, "dc_kwh": 1.8, "ac_readings": 10, "dc_readings": 10, "windows": 2}
    assert totals_from_record(row) == SpanTotals(2.0, 1.8, 10, 10, 2, 0.0, 0)


def test_nothing_imports_influxdb_client_until_an_influx_store_is_built() -> None:
    code = ("import sys, analytics, taskrunner.cli, chargewatch.bootstrap, chargewatch.stores.influx_windows, "
            "chargewatch.cli; "
            "sys.exit('influxdb_client' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
