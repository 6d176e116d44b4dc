"""One contract suite for every adapter of the efficiency ports (``chargewatch.efficiency_ports``), so
the in-memory fakes the route tests run on are proven to behave like the real stores
(docs/architecture.md "Stores: the ports and their adapters").

- WindowSource: SQLite (the embedded engine's table and rollups), InfluxDB (the efficiency bucket of
  a real ``influxd``, through the live suite's fixtures: skipped without the engine, failed under
  CI=true) and in memory; every adapter is given the same windows, as its writer stores them.
- AlertStore, NotificationOutbox, RunnerStateStore: SQLite (every mode keeps them there) and in memory.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence

import pytest

from chargewatch.bootstrap import sqlite_efficiency_stores
from chargewatch.efficiency import EfficiencyWindow, sum_row, window_sums
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores, WindowSource
from chargewatch.lineprotocol import encode_point
from chargewatch.settings import Settings
from chargewatch.stores.memory_efficiency import InMemoryWindowStore, in_memory_efficiency_stores
from chargewatch.stores.sqlite_database import SqliteDatabase
from chargewatch.stores.sqlite_windows import SqliteWindowStore
from tests.live.conftest import _session_influx, influx, scratch_org, scratch_prefix  # noqa: F401 (fixtures)

W = 300_000
HOUR = 3_600_000
T0 = 1_795_413_600_000  # 2026-11-23T06:00:00Z, a whole hour


def fleet_windows() -> list[EfficiencyWindow]:
    """Three hours and a bit of four vehicles: charging, idle (no efficiency), one-sided, an unpaired
    vehicle (no meter), a vehicle that changed meters (two windows at one stop), awkward floats."""
    rng = random.Random(7)
    windows = []
    for k in range(40):
        stop = T0 + (k + 1) * W
        for vehicle, meter, ratio in (("EV-1", "MTR-1", 0.91), ("EV-2", "MTR-2", 0.78), ("EV-3", None, 0.0)):
            if vehicle == "EV-3":  # unpaired: its own side only
                dc = round(rng.uniform(0.2, 1.0), 6)
                windows.append(EfficiencyWindow(vehicle, None, stop, 0.0, dc, 0, 5, 21.5, None))
                continue
            ac = round(rng.uniform(0.0, 1.7), 6) if k % 7 else 0.0
            ac_readings = 5 if ac else 0
            dc = ac * ratio * rng.uniform(0.97, 1.03)
            temp = rng.uniform(15.0, 35.0) if ac else None
            windows.append(EfficiencyWindow(vehicle, meter, stop, ac, dc, ac_readings, 5 if ac else 0, temp,
                                            dc / ac if ac >= 0.1 else None))
        if 10 <= k < 14:  # EV-4 re-paired mid-window: both meters' windows at one stop
            for meter in ("MTR-4A", "MTR-4B"):
                windows.append(EfficiencyWindow("EV-4", meter, stop, 0.6, 0.5, 2, 3, 30.0, 0.5 / 0.6))
    return windows


WINDOWS = fleet_windows()


def order(window: EfficiencyWindow) -> tuple[int, str, str]:
    return window.stop_ms, window.vehicle_id, window.meter_id or ""


def inside(start_ms: int, end_ms: int, vehicle_ids: Sequence[str] | None = None) -> list[EfficiencyWindow]:
    return [w for w in WINDOWS
            if start_ms < w.stop_ms <= end_ms and (vehicle_ids is None or w.vehicle_id in vehicle_ids)]


def window_line(w: EfficiencyWindow) -> str:
    """A window as the Flux task's ``to()`` writes it (no tag or field for a null)."""
    return encode_point("efficiency", {"vehicle_id": w.vehicle_id, "meter_id": w.meter_id},
                        {"ac_kwh": w.ac_kwh, "dc_kwh": w.dc_kwh, "efficiency": w.efficiency,
                         "ac_readings": w.ac_readings, "dc_readings": w.dc_readings,
                         "avg_battery_temp": w.avg_battery_temp}, w.stop_ms)


def sqlite_windows(tmp_path) -> Iterator[WindowSource]:
    store = SqliteWindowStore(SqliteDatabase(tmp_path / "chargewatch.db", synchronous="normal"))
    for hour in range(T0, T0 + 4 * HOUR, HOUR):  # as the runner writes them: an hour at a time
        store.replace_windows(W, hour, hour + HOUR, inside(hour, hour + HOUR), hour)
    yield store
    store.close()


def memory_windows(tmp_path) -> Iterator[WindowSource]:
    store = InMemoryWindowStore()
    store.replace_windows(W, T0, T0 + 4 * HOUR, WINDOWS, T0)
    yield store


