"""Every Flux query Grafana sends, run against a real InfluxDB holding a simulated fleet.

The queries are read from the files users get (``grafana/dashboards/*.json``,
``grafana/provisioning/alerting/rules.yaml``), not from the Python that generates them, and Grafana's
macros are substituted as Grafana does before InfluxDB sees a query (``pkg/tsdb/influxdb/flux/
macros.go``): ``v.timeRangeStart``/``v.timeRangeStop`` become RFC 3339 times (Go's RFC3339Nano),
``v.windowPeriod`` a Go duration (``1m0s``) from the range, the panel's min interval and ~1000 points,
and ``${vehicle_id}`` a vehicle.

The data: a 12-pair fleet of the simulator over the 3 hours before now (some chargers turn faulty,
readings lost, duplicated and late as the simulator's courier delivers them; the first copy of a
reading is the one stored, as ingest does), written to bucket ``telemetry`` with the pairing tags
ingest stores, plus one healthy pair whose meter under-reads by 20 % (DC > AC, the data-quality
case). The efficiency windows are the project's own Flux task run as a query, and once through
InfluxDB's task engine (so ``_tasks`` has a run). Expected values come from
``chargewatch/efficiency.py`` on the same readings, so the panels' arithmetic is checked against the
reference engine, not against itself.

Shapes are those Grafana's Flux frame builder needs (``pkg/tsdb/influxdb/flux/builder.go``): a table
with ``_value`` and a time column is a series whose labels are its string columns not starting with
``_``; anything else is a table. The ingest-health panels reading the monitoring bucket are run here
on an empty bucket (they must not fail); ``test_telegraf_live.py`` fills it from real scrapes.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from chargewatch.efficiency import EfficiencyWindow, MeterEnergy, VehicleEnergy, windows_from_readings
from chargewatch.influx import flux
from chargewatch.pairing import Pairings
from chargewatch.readings import MeterReading
from chargewatch.settings import Settings
from chargewatch.stores import PairedReading
from chargewatch.stores.outbox import reading_line
from grafana import queries
from simulator.devices import DeliveryFaults, Fleet, FleetConfig, simulate
from tests.unit.test_grafana_provisioning import EXPRESSION_UID, GRAFANA_MACRO, all_panels, dashboards, rules

WINDOW = timedelta(seconds=300)
HOURS = 3
MIN_WINDOW_ENERGY_KWH = 0.1  # the efficiency task's default
UNDER_READING = 0.8  # the broken meter reports this share of what it measured
REL = 1e-9  # Flux sums naively, the reference with fsum
LOW, ABOVE_ONE = "ChargingEfficiencyLow", "ChargingEfficiencyAboveOne"

# Grafana's interval rounding (rangeutil.RoundInterval), the part our ranges reach.
_ROUNDED_SECONDS = ((7.5, 5), (12.5, 10), (17.5, 15), (25, 20), (45, 30), (90, 60), (210, 120), (450, 300),
                    (900, 600), (1200, 900), (2700, 1800), (5400, 3600))
MAX_DATA_POINTS = 1000  # about a panel's width in pixels


# -- Grafana's side: macros, intervals ------------------------------------------------------------

def rfc3339_nano(moment: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time: fraction without trailing zeros."""
    moment = moment.astimezone(timezone.utc)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def go_duration(seconds: int) -> str:
    """Go's time.Duration.String() of whole seconds: 30s, 1m0s, 5m0s, 1h0m0s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def seconds_of(text: str) -> int:
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, text
    return sum(int(v) * unit for v, unit in zip(parts.groups(), (3600, 60, 1), strict=True) if v)


def window_period(range_seconds: float, min_interval: str | None) -> int:
    """The interval Grafana computes for a panel: range / max data points, rounded, at least the min interval."""
    raw = range_seconds / MAX_DATA_POINTS
    rounded = next((value for limit, value in _ROUNDED_SECONDS if raw <= limit), 3600)
    return max(rounded, seconds_of(min_interval) if min_interval else 0)


@dataclass(frozen=True)
class GrafanaRange:
    start: datetime
    stop: datetime
    window_period_seconds: int

    def interpolate(self, source: str, vehicle_id: str | None = None) -> str:
        values = {"timeRangeStart": rfc3339_nano(self.start), "timeRangeStop": rfc3339_nano(self.stop),
                  "windowPeriod": go_duration(self.window_period_seconds)}
        text = GRAFANA_MACRO.sub(lambda m: values.get(m.group(2), m.group(0)), source)
        assert not re.search(r"\bv\.(bucket|defaultBucket|organization)\b", text), "macro this test does not fill"
        if vehicle_id is not None:
            text = text.replace("${" + queries.VEHICLE_VARIABLE + "}", vehicle_id)
        assert "${" not in text, f"a dashboard variable left in:\n{text}"
        return text


# -- the fleet in InfluxDB -------------------------------------------------------------------------

@dataclass
class SimulatedFleet:
    now: datetime
    end: datetime
    readings: list[PairedReading]
    windows: list[EfficiencyWindow]
    faulty: dict[str, datetime]  # vehicle -> fault onset
    healthy: list[str]
    under_reading: str  # the vehicle whose meter under-reads

    def windows_in(self, start: datetime, stop: datetime, vehicle_id: str | None = None) -> list[EfficiencyWindow]:
        """Windows a Flux range(start, stop) selects: stamped (at their stop) in [start, stop)."""
        start_ms, stop_ms = to_ms(start), to_ms(stop)
        return [w for w in self.windows if start_ms <= w.stop_ms < stop_ms
                and (vehicle_id is None or w.vehicle_id == vehicle_id)]

    @property
    def vehicles(self) -> list[str]:
        return sorted({p.vehicle_id for p in self.readings if p.vehicle_id})


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def stamp(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, timezone.utc)


def floor_to_window(moment: datetime) -> datetime:
    seconds = int(moment.timestamp()) // int(WINDOW.total_seconds()) * int(WINDOW.total_seconds())
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def sums(windows: list[EfficiencyWindow]) -> tuple[float, float]:
    return math.fsum(w.ac_kwh for w in windows), math.fsum(w.dc_kwh for w in windows)


def stored_readings(config: FleetConfig, start: datetime, end: datetime) -> list[PairedReading]:
    """What ingest would store of the simulated deliveries: the first copy of each (device, time), with
    the default pairing; readings stamped at or after ``end`` are left out (the windows end there)."""
    deliveries, _ = simulate(config, DeliveryFaults(), start, end)
    pairings, first = Pairings(), {}
    for delivery in deliveries:
        reading = delivery.reading
        key = (reading.device_id, reading.time_ms)
        if key not in first and reading.time_ms < to_ms(end):
            first[key] = reading
    paired = []
    for reading in first.values():
        partner = pairings.partner_of(reading.kind, reading.device_id)
        vehicle, meter = (partner, reading.device_id) if isinstance(reading, MeterReading) else (
            reading.device_id, partner)
        paired.append(PairedReading(reading, vehicle, meter, reading.time_ms))
    return paired


def reference_windows(readings: list[PairedReading]) -> list[EfficiencyWindow]:
    meters, vehicles = [], []
    for p in readings:
        r = p.reading
        if isinstance(r, MeterReading):
            meters.append(MeterEnergy(p.vehicle_id, r.meter_id, r.time_ms, r.kwh_consumed_ac))
        else:
            vehicles.append(VehicleEnergy(r.vehicle_id, p.meter_id, r.time_ms, r.kwh_delivered_dc, r.battery_temp))
    return windows_from_readings(meters, vehicles, int(WINDOW.total_seconds() * 1000), MIN_WINDOW_ENERGY_KWH)


def run_task_in_influxdb(org: Any, settings: Settings) -> dict[str, Any]:
    """Install the efficiency task in the org, run it once through InfluxDB's task engine, delete it."""
    task = org.api("POST", "/api/v2/tasks", json={"orgID": org.org_id, "flux": flux.efficiency_task(settings),
                                                  "status": "active"})
    queued = org.api("POST", f"/api/v2/tasks/{task['id']}/runs", json={})
    deadline, run = time.monotonic() + 120, {"status": "queued"}
    while time.monotonic() < deadline:
        # A manual run is listed once the executor has picked it up (GET .../runs/{id} 404s until then).
        runs = org.api("GET", f"/api/v2/tasks/{task['id']}/runs")["runs"]
        run = next((r for r in runs if r["id"] == queued["id"]), run)
        if run["status"] in ("success", "failed", "canceled"):
            break
        time.sleep(0.5)
    logs = org.api("GET", f"/api/v2/tasks/{task['id']}/logs")
    org.api("DELETE", f"/api/v2/tasks/{task['id']}")  # no scheduled runs after this one; _tasks keeps its record
    if run["status"] != "success":
        raise AssertionError(f"task run {run['status']}: {logs}")
    return run


