"""Fixtures of the live suite: real engines as processes on 127.0.0.1 (see tests/live/engines.py).

- ``influx``: one InfluxDB for the session: the one ``CHARGEWATCH_INFLUX__URL`` names, else an
  ``influxd`` started here. Tests isolate themselves with their own buckets (``scratch_buckets``).
- ``own_influxd``: a function-scoped ``influxd`` of the test's own, for tests that kill -9 it.
- ``alertmanager_factory``: real Alertmanagers started by the test (``webhook_receiver`` takes their
  notifications).
- Every engine's log is attached to the report of a test that fails while it ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.live.alertmanager import AlertmanagerServer, WebhookReceiver
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
