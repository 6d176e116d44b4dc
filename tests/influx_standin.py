"""A stand-in InfluxDB 2.7 HTTP server for the few cases a real ``influxd`` cannot be made to produce
(everything else runs against the real engine in tests/live/): a 500, a 503 or 429 with
``Retry-After`` (what InfluxDB Cloud sends when it throttles), a 413, a 400 whose lines do not match
the ones sent, an error table in the middle of a query answer, a bucket created by someone else
between a lookup and a create.

Real sockets on 127.0.0.1; status codes and error bodies as InfluxDB OSS 2.7 documents them
(``{"code", "message"}`` plus ``X-Platform-Error-Code``; https://docs.influxdata.com/influxdb/v2/api/);
points kept the way InfluxDB keeps them (one per series + time, a rewrite overwrites).

One route table: ``InfluxStandin.routes`` maps ``(METHOD, "/api/v2/path")`` to a handler
``(StandinRequest) -> StandinResponse``; tests add or replace routes with ``add_route``. Built in:
``POST /api/v2/write`` (401 without the token, 404 for an unknown org or bucket, 400 for an
unparsable line, all lines of the body parsed before any is written). Unknown paths get 404.

Switches (thread-safe, flip them while clients run):

- ``outage("500")``, ``outage("503", retry_after=2)``, ``outage("429", retry_after=2)``: every
  request gets that answer until ``recover()``.
- ``drop_line``: ``Line -> reason | None``; a point with a reason is dropped from a partial write:
  the valid points are written and the request gets 422 ``partial write: <first reason> dropped=N``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from chargewatch.lineprotocol import PRECISION_TO_NS, FieldValue, Line, parse_lines

Handler = Callable[["StandinRequest"], "StandinResponse"]
SeriesTime = tuple[str, tuple[tuple[str, str], ...], int]  # measurement, sorted tags, time (ns)
OUTAGE_MODES = ("500", "503", "429")


@dataclass
class StandinRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    raw_body: bytes

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
    headers: dict[str, str] | None = None

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> StandinResponse:
        return cls(status, json.dumps(payload).encode(),
                   {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> StandinResponse:
        """InfluxDB's error shape: ``{"code", "message"}`` plus ``X-Platform-Error-Code``."""
        return cls.json(status, {"code": code, "message": message}, {"X-Platform-Error-Code": code, **(headers or {})})


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
                 buckets: tuple[str, ...] = ("telemetry", "efficiency")) -> None:
        self.org = org
        self.org_id = "0000000000000001"
        self.token = token
        self.buckets = set(buckets)
        self.port = 0
        self.routes: dict[tuple[str, str], Handler] = {("POST", "/api/v2/write"): self._write}
        self.drop_line: Callable[[Line], str | None] | None = None

        self.lock = threading.Lock()
        self.points: dict[SeriesTime, dict[str, FieldValue]] = {}
        self.identical_rewrites = 0
        self.changed_rewrites = 0

        self._outage: str | None = None
        self._retry_after: int | None = None
        self._server: ThreadingHTTPServer | None = None

    # -- routes and switches -------------------------------------------------------------------

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Add or replace the handler of ``method path``."""
        self.routes[(method.upper(), path)] = handler

    def dispatch(self, request: StandinRequest) -> StandinResponse:
        if self._outage is not None:
            return self._outage_response()
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return StandinResponse.error(404, "not found", "path not found")
        return handler(request)

    def outage(self, mode: str, retry_after: int | None = None) -> None:
        """Answer every request with ``mode`` (500, 503 or 429) until ``recover()``."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"unknown outage mode {mode!r}; expected one of {OUTAGE_MODES}")
        self._retry_after = retry_after
        self._outage = mode

    def recover(self) -> None:
        self._outage = None

    def _outage_response(self) -> StandinResponse:
        headers = {"Retry-After": str(self._retry_after)} if self._retry_after is not None else {}
        if self._outage == "500":
            return StandinResponse.error(500, "internal error", "unexpected error writing points to database: "
                                         "engine: timeout", headers)
        if self._outage == "429":
            return StandinResponse.error(429, "too many requests", "org exceeded write limits", headers)
        return StandinResponse.error(503, "unavailable", "service unavailable", headers)

    def series_times(self, measurement: str | None = None) -> set[SeriesTime]:
        with self.lock:
            return {key for key in self.points if measurement is None or key[0] == measurement}

    # -- the write API -------------------------------------------------------------------------

    def _write(self, request: StandinRequest) -> StandinResponse:
        if request.token != self.token:
            return StandinResponse.error(401, "unauthorized", "unauthorized access")
        org = request.query.get("org") or request.query.get("orgID")
        if org not in (self.org, self.org_id):
            return StandinResponse.error(404, "not found", f'organization name "{org}" not found')
        bucket = request.query.get("bucket", "")
        if bucket not in self.buckets:
            return StandinResponse.error(404, "not found", f'bucket "{bucket}" not found')
        precision = request.query.get("precision", "ns")
        if precision not in PRECISION_TO_NS:
            return StandinResponse.error(
                400, "invalid", "invalid precision; valid precision units are ns, us, ms, and s")
        try:
            text = request.body().decode("utf-8", errors="replace")
        except ValueError as err:
            return StandinResponse.error(400, "invalid", str(err))
        lines, errors = parse_lines(text, precision)
        if errors:  # InfluxDB parses the whole body first: one bad line refuses the request
            return StandinResponse.error(400, "invalid", "\n".join(
                f"unable to parse '{e.text}': {e.reason}" for e in errors))
        now_ns = time.time_ns()
        dropped: list[str] = []
        with self.lock:
            for line in lines:
                reason = self.drop_line(line) if self.drop_line is not None else None
                if reason is not None:
                    dropped.append(reason)
                else:
                    self._store(line, now_ns)
        if dropped:
            return StandinResponse.error(422, "unprocessable entity", "failure writing points to database: "
                                         f"partial write: {dropped[0]} dropped={len(dropped)}")
        return StandinResponse(204)

    def _store(self, line: Line, now_ns: int) -> None:
        series_time = (line.measurement, tuple(sorted(line.tags.items())),
                       line.timestamp_ns if line.timestamp_ns is not None else now_ns)
        existing = self.points.get(series_time)
        if existing is None:
            self.points[series_time] = dict(line.fields)
            return
        if all(existing.get(k) == v for k, v in line.fields.items()):
            self.identical_rewrites += 1
        else:
            self.changed_rewrites += 1
        existing.update(line.fields)  # a rewrite unions field sets, newest value wins

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxStandin:
        server = _Server(("127.0.0.1", 0), _handler_class(self))
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="influx-standin",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> InfluxStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


def _handler_class(standin: InfluxStandin) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "influxdb-standin"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            split = urlsplit(self.path)
            request = StandinRequest(
                method=self.command, path=split.path,
                query={k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
                headers={k.lower(): v for k, v in self.headers.items()}, raw_body=body,
            )
            response = standin.dispatch(request)
            try:
                self.send_response(response.status)
                for name, value in (response.headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if response.body and self.command != "HEAD":
                    self.wfile.write(response.body)
            except OSError:  # the client gave up meanwhile
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return _Handler