@pytest.fixture(scope="module")
def fleet(module_org) -> SimulatedFleet:
    now = datetime.now(timezone.utc)
    # Readings are stamped up to ~90 s after their step (phase + clock offset): keep them all in the past.
    end = floor_to_window(now - timedelta(minutes=2))
    start = end - timedelta(hours=HOURS)
    config = FleetConfig(pairs=12, seed=9, faulty_share=0.25, fault_onset_within=timedelta(hours=1))
    profiles = {p.vehicle_id: p for p in Fleet(config, start).profiles}
    readings = stored_readings(config, start, end)
    under_reading = next(v for v, p in sorted(profiles.items()) if not p.is_faulty)
    meter = profiles[under_reading].meter_id

    def under_read(p: PairedReading) -> PairedReading:
        assert isinstance(p.reading, MeterReading)
        under = p.reading.model_copy(update={"kwh_consumed_ac": p.reading.kwh_consumed_ac * UNDER_READING})
        return PairedReading(under, *p[1:])

    readings = [under_read(p) if p.reading.device_id == meter else p for p in readings]

    for bucket in (queries.TELEMETRY_BUCKET, queries.EFFICIENCY_BUCKET, queries.MONITORING_BUCKET):
        module_org.create_bucket(bucket)
    lines = [reading_line(p) for p in readings]
    for first in range(0, len(lines), 5000):
        module_org.write(queries.TELEMETRY_BUCKET, "\n".join(lines[first:first + 5000]), precision="ms")

    settings = Settings(
        influx={"url": module_org.url, "token": module_org.token, "org": module_org.org,
                "telemetry_bucket": queries.TELEMETRY_BUCKET, "efficiency_bucket": queries.EFFICIENCY_BUCKET},
        efficiency={"window_seconds": int(WINDOW.total_seconds()), "min_energy_kwh": MIN_WINDOW_ENERGY_KWH,
                    "recompute_windows": HOURS * 3600 // int(WINDOW.total_seconds()) + 1},
    )
    module_org.query(flux.task_as_query(flux.efficiency_task(settings), end, write=True))
    run_task_in_influxdb(module_org, settings.model_copy(update={"efficiency": settings.efficiency.model_copy(
        update={"recompute_windows": 6})}))

    faulty = {v: p.fault_onset for v, p in profiles.items() if p.is_faulty and p.fault_onset is not None}
    healthy = sorted(v for v, p in profiles.items() if not p.is_faulty and v != under_reading)
    return SimulatedFleet(now, end, readings, reference_windows(readings), faulty, healthy, under_reading)


def run(org: Any, source: str) -> list[Any]:
    """The query's tables as influxdb-client returns them (columns with types and group flags, records)."""
    from influxdb_client import InfluxDBClient

    with InfluxDBClient(url=org.url, token=org.token, org=org.org, timeout=120_000) as client:
        return list(client.query_api().query(source))


# -- what the files hold -------------------------------------------------------------------------

@dataclass(frozen=True)
class GrafanaQuery:
    where: str
    dashboard: str
    panel: dict[str, Any] | None  # None: the variable or an alert rule
    source: str


def panel_queries() -> list[GrafanaQuery]:
    found = []
    for name, board in dashboards().items():
        for panel in all_panels(board):
            for target in panel.get("targets", []):
                found.append(GrafanaQuery(f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}", name,
                                          panel, target["query"]))
    return found


