"""Telegraf, the real binary, both ways chargewatch meets it.

1. The bundle's own ``telegraf/telegraf.conf``, unchanged, with only its environment variables set
   (as a native install or the compose service sets them): it scrapes the real ``serve ingest`` (influx
   mode, with the real forwarder shipping to the real influxd) and ``serve analytics`` processes into
   the monitoring bucket, and every Ingest health panel query, read from the dashboard file with
   Grafana's macros, returns what its panel shows.
2. Telegraf as a client: ``outputs.influxdb_v2`` pointed at chargewatch's ``/api/v2/write`` (ingest on
   the embedded store) delivers meter and vehicle line protocol read by ``inputs.file``; every reading
   is stored exactly once in the SQLite file.

Everything binds 127.0.0.1; every process is stopped by its PID.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from chargewatch.readings import READING, AnyReading, ReadingRules, to_wire
from grafana import queries
from tests.e2e.harness import WRITE_TOKEN, IngestClient, IngestServer, free_port
from tests.e2e.influx_mode import ForwarderProcess, influx_env, wait_until
from tests.live.conftest import attach_log
from tests.live.engines import REPO, EngineProcess, require_engine
from tests.live.test_grafana_queries_live import GrafanaRange, assert_panel_shape, panel_queries, run

TELEGRAF_CONF = REPO / "telegraf" / "telegraf.conf"
SCRAPE_SECONDS = 1


def telegraf(tmp_path: Path, config: Path, env: dict[str, str], name: str = "telegraf") -> EngineProcess:
    """The real telegraf on ``config``, its health output on a loopback port of its own (not started)."""
    binary = require_engine("telegraf")
    health = f"http://127.0.0.1:{free_port()}"
    environment = {"PATH": "/usr/bin:/bin", "TELEGRAF_HEALTH_ADDRESS": health, **env}
    return EngineProcess(name, [str(binary), "--config", str(config)], tmp_path / f"{name}.log",
                         ready_url=health + "/", env=environment)


def reading(**fields: Any) -> AnyReading:
    """A reading validated as ingest validates it, against the real clock."""
    return READING.validate_python(fields, context=ReadingRules(now=datetime.now(timezone.utc)).context())


def readings_at(moment: datetime, pairs: int) -> list[AnyReading]:
    batch: list[AnyReading] = []
    for number in range(1, pairs + 1):
        batch.append(reading(meterId=f"METER_{number:03d}", kwhConsumedAc=1.0 + number / 100, voltage=230.0,
                             timestamp=moment.isoformat()))
        batch.append(reading(vehicleId=f"VEHICLE_{number:03d}", kwhDeliveredDc=0.9 + number / 100, soc=40.0 + number,
                             batteryTemp=25.0, timestamp=moment.isoformat()))
    return batch


# -- 1. the bundle's telegraf.conf scrapes both services into the monitoring bucket ------------------

@pytest.fixture
def scraped(request, tmp_path, influx, module_org):
    """Ingest (influx mode) + forwarder + analytics on one data dir, scraped by the bundle's Telegraf
    every second while readings of every outcome arrive: accepted, duplicate, unpaired, rejected."""
    for bucket in (queries.TELEMETRY_BUCKET, queries.EFFICIENCY_BUCKET, queries.MONITORING_BUCKET):
        module_org.create_bucket(bucket)
    data_dir = tmp_path / "chargewatch"
    data_dir.mkdir()
    env = influx_env(module_org)
    ingest = IngestServer(data_dir, free_port(), env)
    analytics = IngestServer(data_dir, free_port(), env, service="analytics")
    forwarder = ForwarderProcess(ingest)
    scraper = telegraf(tmp_path, TELEGRAF_CONF, {
        "INGEST_METRICS_URL": f"{ingest.url}/metrics", "ANALYTICS_METRICS_URL": f"{analytics.url}/metrics",
        "INFLUX_URL": module_org.url, "INFLUX_TOKEN": module_org.token, "INFLUX_ORG": module_org.org,
        "INFLUX_MONITORING_BUCKET": queries.MONITORING_BUCKET, "TELEGRAF_INTERVAL": f"{SCRAPE_SECONDS}s",
    })
    attach_log(request, scraper.log_path)
    started = datetime.now(timezone.utc)
    processes = [ingest, analytics, forwarder, scraper]
    try:
        for process in processes:
            process.start()
        client = IngestClient(ingest.url)
        first = started.replace(microsecond=0) - timedelta(minutes=10)
        for step in range(8):  # a batch a second, so the counters rise between scrapes
            moment = first + timedelta(minutes=step)
            batch = [to_wire(r) for r in readings_at(moment, pairs=3)]
            assert client.post_readings(batch).status_code == 200
            assert client.post_readings(batch[:2]).json()["duplicates"] == 2
            unpaired = to_wire(reading(vehicleId="TRUCK-7", kwhDeliveredDc=0.5, soc=50.0, batteryTemp=20.0,
                                       timestamp=moment.isoformat()))
            assert client.post_readings([unpaired]).json()["unpaired"] == 1
            assert client.post_readings([{**unpaired, "soc": 150}, batch[0]]).status_code == 207
            time.sleep(SCRAPE_SECONDS)
        wait_until(lambda: ingest.query("SELECT count(*) FROM outbox")[0][0] == 0, 30, "the forwarder drained")

        def scrapes() -> set[str]:
            rows = module_org.query(f'from(bucket: "{queries.MONITORING_BUCKET}") |> range(start: -1h) '
                                     f'|> filter(fn: (r) => r._measurement == "{queries.PROMETHEUS_MEASUREMENT}") '
                                     '|> keep(columns: ["url"]) |> group() |> distinct(column: "url")')
            return {row["_value"] for row in rows}

        wait_until(lambda: scrapes() >= {f"{ingest.url}/metrics", f"{analytics.url}/metrics"}, 30,
                   "telegraf wrote both services' metrics")
        time.sleep(3 * SCRAPE_SECONDS)  # a few scrapes after the last change: the newest values are settled
        yield {"ingest": ingest, "analytics": analytics, "started": started}
    finally:
        for process in reversed(processes):
            process.stop()


def ingest_health(org: Any, started: datetime) -> dict[tuple[int, str], list[Any]]:
    """Every Ingest health panel query, as the dashboard file holds it, over a range from before the
    services started until now; {(panel id, refId): tables}, shapes checked against the panel type."""
    stop = datetime.now(timezone.utc)
    span = GrafanaRange(started - timedelta(minutes=1), stop, 30)  # 30 s: the panels' min interval
    found: dict[tuple[Any, str], Any] = {}
    for query in panel_queries():
        if query.dashboard != "ingest-health.json" or query.panel is None:
            continue
        tables = run(org, span.interpolate(query.source))
        assert_panel_shape(query, tables)
        found[(query.panel["id"], query.where.rsplit(" ", 1)[1])] = tables
    return found


def series(tables: list[Any], label: str) -> dict[str, list[float]]:
    return {t.records[0].values[label]: [r.values["_value"] for r in t.records] for t in tables}


def one_value(tables: list[Any], column: str = "_value") -> Any:
    [table] = tables
    [record] = table.records
    return record.values[column]


def test_the_bundles_telegraf_conf_feeds_every_ingest_health_panel(scraped, module_org):
    panels = ingest_health(module_org, scraped["started"])

    accepted = series(panels[(5, "A")], "kind")
    assert set(accepted) == {"meter", "vehicle"} and all(max(v) > 0 for v in accepted.values()), accepted
    rejected = series(panels[(6, "A")], "reason")
    assert rejected and all(max(v) > 0 for v in rejected.values()), rejected
    [duplicates] = series(panels[(7, "A")], "_field").values()
    assert max(duplicates) > 0
    assert set(series(panels[(7, "B")], "kind")) == {"vehicle"}

    [depth] = series(panels[(8, "A")], "_field").values()
    assert min(depth) >= 0
    [capacity] = series(panels[(8, "B")], "_field").values()
    assert set(capacity) == {5_000_000.0}  # CHARGEWATCH_INFLUX__OUTBOX_MAX_ROWS' default
    [lag] = series(panels[(9, "A")], "_field").values()
    assert all(value >= 0 for value in lag)
    [shipped] = series(panels[(10, "A")], "_field").values()
    assert max(shipped) > 0
    assert panels[(10, "B")] == []  # no failed write

    assert one_value(panels[(1, "A")], "state") == "shipping"
    assert 0 <= one_value(panels[(2, "A")]) < 30
    assert one_value(panels[(3, "A")]) == 0


def test_the_bundles_telegraf_conf_refuses_to_start_without_a_token(tmp_path):
    binary = require_engine("telegraf")
    process = EngineProcess("telegraf", [str(binary), "--config", str(TELEGRAF_CONF), "--once"],
                            tmp_path / "telegraf.log", env={"PATH": "/usr/bin:/bin", "INFLUX_ORG": "o"}).start()
    assert process.wait(60) != 0
    assert "set INFLUX_TOKEN" in process.log_path.read_text()


# -- 2. Telegraf as a client of chargewatch's /api/v2/write ------------------------------------------

METER_COLUMNS = ("meter_id", "kwh_consumed_ac", "voltage", "time_ms")
VEHICLE_COLUMNS = ("vehicle_id", "soc", "kwh_delivered_dc", "battery_temp", "time_ms")


def csv_file(path: Path, columns: tuple[str, ...], readings: list[AnyReading]) -> Path:
    """The readings as CSV (floats in Python's shortest round-trip form, times in ms)."""
    rows = [",".join(columns)]
    for r in readings:
        rows.append(",".join(str(r.time_ms) if name == "time_ms" else
                             (repr(getattr(r, name)) if name != columns[0] else getattr(r, name)) for name in columns))
    path.write_text("\n".join(rows) + "\n")
    return path


def file_input(path: Path, measurement: str, columns: tuple[str, ...]) -> str:
    types = ", ".join(json.dumps(t) for t in ["string", *["float"] * (len(columns) - 2), "int"])
    return f"""
[[inputs.file]]
  files = [{json.dumps(str(path))}]
  data_format = "csv"
  csv_header_row_count = 1
  csv_column_types = [{types}]
  csv_tag_columns = [{json.dumps(columns[0])}]
  csv_timestamp_column = "time_ms"
  csv_timestamp_format = "unix_ms"
  name_override = "{measurement}"
"""


@pytest.fixture
def simulated_readings() -> list[AnyReading]:
    from simulator.devices import DeliveryFaults, FleetConfig, simulate

    end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    deliveries, truth = simulate(FleetConfig(pairs=4, seed=3), DeliveryFaults.none(), end - timedelta(minutes=30), end)
    return [generated.reading for generated in truth.readings]


def test_telegraf_writes_meter_and_vehicle_lines_through_the_v2_write_api_stored_exactly_once(
        request, tmp_path, simulated_readings):
    server = IngestServer(tmp_path / "chargewatch", free_port())
    server.data_dir.mkdir()
    meters = [r for r in simulated_readings if r.kind == "meter"]
    vehicles = [r for r in simulated_readings if r.kind == "vehicle"]
    sent = tmp_path / "sent.lp"
    config = tmp_path / "client.conf"
    # omit_hostname stays false: Telegraf adds a host tag, which chargewatch ignores. Batches of 50
    # make several write requests; the output gzips them (its default content_encoding). precision:
    # Telegraf otherwise rounds every timestamp to the second (README, "Sending readings").
    config.write_text(f"""
[agent]
  precision = "1ms"
  metric_batch_size = 50
  metric_buffer_limit = 10000
{file_input(csv_file(tmp_path / "meters.csv", METER_COLUMNS, meters), "meter", METER_COLUMNS)}
{file_input(csv_file(tmp_path / "vehicles.csv", VEHICLE_COLUMNS, vehicles), "vehicle", VEHICLE_COLUMNS)}
[[outputs.influxdb_v2]]
  urls = ["{server.url}"]
  token = "{WRITE_TOKEN}"
  organization = "fleet"
  bucket = "{queries.TELEMETRY_BUCKET}"

[[outputs.file]]
  files = [{json.dumps(str(sent))}]
  data_format = "influx"
""")
    try:
        server.start()
        for attempt in range(2):  # the second run resends everything, as a gateway retrying would
            process = telegraf(tmp_path, config, {}, name=f"telegraf-{attempt}")
            process.argv.append("--once")
            process.ready_url = None
            attach_log(request, process.log_path)
            assert process.start().wait(120) == 0, process.log_path.read_text()
            log = process.log_path.read_text()
            assert " E! " not in log, log
        lines = [line for line in sent.read_text().splitlines() if line]
        assert len(lines) == 2 * len(simulated_readings)  # what Telegraf sent: every reading, twice
        assert all(" host=" not in line and ",host=" in line for line in lines)

        # Exactly once, with the values sent (floats survive CSV, Telegraf and line protocol bit for bit),
        # and paired as ingest pairs them.
        meter_rows, vehicle_rows = server.rows("meter"), server.rows("vehicle")
        assert len(meter_rows) == len(meters) and len(vehicle_rows) == len(vehicles)
        assert {row[:5] for row in meter_rows} == {
            (r.meter_id, r.time_ms, r.meter_id.replace("METER_", "VEHICLE_"), r.kwh_consumed_ac, r.voltage)
            for r in meters}
        assert {row[:6] for row in vehicle_rows} == {
            (r.vehicle_id, r.time_ms, r.vehicle_id.replace("VEHICLE_", "METER_"), r.soc, r.kwh_delivered_dc,
             r.battery_temp) for r in vehicles}
    finally:
        server.stop()
