"""The simulator's sender against a scripted HTTP server on 127.0.0.1: retries, backoff, counting."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from simulator.devices import DeliveryFaults, FleetConfig, simulate
from simulator.sender import Sender, SendRefused
from tests.e2e.harness import free_port

START = datetime(2026, 11, 23, 5, 0, tzinfo=timezone.utc)


class ScriptedIngest(ThreadingHTTPServer):
    """Answers each POST with the next scripted (status, headers, body); 200 'all accepted' when the script is done."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: deque[tuple[int, dict[str, str], dict]] = deque()
        self.requests: list[tuple[dict[str, str], object]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedIngest
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((dict(self.headers), body))
        count = len(body) if isinstance(body, list) else 1
        if self.server.script:
            status, headers, payload = self.server.script.popleft()
        else:
            status, headers, payload = 200, {}, {"accepted": count, "stored": count, "duplicates": 0,
                                                 "unpaired": 0, "rejected": []}
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ingest() -> Iterator[ScriptedIngest]:
    server = ScriptedIngest()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


class SleepLog:
    """Records the backoff the sender asks for instead of waiting it out."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture
def readings():
    deliveries, _ = simulate(FleetConfig(pairs=2), DeliveryFaults.none(), START, START + timedelta(minutes=3))
    return [d.reading for d in deliveries]


@pytest.fixture
def sleeps() -> SleepLog:
    return SleepLog()


@pytest.fixture
def sender_for(sleeps: SleepLog) -> Iterator:
    senders = []

    def make(url: str, **kwargs) -> Sender:
        sender = Sender(url, "w-token", sleep=sleeps, **kwargs)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


def _error(code: str, details: list | None = None) -> dict:
    return {"error": code, "message": code.replace("_", " "), "details": details or []}


def test_a_reading_is_posted_as_one_json_object_with_the_write_token(ingest, sender_for, readings) -> None:
    sender = sender_for(ingest.url)
    sender.send_one(readings[0])
    headers, body = ingest.requests[0]
    assert headers["Authorization"] == "Token w-token"
    assert headers["Content-Type"] == "application/json"
    assert isinstance(body, dict) and (body.get("vehicleId") or body.get("meterId"))
    assert sender.stats.accepted == 1 and sender.stats.requests == 1


def test_a_list_is_posted_as_one_request(ingest, sender_for, readings) -> None:
    sender = sender_for(ingest.url)
    sender.send_many(readings)
    assert len(ingest.requests) == 1 and len(ingest.requests[0][1]) == len(readings) == 12
    assert (sender.stats.sent, sender.stats.accepted, sender.stats.stored) == (12, 12, 12)


def test_503_is_retried_after_the_seconds_retry_after_names(ingest, sender_for, sleeps, readings) -> None:
    ingest.script.append((503, {"Retry-After": "2"}, _error("storage_unavailable")))
    sender = sender_for(ingest.url)
    sender.send_many(readings)
    assert len(ingest.requests) == 2 and ingest.requests[0][1] == ingest.requests[1][1]
    assert sleeps.seconds == [2.0]
    stats = sender.stats
    assert (stats.retried, stats.accepted, stats.failed, stats.rejected) == (1, 12, 0, 0)


def test_429_without_retry_after_backs_off_exponentially(ingest, sender_for, sleeps, readings) -> None:
    ingest.script.extend([(429, {}, _error("too_many_requests"))] * 3)
    sender = sender_for(ingest.url, backoff_seconds=1.0)
    sender.send_one(readings[0])
    assert len(sleeps.seconds) == 3
    for attempt, seconds in enumerate(sleeps.seconds):
        assert 0.5 * 2**attempt <= seconds <= 2**attempt  # base * 2^n with jitter in [0.5, 1]
    assert sender.stats.retried == 3 and sender.stats.accepted == 1


def test_a_retry_after_date_is_honoured(ingest, sender_for, sleeps, readings) -> None:
    ingest.script.append((503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, _error("storage_unavailable")))
    sender_for(ingest.url).send_one(readings[0])
    assert sleeps.seconds == [0.0]  # a date in the past: retry at once


def test_giving_up_after_max_attempts_counts_the_readings_as_failed(ingest, sender_for, sleeps, readings) -> None:
    ingest.script.extend([(503, {"Retry-After": "1"}, _error("storage_unavailable"))] * 5)
    sender = sender_for(ingest.url, max_attempts=3)
    sender.send_many(readings[:4])
    stats = sender.stats
    assert (stats.requests, stats.retried, stats.failed, stats.accepted) == (3, 2, 4, 0)
    assert "gave up after 3 attempts" in stats.errors[0]


@pytest.mark.parametrize("status", [400, 413, 415])
def test_other_4xx_answers_are_never_retried(ingest, sender_for, sleeps, readings, status: int) -> None:
    ingest.script.append((status, {}, _error("bad_request")))
    sender = sender_for(ingest.url)
    sender.send_many(readings[:5])
    assert len(ingest.requests) == 1 and sleeps.seconds == []
    assert (sender.stats.rejected, sender.stats.retried) == (5, 0)


def test_422_counts_each_refused_reading(ingest, sender_for, readings) -> None:
    details = [{"index": i, "errors": [{"field": "soc", "message": "too high", "type": "x"}]} for i in range(3)]
    ingest.script.append((422, {}, _error("invalid_readings", details)))
    sender = sender_for(ingest.url)
    sender.send_many(readings[:3])
    assert sender.stats.rejected == 3 and len(ingest.requests) == 1
    assert "soc" in sender.stats.errors[0]


def test_207_counts_accepted_duplicates_and_rejected(ingest, sender_for, readings) -> None:
    ingest.script.append((207, {}, {"accepted": 4, "stored": 3, "duplicates": 1, "unpaired": 0,
                                    "rejected": [{"index": 2, "errors": []}]}))
    sender = sender_for(ingest.url)
    sender.send_many(readings[:5])
    stats = sender.stats
    assert (stats.accepted, stats.stored, stats.duplicates, stats.rejected) == (4, 3, 1, 1)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_stops_the_run(ingest, sender_for, readings, status: int) -> None:
    ingest.script.append((status, {}, _error("unauthorized")))
    with pytest.raises(SendRefused, match=str(status)):
        sender_for(ingest.url).send_one(readings[0])
    assert len(ingest.requests) == 1


def test_connection_errors_are_retried_then_given_up(sender_for, sleeps, readings) -> None:
    sender = sender_for(f"http://127.0.0.1:{free_port()}", max_attempts=4, backoff_seconds=0.25)
    sender.send_one(readings[0])
    stats = sender.stats
    assert (stats.requests, stats.retried, stats.failed) == (4, 3, 1)
    assert len(sleeps.seconds) == 3 and "ConnectionError" in stats.errors[0]


def test_counts_add_up_across_threads(ingest, sender_for, readings) -> None:
    sender = sender_for(ingest.url)
    threads = [threading.Thread(target=lambda: [sender.send_one(r) for r in readings]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sender.stats.sent == sender.stats.accepted == len(ingest.requests) == 4 * len(readings)