def panel_query(dashboard: str, panel_id: int, ref_id: str = "A") -> str:
    """A target's query as the dashboard file holds it."""
    [source] = [q.source for q in panel_queries() if q.dashboard == dashboard and q.panel is not None
                and q.panel["id"] == panel_id and q.where.endswith(f" {ref_id}")]
    return source


def variable_query() -> str:
    [variable] = [v for v in dashboards()["vehicle-detail.json"]["templating"]["list"] if v["type"] == "query"]
    assert variable["name"] == queries.VEHICLE_VARIABLE
    return variable["query"]["query"]


def alert_queries() -> dict[str, tuple[str, int]]:
    """Rule title -> (query A, its trailing range in seconds)."""
    found = {}
    for rule in rules():
        [query] = [q for q in rule["data"] if q["datasourceUid"] != EXPRESSION_UID]
        assert query["relativeTimeRange"]["to"] == 0
        found[rule["title"]] = (query["model"]["query"], query["relativeTimeRange"]["from"])
    return found


def dashboard_range(name: str, now: datetime) -> tuple[datetime, datetime]:
    time_range = dashboards()[name]["time"]
    match = re.fullmatch(r"now-(\d+)h", time_range["from"])
    assert match and time_range["to"] == "now", time_range
    return now - timedelta(hours=int(match.group(1))), now


