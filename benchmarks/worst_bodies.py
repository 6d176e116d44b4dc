"""The worst request bodies for ingest's limits: worker peak RSS and request time for each.

Each body is small on the wire (gzip) and inflates to just under the decompressed limit
(16 MiB by default) as millions of tiny items or lines, the cheapest way to make a service
do work per item. For every body a fresh ``chargewatch serve ingest`` (1 worker, so the figures
belong to one process) is started; the script posts the body once and reports the status, the
request's wall time, the worker's CPU seconds and its peak RSS (VmHWM) before and after.

Run it against another checkout with ``--source`` for a before/after comparison:

    git worktree add /tmp/before 9cdde39
    .venv/bin/python benchmarks/worst_bodies.py --source /tmp/before --output before.json
    .venv/bin/python benchmarks/worst_bodies.py --output after.json
    git worktree remove /tmp/before
"""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

import harness

INFLATED_BYTES = 16 * 1024 * 1024 - 64  # just under CHARGEWATCH_INGEST__MAX_DECOMPRESSED_BYTES


def _json_of(item: bytes) -> bytes:
    count = (INFLATED_BYTES - 2) // (len(item) + 1)
    return b"[" + b",".join([item] * count) + b"]"


def _lines_of(line: bytes) -> bytes:
    return line * (INFLATED_BYTES // len(line))


def _valid_lines() -> bytes:
    at = int(time.time()) - 600
    line = f"meter,meter_id=METER_1 kwh_consumed_ac=1,voltage=230 {at}\n".encode()
    return _lines_of(line)


BODIES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "json_empty_objects": ("/v1/ingest", lambda: _json_of(b"{}")),
    "json_numbers": ("/v1/ingest", lambda: _json_of(b"1")),
    "json_readings": ("/v1/ingest", lambda: _json_of(b'{"meterId":"M","kwhConsumedAc":1,"voltage":1}')),
    "line_protocol_bad_lines": ("/api/v2/write?bucket=telemetry&precision=s", lambda: _lines_of(b"x\n")),
    "line_protocol_valid_lines": ("/api/v2/write?bucket=telemetry&precision=s", _valid_lines),
}


def post_once(server: harness.Server, path: str, body: bytes, content_type: str) -> tuple[int, float, str]:
    connection = http.client.HTTPConnection(harness.HOST, server.port, timeout=600)
    started = time.perf_counter()
    try:
        connection.request("POST", path, body=body, headers={
            "Authorization": f"Token {server.write_token}", "Content-Type": content_type,
            "Content-Encoding": "gzip"})
        response = connection.getresponse()
        text = response.read()[:300].decode(errors="replace")
        return response.status, time.perf_counter() - started, text
    except (OSError, http.client.HTTPException) as err:  # a worker killed by OOM or its timeout
        return 0, time.perf_counter() - started, f"{type(err).__name__}: {err}"
    finally:
        connection.close()


def _alive(pid: int) -> bool:
    try:
        return "VmHWM" in harness.memory_status(pid)  # a zombie has no memory lines
    except FileNotFoundError:
        return False


class PeakSampler:
    """Samples a process's VmHWM and CPU every 50 ms, so both are known even if it is killed."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb, self.cpu_s = pid, 0.0, harness.cpu_seconds([pid])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(0.05):
            try:
                self.peak_mb = max(self.peak_mb, harness.memory_status(self.pid).get("VmHWM", 0.0))
            except (FileNotFoundError, ProcessLookupError):
                return
            self.cpu_s = max(self.cpu_s, harness.cpu_seconds([self.pid]))

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()


def main() -> int:
    parser = harness.base_parser(__doc__)
    harness.add_source_argument(parser)
    parser.add_argument("--only", action="append", choices=sorted(BODIES), help="measure only these bodies")
    args = parser.parse_args()
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "worst_bodies",
        "measures": "status, wall time, worker CPU and worker peak RSS for one gzip body that inflates "
                    "to just under the decompressed limit",
        "config": {"source": str(args.source or harness.BENCH_DIR.parent), "inflated_bytes": INFLATED_BYTES},
        "machine": harness.machine_info(),
        "bodies": {},
    }
    for name in args.only or BODIES:
        path, build = BODIES[name]
        inflated = build()
        wire = gzip.compress(inflated, compresslevel=9)
        data_dir = harness.make_data_dir("worst")
        server = None
        try:
            server = harness.start_chargewatch(data_dir, workers=1, source_dir=args.source)
            worker = server.workers()[0]
            before = harness.memory_status(worker)
            content_type = "application/json" if path.startswith("/v1") else "text/plain"
            with PeakSampler(worker) as sampler:
                cpu_before = sampler.cpu_s
                status, seconds, text = post_once(server, path, wire, content_type)
            entry: dict[str, Any] = {
                "wire_bytes": len(wire), "inflated_bytes": len(inflated), "status": status,
                "request_s": round(seconds, 3), "response_start": text,
                "worker_alive_after": _alive(worker),
                "worker_cpu_s": round(sampler.cpu_s - cpu_before, 2), "worker_peak_rss_mb_before": before["VmHWM"],
                "worker_peak_rss_mb": sampler.peak_mb,
            }
            result["bodies"][name] = entry
        finally:
            harness.stop(server.process if server else None)
            harness.remove_data_dir(data_dir, args.keep_data)
    result["notes"] = [
        "MB are MiB. worker_peak_rss_mb_before is the worker's peak after start-up, worker_peak_rss_mb "
        "its peak during the request (sampled every 50 ms); the difference is what the one request "
        "cost. A worker that died (OOM, gunicorn's 60 s timeout) shows worker_alive_after false, and "
        "its CPU is counted only up to its death.",
        *harness.disturbance_notes(result),
    ]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