def influx_windows(tmp_path, request) -> Iterator[WindowSource]:
    from chargewatch.stores.influx_windows import InfluxWindowSource

    server, org = request.getfixturevalue("influx"), request.getfixturevalue("scratch_org")
    org_id = server.api("GET", "/api/v2/orgs", params={"org": org})["orgs"][0]["id"]
    server.api("POST", "/api/v2/buckets", json={"orgID": org_id, "name": "efficiency", "retentionRules": []})
    server.write("efficiency", "\n".join(window_line(w) for w in WINDOWS), precision="ms", org=org)
    store = InfluxWindowSource.from_settings(Settings(
        data_dir=tmp_path, store="influx", influx={"url": server.url, "token": server.token, "org": org}))
    yield store
    store.close()


WINDOW_SOURCES: dict[str, Callable[..., Iterator[WindowSource]]] = {
    "sqlite": sqlite_windows, "memory": memory_windows, "influx": influx_windows}


@pytest.fixture(params=["sqlite", "memory", pytest.param("influx", marks=pytest.mark.influx)])
def source(request, tmp_path) -> Iterator[WindowSource]:
    factory = WINDOW_SOURCES[request.param]
    yield from (factory(tmp_path, request) if request.param == "influx" else factory(tmp_path))


# Periods: whole hours, partial hours at both ends, inside one hour, empty, past the data.
PERIODS = [(T0, T0 + 4 * HOUR), (T0 + 2 * W, T0 + 30 * W), (T0 + HOUR + W, T0 + HOUR + 5 * W),
           (T0 + HOUR, T0 + 2 * HOUR), (T0 - HOUR, T0), (T0 + 5 * HOUR, T0 + 6 * HOUR)]


# -- WindowSource --------------------------------------------------------------------------------


@pytest.mark.parametrize("start_ms, end_ms", PERIODS)
def test_the_windows_of_a_range_are_those_stopping_inside_it_by_stop_vehicle_and_meter(source, start_ms, end_ms):
    assert source.windows(W, start_ms, end_ms) == sorted(inside(start_ms, end_ms), key=order)


def test_a_vehicles_windows_are_its_own_with_an_unpaired_vehicle_meterless(source):
    assert source.windows(W, T0, T0 + 4 * HOUR, "EV-2") == sorted(inside(T0, T0 + 4 * HOUR, ["EV-2"]), key=order)
    unpaired = source.windows(W, T0, T0 + HOUR, "EV-3")
    assert unpaired and all(w.meter_id is None and w.efficiency is None for w in unpaired)
    assert source.windows(W, T0, T0 + 4 * HOUR, "EV-404") == []


def test_a_re_paired_vehicle_has_one_window_per_meter_at_a_stop(source):
    at_stop = source.windows(W, T0 + 10 * W, T0 + 11 * W, "EV-4")
    assert [w.meter_id for w in at_stop] == ["MTR-4A", "MTR-4B"]


def test_windows_of_several_vehicles_come_by_vehicle_then_stop(source):
    got = source.windows_of(W, T0 + W, T0 + 20 * W, ["EV-4", "EV-1", "EV-404"])
    want = sorted(inside(T0 + W, T0 + 20 * W, ["EV-1", "EV-4"]),
                  key=lambda w: (w.vehicle_id, w.stop_ms, w.meter_id or ""))
    assert got == want


def test_charging_windows_are_those_of_the_vehicles_charging_after_the_given_stop(source):
    # EV-1 and EV-2 idle in the window stopping at T0 + 8 W; EV-3 delivers 0.2-1.0 kWh DC in every
    # window; EV-4's two meters reach 1.0 kWh AC only together (0.6 + 0.6), at stops 11-14 W.
    def charging(active_kwh: float, since_ms: int, start_ms: int, end_ms: int) -> set[str]:
        got = source.charging_windows(W, start_ms, end_ms, since_ms, active_kwh)
        assert got == [w for w in source.windows(W, start_ms, end_ms) if w.vehicle_id in {v.vehicle_id for v in got}]
        return {w.vehicle_id for w in got}

    assert charging(0.1, T0 + 6 * W, T0 + 5 * W, T0 + 8 * W) == {"EV-1", "EV-2", "EV-3"}  # active at 7 W
    assert charging(0.1, T0 + 7 * W, T0 + 5 * W, T0 + 8 * W) == {"EV-3"}  # only the idle window after 7 W
    assert charging(1.0, T0 + 10 * W, T0, T0 + 14 * W) >= {"EV-4"}  # 0.6 + 0.6 from its two meters
    assert "EV-4" not in charging(1.0, T0 + 14 * W, T0, T0 + 20 * W)  # its windows stop at 14 W
    assert charging(5.0, T0, T0, T0 + 4 * HOUR) == set()