# -- shapes Grafana needs ------------------------------------------------------------------------

def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def label_columns(table: Any) -> list[str]:
    return [c.label for c in table.columns if c.label not in ("result", "table") and not c.label.startswith("_")
            and c.data_type == "string"]


def assert_time_series(tables: list[Any], where: str) -> None:
    identities = set()
    for table in tables:
        types = {c.label: c.data_type for c in table.columns}
        assert "_value" in types and types.get("_time", "").startswith("dateTime"), (where, types)
        assert table.records, where
        for record in table.records:
            assert record.values["_time"] is not None and (record.values["_value"] is None
                                                          or is_number(record.values["_value"])), (where, record.values)
        # Grafana takes a series' labels from its first row: they must be the table's group key.
        group_key = {c.label for c in table.columns if c.group}
        labels = label_columns(table)
        assert set(labels) <= group_key, f"{where}: label columns {labels} not all in the group key {group_key}"
        first = table.records[0].values
        identity = (first.get("_measurement"), first.get("_field"), tuple((n, first[n]) for n in labels))
        assert identity not in identities, f"{where}: two series named {identity}"
        identities.add(identity)


def shown_names(panel: dict[str, Any]) -> set[str]:
    return {o["matcher"]["options"] for o in panel.get("fieldConfig", {}).get("overrides", [])
            if o["matcher"]["id"] == "byName"}


def assert_panel_shape(query: GrafanaQuery, tables: list[Any]) -> None:
    panel, where = query.panel, query.where
    assert panel is not None
    if panel["type"] == "timeseries":
        assert_time_series(tables, where)
        return
    assert len(tables) <= 1, f"{where}: {len(tables)} tables for a {panel['type']} panel"
    if not tables:
        return
    [table] = tables
    names = [c.label for c in table.columns if c.label not in ("result", "table")]
    if panel["type"] == "stat":
        assert len(table.records) == 1, f"{where}: a stat needs one row, got {len(table.records)}"
        row = table.records[0].values
        fields = panel["options"]["reduceOptions"].get("fields") or ""
        if fields:  # a regex of the field shown (a string, e.g. the forwarder state)
            shown = [n for n in names if re.fullmatch(fields.strip("/"), n)]
            assert len(shown) == 1 and row[shown[0]] is not None, (where, names)
        else:
            numbers = {n for n in names if is_number(row[n])}
            expected = shown_names(panel) or {"_value"}
            assert numbers == expected, f"{where}: numbers {numbers}, the panel shows {expected}"
    elif panel["type"] == "table":
        assert shown_names(panel) <= set(names), (where, names)
    elif panel["type"] == "histogram":
        assert all(is_number(r.values["_value"]) for r in table.records), where
        assert not any(t.startswith("dateTime") for t in (c.data_type for c in table.columns)), where
    else:
        raise AssertionError(f"{where}: no shape rule for panel type {panel['type']}")


