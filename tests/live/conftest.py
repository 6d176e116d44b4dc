"""Fixtures of the live suite: real engines as processes on 127.0.0.1 (see tests/live/engines.py).

- ``influx``: one InfluxDB for the session: the one ``CHARGEWATCH_INFLUX__URL`` names, else an
  ``influxd`` started here. Tests isolate themselves with their own buckets (``scratch_buckets``).
- ``own_influxd``: a function-scoped ``influxd`` of the test's own, for tests that kill -9 it.
- ``alertmanager_factory``: real Alertmanagers started by the test (``webhook_receiver`` takes their
  notifications).
- Every engine's log is attached to the report of a test that fails while it ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.live.alertmanager import AlertmanagerServer, WebhookReceiver
from tests.live.engines import ExternalInflux, InfluxApi, Influxd, external_influx, log_tail

# (ingest, forwarder) on a test's own influxd: the forwarder tests and the outbox tests share it.
from tests.live.test_forwarder_live import running as running

_LOGS_KEY = pytest.StashKey[list[Path]]()


def attach_log(request: pytest.FixtureRequest, path: Path) -> None:
    """Show the tail of ``path`` in the report if the requesting test fails."""
    request.node.stash.setdefault(_LOGS_KEY, []).append(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
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


@pytest.fixture
def scratch_org(influx: Influxd | ExternalInflux, scratch_prefix: str) -> Iterator[str]:
    """An organization of this test's own (deleted afterwards, with its buckets and tasks)."""
    org_id = influx.api("POST", "/api/v2/orgs", json={"name": scratch_prefix})["id"]
    try:
        yield scratch_prefix
    finally:
        influx.api("DELETE", f"/api/v2/orgs/{org_id}")


def chargewatch_env(influx: Influxd | ExternalInflux | ScratchOrg, org: str, **overrides: str) -> dict[str, str]:
    """The environment of a chargewatch process in influx mode pointed at ``influx``/``org``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")}
    env.update({"CHARGEWATCH_STORE": "influx", "CHARGEWATCH_INFLUX__URL": influx.url,
                "CHARGEWATCH_INFLUX__TOKEN": influx.token, "CHARGEWATCH_INFLUX__ORG": org,
                "CHARGEWATCH_LOG_LEVEL": "WARNING"})
    env.update(overrides)
    return env


def run_chargewatch(env: dict[str, str], *args: str, timeout_seconds: float = 120) -> subprocess.CompletedProcess:
    """``chargewatch ARGS`` as a real process; its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "chargewatch", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_seconds)


@dataclass
class ScratchOrg(InfluxApi):
    """The session's InfluxDB seen through an organization of one test module's own: its buckets can
    have the names the shipped files hardcode (``telemetry``, ``efficiency``, ``monitoring``)."""

    url: str
    token: str
    org: str
    org_id: str


@pytest.fixture(scope="module")
def module_org(_session_influx: Influxd | ExternalInflux) -> Iterator[ScratchOrg]:
    """An organization created for this module (``POST /api/v2/orgs``), deleted with its buckets and
    tasks afterwards. Request ``influx`` too, so a failing test shows the engine's log."""
    name = f"cw_org_{uuid.uuid4().hex[:10]}"
    created = _session_influx.api("POST", "/api/v2/orgs", json={"name": name})
    org = ScratchOrg(_session_influx.url, _session_influx.token, name, created["id"])
    try:
        yield org
    finally:
        _session_influx.api("DELETE", f"/api/v2/orgs/{org.org_id}")


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """An HTTP receiver on 127.0.0.1 for Alertmanager's webhook notifications."""
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def alertmanager_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., AlertmanagerServer]]:
    """Builds real Alertmanagers on 127.0.0.1 (``start=False``: not started yet); stops them all at the end."""
    servers: list[AlertmanagerServer] = []

    def build(config_text: str | None = None, *, config_path: Path | None = None, port: int | None = None,
              start: bool = True) -> AlertmanagerServer:
        server = AlertmanagerServer(tmp_path / f"alertmanager-{len(servers)}", config_text, config_path)
        if port is not None:
            server.port = port
        servers.append(server)
        attach_log(request, server.log_path)
        return server.start() if start else server

    try:
        yield build
    finally:
        for server in servers:
            server.stop()
