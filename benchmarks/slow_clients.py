"""Normal clients while 50 misbehaving connections are held: ingest p50/p99 and errors.

Starts ``chargewatch serve ingest`` (default options), then runs wrk (single-reading posts,
``--connections`` connections, ``--timeout`` s per request) three ways, one after the other:

- ``baseline``: nothing else going on;
- ``stalled_bodies``: 50 connections with the write token whose headers promise 1,000 body bytes
  and that send 11 of them, then nothing;
- ``no_token``: 50 connections without a token that send headers and part of a body, then nothing.

Beside wrk, a probe posts one reading at a time on fresh connections with the same timeout and
counts every request that got no 2xx in time: wrk does not count a timeout for a connection that
never got any answer, so when the service is starved outright only the probe shows it.

A holder thread keeps 50 such connections open for the whole run: when the server closes one (a
408 after the request timeout, say), it opens another at once, as a misbehaving fleet would. The
result has wrk's p50/p99 and error count (timeouts, socket errors, non-2xx) per phase, and how
many held connections the server ended.

Run it against another checkout with ``--source`` for a before/after comparison:

    git worktree add /tmp/before 9cdde39
    .venv/bin/python benchmarks/slow_clients.py --source /tmp/before --output before.json
    .venv/bin/python benchmarks/slow_clients.py --output after.json
    git worktree remove /tmp/before
"""

from __future__ import annotations

import json
import selectors
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import harness

HELD = 50


class Holder:
    """Keeps ``count`` misbehaving connections open against 127.0.0.1:port until stopped."""

    def __init__(self, port: int, count: int, token: str | None) -> None:
        auth = f"Authorization: Token {token}\r\n" if token else ""
        self.request = (f"POST /v1/ingest HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{auth}"
                        "Content-Length: 1000\r\n\r\n[{\"meterId\"").encode()
        self.port, self.count = port, count
        self.ended_by_server = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, selector: selectors.BaseSelector) -> None:
        sock = socket.create_connection((harness.HOST, self.port), timeout=5)
        sock.sendall(self.request)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for _ in range(self.count):
                self._open(selector)
            while not self.stopping.is_set():
                for key, _ in selector.select(timeout=0.1):
                    sock = cast(socket.socket, key.fileobj)  # only sockets are registered
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the server closed it: replace it
                        selector.unregister(sock)
                        sock.close()
                        self.ended_by_server += 1
                        self._open(selector)
            for key in list(selector.get_map().values()):
                cast(socket.socket, key.fileobj).close()

    def __enter__(self) -> Holder:
        self.thread.start()
        time.sleep(1.0)  # every held request has reached the server
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


class Probe:
    """Posts one reading at a time until stopped; latencies of 2xx answers, and every other outcome."""

    def __init__(self, server: harness.Server, timeout_s: float) -> None:
        self.server, self.timeout_s = server, timeout_s
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            at = (datetime.now(timezone.utc) - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = json.dumps({"meterId": f"PROBE-{harness.run_tag()}-{n}", "kwhConsumedAc": 0.25,
                               "voltage": 230.0, "timestamp": at}).encode()
            request = urllib.request.Request(self.server.url + "/v1/ingest", data=body, method="POST", headers={
                "Authorization": f"Token {self.server.write_token}", "Content-Type": "application/json"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                self.latencies_ms.append(1000 * (time.perf_counter() - started))
            except (OSError, urllib.error.URLError):
                self.errors += 1

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        pick = ((lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)) if ordered
                else (lambda q: None))
        return {"answered": len(ordered), "errors": self.errors, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                "mean_ms": round(statistics.fmean(ordered), 2) if ordered else None}

    def __enter__(self) -> Probe:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.timeout_s + 5)


def main() -> int:
    parser = harness.base_parser(__doc__, default_duration=15.0)
    harness.add_source_argument(parser)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=2.0, help="wrk request timeout, s (default %(default)s)")
    args = parser.parse_args()
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "slow_clients",
        "measures": f"wrk single-reading posts (p50/p99, errors) alone and while {HELD} misbehaving "
                    "connections are held",
        "config": {"source": str(args.source or harness.BENCH_DIR.parent), "duration_s": args.duration,
                   "connections": args.connections, "timeout_s": args.timeout, "held": HELD},
        "machine": harness.machine_info(),
        "phases": {},
    }
    data_dir = harness.make_data_dir("slow")
    server = None
    try:
        server = harness.start_chargewatch(data_dir, source_dir=args.source)
        result["gunicorn_options"] = server.gunicorn_options
        script = harness.lua_script("ingest_single", data_dir)
        for phase, token in (("baseline", None), ("stalled_bodies", server.write_token), ("no_token", None)):
            holder = Holder(server.port, HELD if phase != "baseline" else 0, token)
            with holder, Probe(server, args.timeout) as probe:
                run = harness.run_wrk(server.url + "/v1/ingest", script, duration_s=args.duration,
                                      connections=args.connections, threads=2, timeout_s=args.timeout,
                                      args=[harness.run_tag(), server.write_token], server=server,
                                      after_closed=False)  # the holder's connections stay open
            result["phases"][phase] = {
                "wrk": {"p50_ms": round(run.latency_us["p50"] / 1000, 2),
                        "p99_ms": round(run.latency_us["p99"] / 1000, 2),
                        "requests": run.requests, "error_count": run.error_count},
                "probe": probe.summary(),
                "held_connections_ended_by_server": holder.ended_by_server, "run": run.as_dict(),
            }
    finally:
        harness.stop(server.process if server else None)
        harness.remove_data_dir(data_dir, args.keep_data)
    result["notes"] = [
        "wrk's latency percentiles cover the requests that were answered; a request unanswered "
        f"within {args.timeout:g} s counts as an error (timeout) instead.",
        *harness.disturbance_notes(result),
    ]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