def single_value(tables: list[Any], column: str = "_value") -> Any:
    [table] = tables
    [record] = table.records
    return record.values[column]


# -- the tests ---------------------------------------------------------------------------------

def test_the_fleet_has_the_cases_the_checks_need(influx, module_org, fleet):
    assert len(fleet.vehicles) == 12 and len(fleet.faulty) == 3 and fleet.healthy
    stored = run(module_org, f'from(bucket: "{queries.EFFICIENCY_BUCKET}") |> range(start: 0) '
                              '|> filter(fn: (r) => r._field == "ac_kwh") |> group() |> count()')
    assert single_value(stored) == len(fleet.windows)


def test_every_panel_query_runs_and_has_the_shape_its_panel_needs(influx, module_org, fleet):
    found = panel_queries()
    assert len(found) >= 20
    for query in found:
        start, stop = dashboard_range(query.dashboard, fleet.now)
        span = GrafanaRange(start, stop, window_period((stop - start).total_seconds(), query.panel.get("interval")))
        vehicles = fleet.vehicles if f"${{{queries.VEHICLE_VARIABLE}}}" in query.source else [None]
        for vehicle_id in vehicles:
            tables = run(module_org, span.interpolate(query.source, vehicle_id))
            assert_panel_shape(query, tables)
            if query.dashboard != "ingest-health.json" and vehicle_id != fleet.under_reading:
                assert tables, f"{query.where} ({vehicle_id}): no data from a fleet that charged"


def fleet_range(fleet: SimulatedFleet, name: str = "fleet-overview.json") -> GrafanaRange:
    start, stop = dashboard_range(name, fleet.now)
    return GrafanaRange(start, stop, window_period((stop - start).total_seconds(), None))


def test_the_fleet_overview_numbers_equal_the_reference_engine(influx, module_org, fleet):
    span = fleet_range(fleet)
    windows = fleet.windows_in(span.start, span.stop)
    ac, dc = sums(windows)
    fleet_efficiency = single_value(run(module_org, span.interpolate(panel_query("fleet-overview.json", 1))))
    assert math.isclose(fleet_efficiency, dc / ac, rel_tol=REL)

    per_vehicle = {v: sums(fleet.windows_in(span.start, span.stop, v)) for v in fleet.vehicles}
    below = {v for v, (a, d) in per_vehicle.items() if a >= queries.MIN_SPAN_ENERGY_KWH and d < queries.THRESHOLD * a}
    assert below and below <= set(fleet.faulty)
    assert single_value(run(module_org, span.interpolate(panel_query("fleet-overview.json", 2)))) == len(below)

    [worst] = run(module_org, span.interpolate(panel_query("fleet-overview.json", 6)))
    rows = [r.values for r in worst.records]
    expected = sorted(((d / a, v) for v, (a, d) in per_vehicle.items() if a >= queries.MIN_SPAN_ENERGY_KWH))[:10]
    assert [r["vehicle_id"] for r in rows] == [v for _, v in expected]
    for row, (efficiency, vehicle_id) in zip(rows, expected, strict=True):
        assert math.isclose(row["efficiency"], efficiency, rel_tol=REL)
        assert math.isclose(row["ac_kwh"], per_vehicle[vehicle_id][0], rel_tol=REL)

    energy = run(module_org, span.interpolate(panel_query("fleet-overview.json", 5)))
    totals = {t.records[0].values["_field"]: math.fsum(r.values["_value"] for r in t.records) for t in energy}
    assert math.isclose(totals["ac_kwh"], ac, rel_tol=REL) and math.isclose(totals["dc_kwh"], dc, rel_tol=REL)

    rate = run(module_org, span.interpolate(panel_query("fleet-overview.json", 4)))
    counted = {t.records[0].values["_measurement"]: sum(r.values["_value"] for r in t.records)
               * span.window_period_seconds for t in rate}
    in_range = [p.reading for p in fleet.readings if to_ms(span.start) <= p.reading.time_ms < to_ms(span.stop)]
    for kind in ("meter", "vehicle"):
        assert round(counted[kind], 6) == sum(1 for r in in_range if r.kind == kind), kind

    [soc] = run(module_org, span.interpolate(panel_query("fleet-overview.json", 3)))
    newest: dict[str, tuple[int, float]] = {}
    for p in fleet.readings:
        r = p.reading
        if r.kind == "vehicle" and r.time_ms >= to_ms(fleet.now - timedelta(hours=1)):
            newest[r.vehicle_id] = max(newest.get(r.vehicle_id, (0, 0.0)), (r.time_ms, r.soc))
    assert {r.values["vehicle_id"]: r.values["_value"] for r in soc.records} == {v: s for v, (_, s) in newest.items()}