@pytest.mark.parametrize("start_ms, end_ms", PERIODS)
def test_a_vehicles_window_sums_are_exact(source, start_ms, end_ms):
    for vehicle_id in ("EV-1", "EV-3", "EV-4"):
        want = window_sums([sum_row(w) for w in inside(start_ms, end_ms, [vehicle_id])])
        assert source.vehicle_window_sums(W, vehicle_id, start_ms, end_ms) == want, vehicle_id


@pytest.mark.parametrize("start_ms, end_ms", PERIODS)
def test_vehicle_totals_sum_every_window_of_each_vehicle_in_the_range(source, start_ms, end_ms):
    totals = source.vehicle_totals(W, start_ms, end_ms)
    expected = sorted({w.vehicle_id for w in inside(start_ms, end_ms)})
    assert list(totals) == expected
    for vehicle_id, got in totals.items():
        mine = inside(start_ms, end_ms, [vehicle_id])
        assert (got.ac_readings, got.dc_readings, got.windows) == (
            sum(w.ac_readings for w in mine), sum(w.dc_readings for w in mine), len(mine))
        temps = [w for w in mine if w.avg_battery_temp is not None]
        assert got.battery_temp_readings == sum(w.dc_readings for w in temps)
        # rollups add plainly (a few ulps from exact)
        assert math.isclose(got.ac_kwh, math.fsum(w.ac_kwh for w in mine), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(got.dc_kwh, math.fsum(w.dc_kwh for w in mine), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(got.battery_temp_sum, math.fsum(w.avg_battery_temp * w.dc_readings for w in temps),
                            rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("start_ms, end_ms", PERIODS)
def test_the_fleets_hourly_energy_labels_whole_hours_by_their_stop_and_partial_ones_by_the_range_edge(
        source, start_ms, end_ms):
    first_whole, last_whole = -(-start_ms // HOUR) * HOUR, end_ms // HOUR * HOUR
    want: dict[int, list[EfficiencyWindow]] = {}
    for w in inside(start_ms, end_ms):
        if first_whole >= last_whole:
            label = end_ms
        elif w.stop_ms <= first_whole:
            label = first_whole
        elif w.stop_ms <= last_whole:
            label = -(-w.stop_ms // HOUR) * HOUR
        else:
            label = end_ms
        want.setdefault(label, []).append(w)
    got = source.fleet_hourly_energy(W, start_ms, end_ms)
    assert [stop for stop, _, _ in got] == sorted(want)
    for stop, ac, dc in got:
        assert math.isclose(ac, math.fsum(w.ac_kwh for w in want[stop]), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(dc, math.fsum(w.dc_kwh for w in want[stop]), rel_tol=1e-12, abs_tol=1e-12)


def test_a_source_that_can_serve_answers_its_ping(source):
    source.ping()


# -- AlertStore, NotificationOutbox, RunnerStateStore ---------------------------------------------


@pytest.fixture(params=["sqlite", "memory"])
def stores(request, tmp_path) -> Iterator[EfficiencyStores]:
    if request.param == "memory":
        yield in_memory_efficiency_stores()
        return
    database = SqliteDatabase(tmp_path / "chargewatch.db", synchronous="normal")
    yield sqlite_efficiency_stores(database)
    database.close()


def record(vehicle: str, state: str, started_ms: int, rule: str = "low_efficiency", **changes) -> AlertRecord:
    fired = started_ms + 5 * W if state in ("firing", "resolved") else None
    resolved = started_ms + 20 * W if state == "resolved" else None
    fields = dict(vehicle_id=vehicle, rule=rule, started_ms=started_ms, state=state, meter_id="M" + vehicle,
                  value=0.7, fired_ms=fired, resolved_ms=resolved, updated_ms=started_ms + 20 * W)
    return AlertRecord(**{**fields, **changes})


def test_open_alerts_are_the_pending_and_firing_ones_by_vehicle_and_rule(stores):
    alerts = [record("EV-2", "firing", T0), record("EV-1", "pending", T0 + W),
              record("EV-1", "firing", T0, rule="efficiency_above_one"), record("EV-3", "resolved", T0),
              record("EV-4", "cancelled", T0)]
    stores.alerts.save_alerts(alerts, [], T0)
    assert stores.alerts.open_alerts() == [alerts[2], alerts[1], alerts[0]]
    assert stores.alerts.firing_alerts() == [alerts[2], alerts[0]]
    assert stores.alerts.firing_count() == 2


def test_an_alert_is_read_back_as_stored_with_its_replayed_mark(stores):
    replayed = record("EV-1", "firing", T0, replayed=True)
    stores.alerts.save_alerts([replayed], [], T0)
    assert stores.alerts.alert("EV-1", "low_efficiency", T0) == replayed
    assert stores.alerts.firing_alerts() == [replayed]
    assert stores.alerts.alert("EV-1", "low_efficiency", T0 + 1) is None


def test_saving_an_alert_again_updates_it(stores):
    pending = record("EV-1", "pending", T0)
    stores.alerts.save_alerts([pending], [], T0)
    firing = record("EV-1", "firing", T0, value=0.65)
    stores.alerts.save_alerts([firing], [], T0 + W)
    assert stores.alerts.open_alerts() == [firing]


def test_recent_alerts_are_firing_or_resolved_since_newest_first(stores):
    old = record("EV-1", "resolved", T0 - 10 * HOUR)
    recent = record("EV-2", "resolved", T0)
    firing = record("EV-3", "firing", T0 + HOUR)
    stores.alerts.save_alerts([old, recent, firing, record("EV-4", "pending", T0 + 2 * HOUR)], [], T0)
    assert stores.alerts.recent_alerts(T0 - HOUR) == [firing, recent]
    assert stores.alerts.recent_alerts(T0 - HOUR, limit=1) == [firing]
    assert stores.alerts.recent_alerts(0) == [firing, recent, old]


def test_replacing_alerts_of_a_range_removes_the_others_there_and_counts_them(stores):
    before, inside_range, after = record("EV-1", "firing", T0), record("EV-2", "firing", T0 + HOUR), \
        record("EV-3", "firing", T0 + 3 * HOUR)
    stores.alerts.save_alerts([before, inside_range, after], [], T0)
    found = record("EV-2", "resolved", T0 + HOUR + W, replayed=True)
    removed = stores.alerts.replace_alerts(T0, T0 + 2 * HOUR, [found], [("http://hook/x", {"n": 1})], T0)
    assert removed == 1
    assert stores.alerts.alert("EV-2", "low_efficiency", T0 + HOUR) is None
    assert stores.alerts.alert("EV-2", "low_efficiency", T0 + HOUR + W) == found
    assert stores.alerts.open_alerts() == [before, after]
    assert [n.payload for n in stores.notifications.due_notifications(T0)] == [{"n": 1}]


def test_notifications_queued_with_alerts_come_due_in_order_with_their_payloads(stores):
    stores.alerts.save_alerts([record("EV-1", "firing", T0)], [("http://a/hook", {"status": "firing", "n": [1, 2]}),
                                                              ("http://b/hook", {"status": "firing"})], T0)
    due = stores.notifications.due_notifications(T0)
    assert [(n.url, n.payload, n.attempts) for n in due] == [
        ("http://a/hook", {"status": "firing", "n": [1, 2]}, 0), ("http://b/hook", {"status": "firing"}, 0)]
    assert stores.notifications.due_notifications(T0 - 1) == []  # due from when they were queued
    assert stores.notifications.due_notifications(T0, limit=1) == due[:1]
    assert stores.notifications.notification_counts() == {"pending": 2, "delivered": 0, "failed": 0}


def test_a_delivery_is_recorded_delivered_retried_later_or_given_up(stores):
    stores.alerts.save_alerts([], [("http://a", {"k": 1}), ("http://b", {"k": 2}), ("http://c", {"k": 3})], T0)
    first, second, third = stores.notifications.due_notifications(T0)
    stores.notifications.record_delivery(first.id, T0 + 1)
    stores.notifications.record_delivery(second.id, T0 + 1, error="HTTP 503", retry_at_ms=T0 + 60_000)
    stores.notifications.record_delivery(third.id, T0 + 1, error="HTTP 400")
    assert stores.notifications.due_notifications(T0 + 59_999) == []
    [retry] = stores.notifications.due_notifications(T0 + 60_000)
    assert (retry.id, retry.attempts) == (second.id, 1)
    assert stores.notifications.notification_counts() == {"pending": 1, "delivered": 1, "failed": 1}


def test_runner_state_keeps_each_key_until_it_is_set_again(stores):
    assert stores.runner_state.load() == {}
    stores.runner_state.update({"last_stop_ms": T0, "runs_total": 1})
    stores.runner_state.update({"runs_total": 2, "last_duration_s": 0.25})
    assert stores.runner_state.load() == {"last_stop_ms": float(T0), "runs_total": 2.0, "last_duration_s": 0.25}


def test_replacing_alerts_of_some_vehicles_leaves_the_other_vehicles_alerts_in_the_range(stores):
    one, two, three = record("EV-1", "firing", T0 + HOUR), record("EV-2", "firing", T0 + HOUR), \
        record("EV-3", "pending", T0 + HOUR)
    stores.alerts.save_alerts([one, two, three], [], T0)
    found = record("EV-2", "firing", T0 + HOUR + W, replayed=True)
    removed = stores.alerts.replace_alerts(T0, T0 + 2 * HOUR, [found], [], T0, vehicle_ids=["EV-2", "EV-3"])
    assert removed == 2
    assert stores.alerts.open_alerts() == [one, found]
    assert stores.alerts.replace_alerts(T0, T0 + 2 * HOUR, [], [], T0, vehicle_ids=[]) == 0
    assert stores.alerts.open_alerts() == [one, found]
