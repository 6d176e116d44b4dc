"""Property-based fuzzing of both services' whole OpenAPI surface, as served: schemathesis reads each
service's ``/openapi.json`` from the real gunicorn process and sends generated requests (valid and
invalid ones) to every operation; hypothesis sends arbitrary path parameters to every route that has
one. No request may get a 5xx, and nothing invalid may end up in the store.

Bounded: ``MAX_EXAMPLES`` per operation, a 30 s timeout per request."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from chargewatch.readings import DEVICE_ID
from tests.e2e.harness import READ_TOKEN, WRITE_TOKEN, IngestServer, free_port
from tests.e2e.test_fuzzing import assert_only_valid_values_stored

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20
BOUNDED = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, IngestServer]]:
    data_dir = tmp_path_factory.mktemp("openapi-fuzz")
    ingest = IngestServer(data_dir, free_port()).start()
    analytics = IngestServer(data_dir, free_port(), service="analytics")
    try:
        analytics.start()
        yield {"ingest": ingest, "analytics": analytics}
    finally:
        analytics.stop()
        ingest.stop()


def _token(method: str) -> str:
    return READ_TOKEN if method.upper() in ("GET", "HEAD") else WRITE_TOKEN


def fuzz_every_operation(server: IngestServer) -> list[str]:
    """Generated requests, valid and invalid, for every operation in the served document.

    Uses schemathesis' strategies under hypothesis directly (its pytest plugin does not run on
    pytest 9); returns the operations fuzzed."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", timeout=30)
    fuzzed = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        strategy = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                             operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

        @BOUNDED
        @given(case=strategy)
        def call(case) -> None:
            case.call_and_validate(base_url=server.url, checks=[not_a_server_error], timeout=30,
                                   headers={"Authorization": f"Token {_token(case.method)}"})

        call()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    return fuzzed


def test_no_ingest_operation_answers_a_5xx(services) -> None:
    fuzzed = fuzz_every_operation(services["ingest"])
    assert {"POST /v1/ingest", "POST /api/v2/write", "PUT /v1/pairings/{vehicleId}", "GET /metrics"} <= set(fuzzed)


def test_no_analytics_operation_answers_a_5xx(services) -> None:
    fuzzed = fuzz_every_operation(services["analytics"])
    assert {"GET /v1/analytics/performance/{vehicleId}", "GET /v1/analytics/fleet/summary"} <= set(fuzzed)


# -- path parameters, beyond what the documents' patterns generate ---------------------------------

PATH_ROUTES = [
    ("ingest", "GET", "/v1/ingest/meter/{}/current"), ("ingest", "GET", "/v1/ingest/vehicle/{}/current"),
    ("ingest", "GET", "/v1/pairings/{}"), ("ingest", "PUT", "/v1/pairings/{}"),
    ("ingest", "DELETE", "/v1/pairings/{}"),
    ("analytics", "GET", "/v1/analytics/performance/{}"), ("analytics", "GET", "/v1/analytics/efficiency/{}"),
]
path_ids = st.one_of(
    st.text(max_size=80), st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True).map(lambda i: i + "\n"),
    st.sampled_from(["VEHICLE_606\n", "VEHICLE_606\r\n", "VEHICLE_606 ", "x" * 65, "..", "%00", "a/b", "é"]),
)


@settings(BOUNDED, max_examples=150)
@given(route=st.sampled_from(PATH_ROUTES), raw_id=path_ids)
def test_any_path_parameter_gets_a_4xx_or_is_a_valid_id(services, route, raw_id: str) -> None:
    service, method, template = route
    quoted = urllib.parse.quote(raw_id, safe="")
    if not quoted:
        return  # an empty path segment is another route (or a 404)
    response = requests.request(method, services[service].url + template.format(quoted), timeout=30,
                                headers={"Authorization": f"Token {_token(method)}"},
                                json={"meterId": "METER_FUZZ"} if method == "PUT" else None)
    assert response.status_code < 500, response.text
    if response.status_code < 300:
        assert DEVICE_ID.fullmatch(raw_id), (raw_id, response.status_code)


def test_nothing_invalid_was_stored(services) -> None:
    ingest = services["ingest"]
    assert_only_valid_values_stored(ingest)
    read = {"Authorization": f"Token {READ_TOKEN}"}
    pairings = requests.get(ingest.url + "/v1/pairings", headers=read, timeout=30).json()["pairings"]
    for pairing in pairings:
        assert DEVICE_ID.fullmatch(pairing["vehicleId"]) and DEVICE_ID.fullmatch(pairing["meterId"]), pairing
    cursor: str | None = ""
    while cursor is not None:
        params: dict[str, str | int] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = requests.get(ingest.url + "/v1/ingest/devices", headers=read, timeout=30, params=params).json()
        for device in page["devices"]:
            assert DEVICE_ID.fullmatch(device["deviceId"]), device
        cursor = page.get("nextCursor")
