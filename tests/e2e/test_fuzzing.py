"""Property-based fuzzing of the real service: no input yields a 5xx or stores an invalid value."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargewatch.readings import DEVICE_ID, DEVICE_ID_PATTERN
from tests.e2e.harness import WRITE_TOKEN, IngestServer

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NOW = datetime.now(timezone.utc)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
    st.sampled_from([0, 0.5, 1.25, 99.9, 100, 230.0, -0.0, 1e308]), st.booleans(), st.none(),
    st.sampled_from(["NaN", "nan", "Infinity", "-inf", "1.5", "1e400", "", "0x10"]),
)
device_ids = st.one_of(
    st.from_regex(DEVICE_ID_PATTERN, fullmatch=True), st.text(max_size=80),
    st.sampled_from(["METER_001", "VEHICLE_001", "a b", "a,b", 'a"b', "a=b", "a\nb", "a\\", "x" * 65]),
)
timestamps = st.one_of(
    st.datetimes(min_value=datetime(1969, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc))
    .map(lambda d: d.isoformat()),
    st.datetimes(min_value=(NOW - timedelta(days=40)).replace(tzinfo=None),
                 max_value=(NOW + timedelta(minutes=10)).replace(tzinfo=None),
                 timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-5))])).map(lambda d: d.isoformat()),
    st.text(max_size=30), st.integers(), st.none(), st.sampled_from(["2026-11-23T06:00:00"]),
)
field_values = {
    "meterId": device_ids, "vehicleId": device_ids, "kwhConsumedAc": numbers, "kwhDeliveredDc": numbers,
    "voltage": numbers, "soc": numbers, "batteryTemp": numbers, "timestamp": timestamps,
}
readings = st.fixed_dictionaries({}, optional={**field_values, "extra": st.text(max_size=10)})
bodies = st.one_of(readings, st.lists(readings, max_size=20), st.lists(numbers, max_size=3), st.text(max_size=50))


def _post_json(server: IngestServer, body: object) -> requests.Response:
    return requests.post(server.url + "/v1/ingest", data=json.dumps(body, allow_nan=True),
                         headers={"Authorization": f"Token {WRITE_TOKEN}", "Content-Type": "application/json"},
                         timeout=30)


def assert_only_valid_values_stored(server: IngestServer) -> None:
    pattern = DEVICE_ID  # fullmatch: Python's $ would let a trailing newline through
    horizon_ms = int((datetime.now(timezone.utc) + timedelta(minutes=6)).timestamp() * 1000)
    for row in server.rows("meter"):
        meter_id, time_ms, _, kwh, voltage, _ = row
        assert pattern.fullmatch(meter_id) and time_ms < horizon_ms
        assert math.isfinite(kwh) and 0 <= kwh <= 10 and math.isfinite(voltage) and 0 <= voltage <= 1000
    for row in server.rows("vehicle"):
        vehicle_id, time_ms, _, soc, kwh, temp, _ = row
        assert pattern.fullmatch(vehicle_id) and time_ms < horizon_ms
        assert 0 <= soc <= 100 and 0 <= kwh <= 10 and -40 <= temp <= 120
        assert all(math.isfinite(v) for v in (soc, kwh, temp))


@pytest.mark.slow
@FUZZ
@given(body=bodies)
def test_fuzzed_json_never_yields_a_5xx(server: IngestServer, body: object) -> None:
    response = _post_json(server, body)
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 207, 400, 422)
    assert "error" in response.json() or "accepted" in response.json()


lp_values = st.one_of(
    st.floats().map(repr), st.integers().map(lambda i: f"{i}i"), st.sampled_from(["t", "false", '"x"', "NaN", "1e400"]),
    st.text(alphabet=" ,=\\\"'abc019.-", max_size=8),
)
lp_lines = st.builds(
    lambda measurement, tag_key, tag_value, fields, ts: f"{measurement},{tag_key}={tag_value} {fields}{ts}",
    st.sampled_from(["meter", "vehicle", "other", "me ter", "meter\\,x"]),
    st.sampled_from(["meter_id", "vehicle_id", "host", "_field"]),
    device_ids.map(lambda s: s.replace("\n", "")),
    st.lists(st.tuples(st.sampled_from(["kwh_consumed_ac", "voltage", "soc", "kwh_delivered_dc", "battery_temp", "x"]),
                       lp_values), min_size=0, max_size=4).map(lambda fs: ",".join(f"{k}={v}" for k, v in fs)),
    st.one_of(st.just(""), st.integers(0, 2**63).map(lambda t: f" {t}"),
              st.just(f" {int(NOW.timestamp() * 1e9) - 60_000_000_000}"), st.text(max_size=5).map(lambda s: " " + s)),
)
lp_bodies = st.one_of(st.lists(lp_lines, min_size=1, max_size=10).map("\n".join), st.text(max_size=200))


@pytest.mark.slow
@FUZZ
@given(body=lp_bodies, precision=st.sampled_from(["ns", "us", "ms", "s"]))
def test_fuzzed_line_protocol_never_yields_a_5xx(server: IngestServer, body: str, precision: str) -> None:
    response = requests.post(
        server.url + "/api/v2/write", params={"org": "fleet", "bucket": "telemetry", "precision": precision},
        data=body.encode("utf-8", "surrogatepass"), headers={"Authorization": f"Token {WRITE_TOKEN}"}, timeout=30,
    )
    assert response.status_code in (204, 400, 422), response.text


def test_nothing_invalid_was_stored_by_the_fuzzers(server: IngestServer) -> None:
    # Runs after the fuzzers in this module (pytest keeps file order) on the same server.
    assert_only_valid_values_stored(server)
