"""Report queries over stored windows: the fleet summary's totals, distribution and ranking."""

from __future__ import annotations

import pytest

from analytics import queries
from chargewatch.alerts import AlertPolicy
from chargewatch.bootstrap import sqlite_efficiency_stores
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import EfficiencyStores
from chargewatch.stores.sqlite import SqliteReadingStore

W = 300_000
HOUR = 3_600_000
T0 = 1_795_392_000_000  # an hour boundary


@pytest.fixture
def efficiency(tmp_path):
    readings = SqliteReadingStore(tmp_path / "c.db", synchronous="normal")
    yield sqlite_efficiency_stores(readings.database)
    readings.close()


def store_windows(efficiency: EfficiencyStores, vehicles: dict[str, tuple[float, float]], count: int) -> None:
    """``count`` windows from T0 per vehicle: {vehicle: (efficiency, AC kWh per window)}; replaces the
    whole range, as the task runner does."""
    windows = [EfficiencyWindow(vehicle, "M-" + vehicle, T0 + (k + 1) * W, ac, ac * ratio, 5, 5, 20.0, ratio)
               for vehicle, (ratio, ac) in vehicles.items() for k in range(count)]
    assert efficiency.window_writer is not None
    efficiency.window_writer.replace_windows(W, T0, T0 + count * W, windows, 0)


def test_the_fleet_summary_sums_whole_hours_and_partial_edges_alike(efficiency) -> None:
    store_windows(efficiency, {"V1": (0.9, 1.0)}, 36)  # three hours
    period = queries.Period(T0 + 2 * W, T0 + 30 * W)  # starts and ends inside an hour
    summary = queries.fleet_summary(efficiency.windows, period, W, AlertPolicy())
    assert summary.ac_kwh == pytest.approx(28.0)
    assert summary.dc_kwh == pytest.approx(28 * 0.9)
    per_vehicle = efficiency.windows.vehicle_totals(W, period.start_ms, period.end_ms)["V1"]
    assert (per_vehicle.windows, per_vehicle.ac_readings) == (28, 140)


def test_the_fleet_summary_ranks_and_buckets_vehicles(efficiency) -> None:
    store_windows(efficiency, {"V1": (0.92, 1.0), "V2": (0.82, 1.0), "V3": (0.70, 1.0), "V4": (1.05, 1.0),
                               "IDLE": (0.0, 0.01)}, 12)
    summary = queries.fleet_summary(efficiency.windows, queries.Period(T0, T0 + HOUR), W, AlertPolicy(), worst_n=2)
    assert summary.vehicles == 5 and summary.vehicles_charging == 4
    assert [w.vehicle_id for w in summary.worst] == ["V3", "V2"]
    assert summary.below_threshold == ["V3", "V2"] and summary.above_one == ["V4"]
    assert dict(summary.distribution) == {"<0.75": 1, "0.75-0.80": 0, "0.80-0.85": 1, "0.85-0.90": 0,
                                          "0.90-0.95": 1, "0.95-1.00": 0, ">=1.00": 1}


def test_a_vehicle_exactly_on_an_edge_counts_in_the_bucket_above_and_is_neither_below_nor_above(efficiency) -> None:
    # 0.75 and 1.0 are exact in binary, so the ratios of the sums land exactly on the edges.
    store_windows(efficiency, {"AT-075": (0.75, 1.0), "AT-100": (1.0, 1.0), "UNDER": (0.5, 1.0)}, 12)
    totals = efficiency.windows.vehicle_totals(W, T0, T0 + HOUR)
    assert [totals[v].dc_kwh / totals[v].ac_kwh for v in ("AT-075", "AT-100")] == [0.75, 1.0]
    policy = AlertPolicy(threshold=0.75)
    summary = queries.fleet_summary(efficiency.windows, queries.Period(T0, T0 + HOUR), W, policy, worst_n=10)
    assert dict(summary.distribution) == {"<0.75": 1, "0.75-0.80": 1, "0.80-0.85": 0, "0.85-0.90": 0,
                                          "0.90-0.95": 0, "0.95-1.00": 0, ">=1.00": 1}
    assert summary.below_threshold == ["UNDER"] and summary.above_one == []
    assert [(w.vehicle_id, w.efficiency, w.ac_kwh) for w in summary.worst] == [
        ("UNDER", 0.5, 12.0), ("AT-075", 0.75, 12.0), ("AT-100", 1.0, 12.0)]


def test_a_performance_report_counts_matched_and_unmatched_energy(efficiency) -> None:
    windows = [
        EfficiencyWindow("V1", "M1", T0 + W, 1.0, 0.9, 5, 5, 20.0, 0.9),
        EfficiencyWindow("V1", "M1", T0 + 2 * W, 0.5, 0.0, 3, 0, None, 0.0),  # vehicle silent
        EfficiencyWindow("V1", None, T0 + 3 * W, 0.0, 0.4, 0, 2, 30.0, None),  # unpaired readings
    ]
    efficiency.window_writer.replace_windows(W, T0, T0 + 3 * W, windows, 0)
    report = queries.performance_report(efficiency.windows, "V1", queries.Period(T0, T0 + HOUR), W, AlertPolicy())
    assert (report.ac_kwh, report.dc_kwh) == (1.5, 1.3)
    assert (report.matched_ac_kwh, report.matched_dc_kwh) == (1.0, 0.9)
    assert report.unmatched_ac_kwh == pytest.approx(0.5) and report.unmatched_dc_kwh == pytest.approx(0.4)
    assert report.avg_battery_temp == (20.0 * 5 + 30.0 * 2) / 7
    assert report.meters == ["M1"] and report.windows == 3
    assert report.status == "ok"  # 1.3 / 1.5 = 0.867