def test_the_vehicle_variable_lists_every_vehicle(influx, module_org, fleet):
    tables = run(module_org, fleet_range(fleet, "vehicle-detail.json").interpolate(variable_query()))
    assert sorted(r.values["_value"] for t in tables for r in t.records) == fleet.vehicles


def test_the_vehicle_detail_numbers_equal_the_reference_engine(influx, module_org, fleet):
    # Viewed two minutes after the newest window closed: its point must be on the trailing line already.
    stop = fleet.end + timedelta(minutes=2, seconds=3)
    span = GrafanaRange(stop - timedelta(hours=24), stop, window_period(24 * 3600, None))
    for vehicle_id in fleet.vehicles:
        windows = fleet.windows_in(span.start, span.stop, vehicle_id)
        ac, dc = sums(windows)
        [energy] = run(module_org, span.interpolate(panel_query("vehicle-detail.json", 2), vehicle_id))
        [row] = [r.values for r in energy.records]
        assert math.isclose(row["ac_kwh"], ac, rel_tol=REL) and math.isclose(row["dc_kwh"], dc, rel_tol=REL)
        efficiency = run(module_org, span.interpolate(panel_query("vehicle-detail.json", 1), vehicle_id))
        assert math.isclose(single_value(efficiency), dc / ac, rel_tol=REL), vehicle_id
        [per_window] = run(module_org, span.interpolate(panel_query("vehicle-detail.json", 3, "A"), vehicle_id))
        got = [(to_ms(r.values["_time"]), r.values["_value"]) for r in per_window.records]
        want = [(w.stop_ms, w.efficiency) for w in windows if w.efficiency is not None]
        assert [t for t, _ in got] == [t for t, _ in want], vehicle_id
        assert all(math.isclose(g, w, rel_tol=REL) for (_, g), (_, w) in zip(got, want, strict=True)), vehicle_id
        # The alert measure as a line: at T, the windows stamped T - span + window ... T, up to the newest.
        tables = run(module_org, span.interpolate(panel_query("vehicle-detail.json", 3, "B"), vehicle_id))
        points = {r.values["_time"]: r.values["_value"] for t in tables for r in t.records}
        expected = {}
        for moment in (stamp(w.stop_ms) for w in windows):
            ac, dc = sums(fleet.windows_in(moment - queries.SPAN + WINDOW, moment + timedelta(milliseconds=1),
                                           vehicle_id))
            if ac >= queries.MIN_SPAN_ENERGY_KWH:
                expected[moment] = dc / ac
        assert sorted(points) == sorted(expected), vehicle_id
        assert all(math.isclose(points[m], expected[m], rel_tol=REL) for m in points), vehicle_id


def is_active(window: EfficiencyWindow) -> bool:
    return window.ac_kwh >= queries.ACTIVE_WINDOW_KWH or window.dc_kwh >= queries.ACTIVE_WINDOW_KWH


