"""chargewatch's ``/api/v2/write`` beside a real InfluxDB 2.7's: the same bodies, headers and parameters
sent to both, and the status and InfluxDB ``code`` compared, so that Telegraf and the InfluxDB client
libraries see what they expect. Where chargewatch answers otherwise on purpose, the case says why
(the README's list of differences carries the same reasons)."""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass, field

import pytest
import requests

from tests.e2e.harness import WRITE_TOKEN, IngestServer, free_port

pytestmark = pytest.mark.influx

NOW_S = int(time.time()) - 60


def meter(n: int, at_s: int = NOW_S) -> str:
    return f"meter,meter_id=MTR-{n} kwh_consumed_ac=1.25,voltage=230.5 {at_s}"


@dataclass
class Case:
    name: str
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    token: bool = True
    # (chargewatch's status, its code) where it differs from InfluxDB on purpose, and why.
    differs: tuple[int, str, str] | None = None


CASES = [
    Case("one good line", meter(1).encode()),
    Case("many good lines", "\n".join(meter(n) for n in range(2, 50)).encode()),
    Case("curl's default content type", meter(60).encode(),
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("text/plain", meter(61).encode(), headers={"Content-Type": "text/plain; charset=utf-8"}),
    Case("gzip", gzip.compress(meter(62).encode()), headers={"Content-Encoding": "gzip"}),
    Case("precision ns", meter(63, NOW_S * 10**9).encode(), params={"precision": "ns"}),
    Case("precision us", meter(64, NOW_S * 10**6).encode(), params={"precision": "us"}),
    Case("precision ms", meter(65, NOW_S * 10**3).encode(), params={"precision": "ms"}),
    Case("precision s", meter(66).encode(), params={"precision": "s"}),
    Case("an unknown precision", meter(67).encode(), params={"precision": "h"}),
    Case("every line malformed", b"meter,meter_id=MTR-70 kwh_consumed_ac=\nnot line protocol"),
    Case("one malformed line among good ones", (meter(71) + "\nmeter,meter_id=MTR-72 kwh_consumed_ac=abc").encode(),
         differs=(422, "unprocessable entity",
                  "InfluxDB refuses the whole body (400) and stores nothing; chargewatch stores the valid "
                  "lines and answers 422 partial write naming the bad one, so a client that drops a "
                  "refused batch loses only the bad line")),
    Case("a bucket that does not exist", meter(73).encode(), params={"bucket": "nope"}),
    Case("no token", meter(74).encode(), token=False),
    Case("no org", meter(75).encode(), params={"org": ""},
         differs=(204, "", "chargewatch has one organization and ignores org, so a client configured "
                  "without one still delivers")),
    Case("a corrupt gzip body", b"not gzip at all", headers={"Content-Encoding": "gzip"},
         differs=(400, "invalid", "InfluxDB answers 500 internal error: it is the client's body, so a 4xx "
                  "tells the client not to retry it")),
    Case("an empty body", b""),
]


@pytest.fixture(scope="module")
def endpoints(_session_influx, tmp_path_factory):
    """(InfluxDB, chargewatch) as (url, org, token), each with a bucket ``telemetry``."""
    influx = _session_influx
    org = f"cw_compat_{int(time.time() * 1000)}"
    org_id = influx.api("POST", "/api/v2/orgs", json={"name": org})["id"]
    influx.api("POST", "/api/v2/buckets", json={"orgID": org_id, "name": "telemetry", "retentionRules": []})
    server = IngestServer(tmp_path_factory.mktemp("compat"), free_port())
    server.start()
    try:
        yield (influx.url, org, influx.token), (server.url, "any-org", WRITE_TOKEN)
    finally:
        server.stop()
        influx.api("DELETE", f"/api/v2/orgs/{org_id}")


def send(endpoint: tuple[str, str, str], case: Case) -> tuple[int, str]:
    url, org, token = endpoint
    params = {"org": org, "bucket": "telemetry", "precision": "s", **case.params}
    params = {k: v for k, v in params.items() if v}
    headers = {**({"Authorization": f"Token {token}"} if case.token else {}), **case.headers}
    response = requests.post(f"{url}/api/v2/write", params=params, headers=headers, data=case.body, timeout=30)
    code = response.json().get("code", "") if response.content else ""
    return response.status_code, code


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_write_answers_like_influxdb(endpoints, case):
    influx_endpoint, chargewatch_endpoint = endpoints
    influx_answer = send(influx_endpoint, case)
    chargewatch_answer = send(chargewatch_endpoint, case)

    if case.differs is None:
        assert chargewatch_answer == influx_answer
    else:
        status, code, reason = case.differs
        assert chargewatch_answer == (status, code), reason
        assert influx_answer != chargewatch_answer, (
            f"InfluxDB now answers like chargewatch: drop the difference ({reason})")
