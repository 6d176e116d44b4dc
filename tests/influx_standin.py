"""A stand-in InfluxDB 2.7 HTTP server for tests and benchmarks: real sockets on 127.0.0.1, the
status codes and error bodies InfluxDB OSS 2.7 produces (../shared/reference/influx-grafana-facts.md,
section 1), and points kept the way InfluxDB keeps them (one per series + time, rewrites overwrite).

One class, one route table: ``InfluxStandin.routes`` maps ``(METHOD, "/api/v2/path/{param}")`` to a
handler ``(StandinRequest) -> StandinResponse``; add or replace routes with ``add_route`` or the
``@standin.route("GET", "/api/v2/buckets")`` decorator. Built in: ``POST /api/v2/write``,
``GET /health``, ``GET /ping``. Unknown paths get InfluxDB's 404 body.

Switches (thread-safe, flip them while clients run):

- ``outage("refuse")``: the port stops accepting, open connections are cut (InfluxDB restarting);
  ``outage("hang")``: requests are read but not answered until ``recover()``, then processed
  normally (a client that timed out meanwhile has its points written anyway, as with a slow
  InfluxDB); ``outage("500")``; ``outage("503", retry_after=2)`` and ``outage("429", ...)`` (Cloud).
  ``recover()`` ends any of them (on the same port).
- ``reject_line``: ``Line -> reason | None``; a line with a reason is unparsable: the request gets
  400 listing every such line (``unable to parse '<line>': <reason>``) and nothing is written.
- ``drop_line``: ``Line -> reason | None``; a point with a reason is dropped from a partial write:
  the valid points are written and the request gets 422 ``partial write: <first reason> dropped=N``.
  Field type conflicts are detected for real (a field's type is fixed by its first write).

Also runnable as a process (benchmarks): ``python -m tests.influx_standin --port P`` reads commands
on stdin (``outage MODE [RETRY_AFTER]``, ``recover``, ``stats``, ``dump PATH`` (stored points'
measurement, tags and time as JSON), ``quit``) and answers each with a JSON line of stats on stdout.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from chargewatch.lineprotocol import PRECISION_TO_NS, FieldValue, Line, parse_lines

Handler = Callable[["StandinRequest"], "StandinResponse"]
SeriesTime = tuple[str, tuple[tuple[str, str], ...], int]  # measurement, sorted tags, time (ns)
OUTAGE_MODES = ("refuse", "hang", "500", "503", "429")
VERSION = "v2.7.12"


@dataclass
class StandinRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    raw_body: bytes
    params: dict[str, str] = field(default_factory=dict)  # from {name} segments of the route

    def body(self) -> bytes:
        """The body, gzip-decoded when ``Content-Encoding`` says so (raises ValueError when corrupt)."""
        if self.headers.get("content-encoding", "").lower() in ("gzip", "x-gzip"):
            try:
                return gzip.decompress(self.raw_body)
            except (OSError, EOFError, zlib.error) as err:
                raise ValueError(f"gzip: {err}") from err
        return self.raw_body

    def json(self) -> Any:
        return json.loads(self.body() or b"null")

    @property
    def token(self) -> str | None:
        """The token of ``Authorization: Token <t>`` (or ``Bearer <t>``; scheme case-insensitive)."""
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() in ("token", "bearer") and value.strip() else None


@dataclass
class StandinResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> "StandinResponse":
        return cls(status, json.dumps(payload).encode(),
                   {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> "StandinResponse":
        """InfluxDB's error shape: ``{"code", "message"}`` plus ``X-Platform-Error-Code``."""
        return cls.json(status, {"code": code, "message": message}, {"X-Platform-Error-Code": code, **(headers or {})})


@dataclass
class WriteRecord:
    """One write request as the stand-in answered it."""

    status: int
    lines: int  # lines in the body (parsed or not)
    written: int  # points written by this request
    message: str = ""


