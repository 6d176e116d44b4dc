"""Clients that send slowly, stall, or are refused early must not starve the fleet (the real
gunicorn worker of webapi/worker.py, over raw sockets on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import requests

from chargewatch.readings import MeterReading, to_wire
from tests.e2e.harness import WRITE_TOKEN, IngestServer, free_port

REQUEST_TIMEOUT_SECONDS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestServer]:
    server = IngestServer(tmp_path_factory.mktemp("slow"), free_port(), {
        "CHARGEWATCH_INGEST__REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_SECONDS)}).start()
    yield server
    server.stop()


def reading(n: int) -> dict:
    at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    return to_wire(MeterReading(meter_id=f"METER_S{n}", kwh_consumed_ac=1.0, voltage=230, timestamp=at))


def open_stalled(server: IngestServer, token: str | None, sent: bytes = b'[{"meterId"',
                 length: int = 1000) -> socket.socket:
    """A connection whose headers promise ``length`` body bytes, of which it sends only ``sent``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    auth = f"Authorization: Token {token}\r\n" if token else ""
    sock.sendall((f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                  f"Content-Length: {length}\r\n\r\n").encode() + sent)
    return sock


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Everything until the server closes: (head, body). Closes the socket."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def serve_normal_clients(server: IngestServer, count: int) -> list[int]:
    statuses = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Token {WRITE_TOKEN}"
        for n in range(count):
            statuses.append(session.post(server.url + "/v1/ingest", json=reading(n), timeout=5).status_code)
            statuses.append(requests.get(server.url + "/health", timeout=5).status_code)
    return statuses


@pytest.mark.parametrize("token", [WRITE_TOKEN, None], ids=["stalled-body", "no-token"])
def test_normal_clients_are_served_while_50_connections_stall(server: IngestServer, token: str | None) -> None:
    stalled = [open_stalled(server, token) for _ in range(50)]
    try:
        time.sleep(0.5)  # every stalled request has reached the server
        assert serve_normal_clients(server, 20) == [200] * 40
    finally:
        for sock in stalled:
            sock.close()


def test_a_request_refused_before_its_body_is_read_is_answered_and_closed(server: IngestServer) -> None:
    # Past the worker's pre-buffer the route sees the request, refuses it, and must not drain the
    # other 9.9 MB (nor keep the connection for them).
    sock = open_stalled(server, None, sent=b" " * 70_000, length=10_000_000)
    head, body = read_response(sock)  # returns only because the server closes the connection
    assert head.startswith(b"HTTP/1.1 401")
    assert b"Connection: close" in head
    assert json.loads(body)["error"] == "unauthorized"


@pytest.mark.parametrize("sent,length", [(b"", 100), (b'[{"meterId"', 1000), (b" " * 100_000, 200_000)],
                         ids=["no-body", "part-of-a-small-body", "part-of-a-body-past-the-pre-buffer"])
def test_a_body_that_does_not_arrive_in_time_is_answered_408(server: IngestServer, sent: bytes, length: int) -> None:
    before = server.total_rows()
    sock = open_stalled(server, WRITE_TOKEN, sent=sent, length=length)
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["error"] == "request_timeout"
    assert server.total_rows() == before


def test_headers_that_do_not_arrive_in_time_are_answered_408(server: IngestServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"] == "request_timeout"


def test_a_client_waiting_for_100_continue_gets_it_and_is_served(server: IngestServer) -> None:
    payload = json.dumps(reading(900)).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall((f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Authorization: Token {WRITE_TOKEN}\r\nExpect: 100-continue\r\nConnection: close\r\n"
                  f"Content-Length: {len(payload)}\r\n\r\n").encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
    sock.sendall(payload)
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["stored"] == 1


def test_chunked_and_kept_alive_requests_are_served(server: IngestServer) -> None:
    with requests.Session() as session:
        session.headers.update({"Authorization": f"Token {WRITE_TOKEN}", "Content-Type": "application/json"})
        for n in range(5):
            body = iter([b"[", json.dumps(reading(1000 + n)).encode(), b"]"])  # sent chunked
            assert session.post(server.url + "/v1/ingest", data=body, timeout=10).status_code == 200


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /health?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(120)) + b"\r\n", 431),
])
def test_gunicorns_own_refusals_have_the_json_error_shape(server: IngestServer, request_bytes: bytes,
                                                          status: int) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(request_bytes)
    head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 %d" % status), head
    assert b"Content-Type: application/json" in head
    error = json.loads(body)
    assert set(error) == {"error", "message", "details"} and error["message"]