def scaled_sides(window: EfficiencyWindow) -> tuple[float, float]:
    """A window's AC and DC, the side with fewer readings scaled up to the other's count."""
    ac, dc = window.ac_kwh, window.dc_kwh
    if 0 < window.ac_readings < window.dc_readings:
        ac = ac * window.dc_readings / window.ac_readings
    if 0 < window.dc_readings < window.ac_readings:
        dc = dc * window.ac_readings / window.dc_readings
    return ac, dc


def alert_measure(fleet: SimulatedFleet, vehicle_id: str, stop: datetime, span_seconds: int) -> float | None:
    """The alert rules' measure by the reference engine's windows (grafana/queries.py says why): the
    trailing range's windows, sides scaled by reading counts, a session's first window left out when
    the session began in the range, no verdict when the range's oldest window charges and its newest
    is idle or when less than the minimum AC energy flowed."""
    start = stop - timedelta(seconds=span_seconds)
    rows = sorted(fleet.windows_in(start - WINDOW, stop, vehicle_id), key=lambda w: w.stop_ms)
    kept = [w for previous, w in zip([None, *rows], rows, strict=False) if w.stop_ms >= to_ms(start)
            and not (previous is not None and is_active(w) and not is_active(previous))]
    if not kept or is_active(kept[0]) and not is_active(kept[-1]):
        return None
    ac = math.fsum(scaled_sides(w)[0] for w in kept)
    dc = math.fsum(scaled_sides(w)[1] for w in kept)
    return dc / ac if ac >= queries.MIN_SPAN_ENERGY_KWH else None


def alert_values(org: Any, fleet: SimulatedFleet, title: str, stop: datetime) -> dict[str, float]:
    """Query A of a rule as Grafana evaluates it at ``stop``: one series per vehicle, its one value,
    equal to the reference engine's measure."""
    source, span_seconds = alert_queries()[title]
    evaluation = GrafanaRange(stop - timedelta(seconds=span_seconds), stop, 60)
    tables = run(org, evaluation.interpolate(source))
    assert_time_series(tables, f"alert rule {title}")
    values = {}
    for table in tables:
        assert [c.label for c in table.columns if c.group] == ["vehicle_id"], title  # one instance per vehicle
        [record] = table.records
        values[record.values["vehicle_id"]] = record.values["_value"]
    expected = {v: alert_measure(fleet, v, stop, span_seconds) for v in fleet.vehicles}
    assert values.keys() == {v for v, value in expected.items() if value is not None}, (title, stop)
    for vehicle_id, value in values.items():
        assert value == pytest.approx(expected[vehicle_id], rel=REL, abs=0), (title, vehicle_id)
    return values


def evaluation_times(fleet: SimulatedFleet) -> list[datetime]:
    """Grafana's evaluations every minute, from one span after the data starts until five minutes
    after it ends, 35 s past the minute: a window stamped T is written at T + 30 s (the task's offset)."""
    first = fleet.end - timedelta(hours=HOURS) + queries.SPAN + timedelta(seconds=35)
    return [first + timedelta(minutes=i) for i in range(int((fleet.end - first) / timedelta(minutes=1)) + 6)]


def rule_evaluations(org: Any, fleet: SimulatedFleet) -> list[tuple[datetime, dict[str, float]]]:
    source = alert_queries()[LOW][0]
    assert alert_queries()[ABOVE_ONE][0] == source  # both rules evaluate the same measure
    return [(stop, alert_values(org, fleet, LOW, stop)) for stop in evaluation_times(fleet)]


@pytest.fixture(scope="module")
def evaluations(module_org, fleet) -> list[tuple[datetime, dict[str, float]]]:
    return rule_evaluations(module_org, fleet)