def error_table(message: str) -> StandinResponse:
    """A 200 whose body is InfluxDB's in-band error table: a Flux runtime error after the answer began."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([
        ["#datatype", "string", "string"], ["#group", "true", "true"], ["#default", "", ""],
        ["", "error", "reference"], ["", message, ""]])
    return StandinResponse(200, out.getvalue().encode(), {"Content-Type": "text/csv; charset=utf-8"})


class InfluxStandin:
    """The server; ``start()`` it (or use it as a context manager) and point clients at ``url``."""

    def __init__(self, *, org: str = "chargewatch", token: str = "standin-token",
                 buckets: tuple[str, ...] = ("telemetry", "efficiency"), port: int = 0) -> None:
        self.org = org
        self.org_id = "0000000000000001"
        self.token = token
        self.buckets: dict[str, dict[str, Any]] = {
            name: {"id": f"{i + 1:016x}", "name": name, "orgID": self.org_id, "retentionRules": []}
            for i, name in enumerate(buckets)
        }
        self.port = port
        self.routes: dict[tuple[str, str], Handler] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Handler]] = []
        self.reject_line: Callable[[Line], str | None] | None = None
        self.drop_line: Callable[[Line], str | None] | None = None

        self.lock = threading.Lock()
        self.points: dict[SeriesTime, dict[str, FieldValue]] = {}
        self.field_types: dict[tuple[str, str], str] = {}  # (measurement, field) -> float|integer|string|boolean
        self.points_received = 0  # points written, rewrites included
        self.identical_rewrites = 0
        self.changed_rewrites = 0
        self.writes: list[WriteRecord] = []
        self.held_requests = 0  # requests an outage("hang") holds right now

        self._outage: str | None = None
        self._retry_after: int | None = None
        self._answering = threading.Event()
        self._answering.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopped = False

        self.add_route("POST", "/api/v2/write", self._write)
        self.add_route("GET", "/health", self._health)
        self.add_route("GET", "/ping", lambda request: StandinResponse(204, headers={"X-Influxdb-Version": VERSION}))

    # -- routes --------------------------------------------------------------------------------

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        """Add or replace a route; ``{name}`` segments match one path segment into ``request.params``."""
        key = (method.upper(), pattern)
        self.routes[key] = handler
        regex = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern)) + "$")
        self._patterns = [p for p in self._patterns if (p[0], p[1].pattern) != (key[0], regex.pattern)]
        self._patterns.append((key[0], regex, handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add_route(method, pattern, handler)
            return handler
        return register

    def dispatch(self, request: StandinRequest) -> StandinResponse:
        if self._outage in ("500", "503", "429"):
            return self._outage_response()
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            for method, regex, candidate in self._patterns:
                match = regex.match(request.path)
                if match and method == request.method:
                    request.params = match.groupdict()
                    handler = candidate
                    break
        if handler is None:
            return StandinResponse.error(404, "not found", "path not found")
        return handler(request)

    def unauthorized(self, request: StandinRequest) -> StandinResponse | None:
        """InfluxDB's 401 unless the request carries the token (for handlers to call first)."""
        if request.token != self.token:
            return StandinResponse.error(401, "unauthorized", "unauthorized access")
        return None

    # -- switches ------------------------------------------------------------------------------

    def outage(self, mode: str, retry_after: int | None = None) -> None:
        """Stop answering (see the module docstring for the modes); ``recover()`` ends it."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"unknown outage mode {mode!r}; expected one of {OUTAGE_MODES}")
        self.recover()
        self._retry_after = retry_after
        self._outage = mode
        if mode == "hang":
            self._answering.clear()
        elif mode == "refuse":
            self._close_server()

    def recover(self) -> None:
        mode, self._outage = self._outage, None
        self._answering.set()
        if mode == "refuse" and not self._stopped:
            self._open_server()

    @property
    def outage_mode(self) -> str | None:
        return self._outage

    def _outage_response(self) -> StandinResponse:
        headers = {"Retry-After": str(self._retry_after)} if self._retry_after is not None else {}
        if self._outage == "500":
            return StandinResponse.error(500, "internal error", "unexpected error writing points to database: "
                                         "engine: timeout", headers)
        if self._outage == "429":
            return StandinResponse.error(429, "too many requests", "org exceeded write limits", headers)
        return StandinResponse.error(503, "unavailable", "service unavailable", headers)

    # -- what was written ----------------------------------------------------------------------

    def series_times(self, measurement: str | None = None) -> set[SeriesTime]:
        with self.lock:
            return {key for key in self.points if measurement is None or key[0] == measurement}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            by_status: dict[str, int] = {}
            for record in self.writes:
                by_status[str(record.status)] = by_status.get(str(record.status), 0) + 1
            return {
                "distinct_points": len(self.points), "points_received": self.points_received,
                "identical_rewrites": self.identical_rewrites, "changed_rewrites": self.changed_rewrites,
                "write_requests": by_status, "outage": self._outage,
            }

    # -- the write API -------------------------------------------------------------------------

    def _write(self, request: StandinRequest) -> StandinResponse:
        response, line_count, written = self._write_checked(request)
        message = json.loads(response.body)["message"] if response.body else ""
        with self.lock:
            self.writes.append(WriteRecord(response.status, line_count, written, message))
        return response

    def _write_checked(self, request: StandinRequest) -> tuple[StandinResponse, int, int]:
        """The response, the lines in the body, and the points written."""
        denied = self.unauthorized(request)
        if denied:
            return denied, 0, 0
        org = request.query.get("org") or request.query.get("orgID")
        if not org:
            return StandinResponse.error(400, "invalid", "Please provide either orgID or org"), 0, 0
        if org not in (self.org, self.org_id):
            return StandinResponse.error(404, "not found", f'organization name "{org}" not found'), 0, 0
        bucket = request.query.get("bucket", "")
        if bucket not in self.buckets and bucket not in {b["id"] for b in self.buckets.values()}:
            return StandinResponse.error(404, "not found", f'bucket "{bucket}" not found'), 0, 0
        precision = request.query.get("precision", "ns")
        if precision not in PRECISION_TO_NS:
            return StandinResponse.error(
                400, "invalid", "invalid precision; valid precision units are ns, us, ms, and s"), 0, 0
        try:
            text = request.body().decode("utf-8", errors="replace")
        except ValueError as err:
            return StandinResponse.error(400, "invalid", str(err)), 0, 0
        lines, errors = parse_lines(text, precision)
        line_count = len(lines) + len(errors)
        problems = [(e.line_number, e.text, e.reason) for e in errors]
        if self.reject_line is not None:
            problems += [(line.line_number, line.text, reason) for line in lines
                         if (reason := self.reject_line(line)) is not None]
        if problems:  # InfluxDB parses the whole body first: one bad line refuses the request
            problems.sort()
            return StandinResponse.error(400, "invalid", "\n".join(
                f"unable to parse '{text}': {reason}" for _, text, reason in problems)), line_count, 0
        now_ns = time.time_ns()
        dropped: list[str] = []
        written = 0
        with self.lock:
            for line in lines:
                reason = self.drop_line(line) if self.drop_line is not None else None
                reason = reason or self._type_conflict(line)
                if reason is not None:
                    dropped.append(reason)
                    continue
                self._store(line, now_ns)
                written += 1
        if dropped:
            return StandinResponse.error(422, "unprocessable entity", "failure writing points to database: "
                                         f"partial write: {dropped[0]} dropped={len(dropped)}"), line_count, written
        return StandinResponse(204), line_count, written

    def _type_conflict(self, line: Line) -> str | None:
        for key, value in line.fields.items():
            known = self.field_types.get((line.measurement, key))
            if known is not None and known != _field_type(value):
                return (f'field type conflict: input field "{key}" on measurement "{line.measurement}" is type '
                        f"{_field_type(value)}, already exists as type {known}")
        return None

    def _store(self, line: Line, now_ns: int) -> None:
        for key, value in line.fields.items():
            self.field_types.setdefault((line.measurement, key), _field_type(value))
        series_time = (line.measurement, tuple(sorted(line.tags.items())),
                       line.timestamp_ns if line.timestamp_ns is not None else now_ns)
        self.points_received += 1
        existing = self.points.get(series_time)
        if existing is None:
            self.points[series_time] = dict(line.fields)
            return
        if all(existing.get(k) == v for k, v in line.fields.items()):
            self.identical_rewrites += 1
        else:
            self.changed_rewrites += 1
        existing.update(line.fields)  # a rewrite unions field sets, newest value wins

    def _health(self, request: StandinRequest) -> StandinResponse:
        return StandinResponse.json(200, {"name": "influxdb", "message": "ready for queries and writes",
                                          "status": "pass", "checks": [], "version": VERSION, "commit": "standin"})

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "InfluxStandin":
        self._stopped = False
        self._open_server()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._answering.set()
        self._close_server()

    def __enter__(self) -> "InfluxStandin":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_server(self) -> None:
        server = _Server(("127.0.0.1", self.port), _handler_class(self))
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="influx-standin", daemon=True)
        self._thread.start()

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


def _field_type(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def _handler_class(standin: InfluxStandin) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "influxdb-standin"

        def setup(self) -> None:
            super().setup()
            with standin.lock:
                standin._connections.add(self.connection)

        def finish(self) -> None:
            with standin.lock:
                standin._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            if self.server is not standin._server:  # accepted just before an outage("refuse") closed the port
                self.close_connection = True
                return
            body = self._read_body()
            if not standin._answering.is_set():  # "hang": hold the request until recover()
                with standin.lock:
                    standin.held_requests += 1
                try:
                    while not standin._answering.wait(0.1):
                        pass
                finally:
                    with standin.lock:
                        standin.held_requests -= 1
            if standin._stopped:
                self.close_connection = True
                return
            split = urlsplit(self.path)
            request = StandinRequest(
                method=self.command, path=split.path,
                query={k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
                headers={k.lower(): v for k, v in self.headers.items()}, raw_body=body,
            )
            response = standin.dispatch(request)
            try:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if response.body and self.command != "HEAD":
                    self.wfile.write(response.body)
            except OSError:  # the client gave up (timed out) meanwhile
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return _Handler


def main(argv: list[str] | None = None) -> int:
    """Serve until ``quit`` on stdin (or EOF); see the module docstring for the commands."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="standin-token")
    parser.add_argument("--org", default="chargewatch")
    args = parser.parse_args(argv)
    standin = InfluxStandin(org=args.org, token=args.token, port=args.port).start()
    print(json.dumps({"url": standin.url}), flush=True)
    try:
        for command in sys.stdin:
            words = command.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] == "outage":
                standin.outage(words[1], int(words[2]) if len(words) > 2 else None)
            elif words[0] == "recover":
                standin.recover()
            elif words[0] == "dump":  # the stored points' keys, for a caller to compare with what it sent
                with open(words[1], "w") as handle:
                    json.dump([[m, dict(tags), t] for m, tags, t in standin.series_times()], handle)
            elif words[0] != "stats":
                print(json.dumps({"error": f"unknown command {words[0]!r}"}), flush=True)
                continue
            print(json.dumps(standin.stats()), flush=True)
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
