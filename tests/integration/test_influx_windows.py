"""InfluxWindowSource against the stand-in InfluxDB, for the two failures a real engine does not
produce on demand: a 500 (InfluxDB OSS answers it for an internal fault such as a storage engine
timeout) and an error table in the middle of a 200 answer (a Flux runtime error after the first
table streamed). Both must become StorageUnavailable, and 503 on the analytics routes.

Everything a real engine can show (windows and reports read back equal to the embedded store's,
params sent as ``extern``, 401, a missing bucket's 404, a stopped engine, 503 while InfluxDB is
down, the runner in influx mode) is in tests/live/test_influx_windows_live.py.
"""

from __future__ import annotations

from typing import Any

import pytest

import analytics
from chargewatch.settings import Settings
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.influx_windows import InfluxWindowSource
from chargewatch.stores.sqlite import SqliteReadingStore
from tests.influx_standin import InfluxStandin, error_table

pytest.importorskip("influxdb_client")

W = 300_000
HOUR = 3_600_000
T0 = 1_795_413_600_000  # 2026-11-23T06:00:00Z


@pytest.fixture
def standin():
    with InfluxStandin() as server:
        yield server


@pytest.fixture
def local(tmp_path):
    """The influx-mode local file: alerts and runner state, no windows at all."""
    readings = SqliteReadingStore(tmp_path / "local.db", synchronous="normal")
    yield readings
    readings.close()


def influx_settings(tmp_path, standin: InfluxStandin, **influx: Any) -> Settings:
    return Settings(data_dir=tmp_path / "influx", store="influx", sqlite={"synchronous": "normal"},
                    auth={"enabled": False}, influx={"url": standin.url, "token": standin.token, "org": standin.org,
                                                     "request_timeout_seconds": 2, **influx})


FAILURES = {
    "500": lambda standin: standin.outage("500"),
    "error table": lambda standin: standin.add_route("POST", "/api/v2/query", lambda request: error_table(
        "runtime error @12:8-12:67: pivot: schema collision detected")),
}


@pytest.mark.parametrize("failure, message", [("500", "answered 500"), ("error table", "schema collision")])
def test_influxdb_failures_become_storage_unavailable(tmp_path, standin, failure, message) -> None:
    store = InfluxWindowSource.from_settings(influx_settings(tmp_path, standin))
    FAILURES[failure](standin)
    try:
        with pytest.raises(StorageUnavailable, match=message):
            store.windows(W, T0, T0 + HOUR, "EV-101")
        with pytest.raises(StorageUnavailable, match=message):
            store.vehicle_totals(W, T0, T0 + HOUR)
    finally:
        store.close()


@pytest.mark.parametrize("failure", FAILURES)
def test_the_analytics_routes_answer_503_while_influxdb_fails(tmp_path, standin, local, failure) -> None:
    client = analytics.create_app(influx_settings(tmp_path, standin), local).test_client()
    FAILURES[failure](standin)
    for path in ["/v1/analytics/performance/EV-101", "/v1/analytics/fleet/summary", "/v1/analytics/efficiency/EV-101"]:
        response = client.get(f"{path}?start=2026-11-23T06:00:00Z&stop=2026-11-23T07:00:00Z")
        assert response.status_code == 503, path
        assert set(response.get_json()) >= {"error", "message"}
    assert client.get("/v1/analytics/alerts").status_code == 200  # alerts live in the local file