def fired(evaluations: list[tuple[datetime, dict[str, float]]], condition: Any, recovered: Any) -> set[str]:
    """Vehicles whose alert fires: the condition held for the rule's pending period (``for``); a
    firing alert resolves past the recovery threshold, and without a verdict (noDataState OK)."""
    states: dict[str, tuple[str, datetime]] = {}
    firing = set()
    for moment, values in evaluations:
        for vehicle_id in set(states) | set(values):
            value, state = values.get(vehicle_id), states.get(vehicle_id)
            if value is None or (state is not None and state[0] == "firing" and recovered(value)):
                states.pop(vehicle_id, None)
            elif state is not None and state[0] == "firing":
                continue
            elif condition(value):
                since = state[1] if state else moment
                states[vehicle_id] = ("firing" if moment - since >= queries.PENDING else "pending", since)
                if moment - since >= queries.PENDING:
                    firing.add(vehicle_id)
            else:
                states.pop(vehicle_id, None)
    return firing


def charging_throughout(fleet: SimulatedFleet, vehicle_id: str, stop: datetime, span_seconds: int) -> bool:
    """The vehicle charged in every window of the trailing range and in the windows on either side of it."""
    windows = {w.stop_ms: w for w in fleet.windows if w.vehicle_id == vehicle_id}
    inside = [w.stop_ms for w in fleet.windows_in(stop - timedelta(seconds=span_seconds), stop, vehicle_id)]
    if not inside:
        return False
    window_ms = int(WINDOW.total_seconds() * 1000)
    stamps = range(min(inside) - window_ms, max(inside) + 2 * window_ms, window_ms)
    return all(stamp in windows and is_active(windows[stamp]) for stamp in stamps)


def test_the_low_efficiency_rule_fires_for_the_faulty_vehicles_and_no_healthy_one(influx, fleet, evaluations):
    span_seconds = alert_queries()[LOW][1]
    faulty_seen, healthy_seen = set(), set()
    for stop, values in evaluations:
        for vehicle_id, value in values.items():
            if not charging_throughout(fleet, vehicle_id, stop, span_seconds):
                continue
            onset = fleet.faulty.get(vehicle_id)
            if onset is not None and stop - timedelta(seconds=span_seconds) - WINDOW > onset:
                assert value < queries.THRESHOLD, (vehicle_id, stop, value)
                faulty_seen.add(vehicle_id)
            elif vehicle_id in fleet.healthy:
                assert value > queries.RESOLVE_THRESHOLD, (vehicle_id, stop, value)
                healthy_seen.add(vehicle_id)
    assert len(faulty_seen) >= 2 and len(healthy_seen) >= 3, (faulty_seen, healthy_seen)
    low = fired(evaluations, lambda v: v < queries.THRESHOLD, lambda v: v > queries.RESOLVE_THRESHOLD)
    assert low == faulty_seen, low


def test_the_above_one_rule_fires_only_for_the_under_reading_meter(influx, fleet, evaluations):
    span_seconds = alert_queries()[ABOVE_ONE][1]
    for stop, values in evaluations:
        for vehicle_id, value in values.items():
            assert 0.5 < value < 1.5, (vehicle_id, value)
            if charging_throughout(fleet, vehicle_id, stop, span_seconds):
                assert (value > queries.ABOVE_ONE_THRESHOLD) == (vehicle_id == fleet.under_reading), (vehicle_id, value)
    above = fired(evaluations, lambda v: v > queries.ABOVE_ONE_THRESHOLD,
                  lambda v: v < queries.ABOVE_ONE_RESOLVE_THRESHOLD)
    assert above == {fleet.under_reading}


def test_the_ingest_health_task_panels_read_the_task_output(influx, module_org, fleet):
    start, stop = dashboard_range("ingest-health.json", datetime.now(timezone.utc))
    span = GrafanaRange(start, stop, 300)
    lag = single_value(run(module_org, span.interpolate(panel_query("ingest-health.json", 4))))
    assert lag == pytest.approx((datetime.now(timezone.utc) - fleet.end).total_seconds(), abs=60)
    deadline = time.monotonic() + 30
    while True:  # the run's record reaches _tasks shortly after the run is listed as done
        runs = run(module_org, span.interpolate(panel_query("ingest-health.json", 11)))
        if runs or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert_time_series(runs, "task runs")
    by_status = {t.records[0].values["status"]: sum(r.values["_value"] for r in t.records) for t in runs}
    assert by_status.get("success", 0) >= 1 and "failed" not in by_status, by_status
