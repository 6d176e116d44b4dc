"""Fixtures of the live suite: real engines as processes on 127.0.0.1 (see tests/live/engines.py).

- ``influx``: one InfluxDB for the session: the one ``CHARGEWATCH_INFLUX__URL`` names, else an
  ``influxd`` started here. Tests isolate themselves with their own buckets (``scratch_buckets``).
- ``own_influxd``: a function-scoped ``influxd`` of the test's own, for tests that kill -9 it.
- Every engine's log is attached to the report of a test that fails while it ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.engines import ExternalInflux, Influxd, external_influx, log_tail

_LOGS_KEY = pytest.StashKey[list[Path]]()


def attach_log(request: pytest.FixtureRequest, path: Path) -> None:
    """Show the tail of ``path`` in the report if the requesting test fails."""
    request.node.stash.setdefault(_LOGS_KEY, []).append(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for path in item.stash.get(_LOGS_KEY, []):
            report.sections.append((f"engine log {path}", log_tail(path)))


@pytest.fixture(scope="session")
def _session_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd | ExternalInflux]:
    external = external_influx()
    if external is not None:
        yield external
        return
    server = Influxd(tmp_path_factory.mktemp("influxd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx(request: pytest.FixtureRequest, _session_influx: Influxd | ExternalInflux) -> Influxd | ExternalInflux:
    if isinstance(_session_influx, Influxd):
        attach_log(request, _session_influx.log_path)
    return _session_influx


@pytest.fixture
def own_influxd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Influxd]:
    """An influxd of this test's own, which it may kill -9 and restart."""
    server = Influxd(tmp_path / "influxd")
    attach_log(request, server.log_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def scratch_prefix() -> str:
    """A unique prefix for this test's buckets and tasks."""
    return f"cw_{uuid.uuid4().hex[:10]}"


# -- a scratch organization per test module (tests/live/test_grafana_queries_live.py, test_telegraf_live.py)

from dataclasses import dataclass  # noqa: E402 (appended section: keeps merges with the fixtures above easy)

from tests.live.engines import InfluxApi  # noqa: E402


@dataclass
class ScratchOrg(InfluxApi):
    """The session's InfluxDB seen through an organization of one test module's own: its buckets can
    have the names the shipped files hardcode (``telemetry``, ``efficiency``, ``monitoring``)."""

    url: str
    token: str
    org: str
    org_id: str


@pytest.fixture(scope="module")
def scratch_org(_session_influx: Influxd | ExternalInflux) -> Iterator[ScratchOrg]:
    """An organization created for this module (``POST /api/v2/orgs``), deleted with its buckets and
    tasks afterwards. Request ``influx`` too, so a failing test shows the engine's log."""
    name = f"cw_org_{uuid.uuid4().hex[:10]}"
    created = _session_influx.api("POST", "/api/v2/orgs", json={"name": name})
    org = ScratchOrg(_session_influx.url, _session_influx.token, name, created["id"])
    try:
        yield org
    finally:
        _session_influx.api("DELETE", f"/api/v2/orgs/{org.org_id}")
