"""Influx mode end to end: the real ``chargewatch forward`` process beside the real ingest service,
an InfluxDB to point them at, and a steady, bounded load of devices whose acknowledged readings are
recorded."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

from chargewatch.readings import MeterReading, VehicleReading, to_wire
from tests.e2e.harness import WRITE_TOKEN, IngestServer

Identity = tuple[str, str, int]  # kind, device id, time (ms): a reading's identity


def influx_env(influx: Any, **overrides: str) -> dict[str, str]:
    """Influx mode pointed at ``influx`` (anything with ``url``, ``org`` and ``token``, such as the live
    suite's influxd), with test-sized waits (no step waits more than 1 s)."""
    return {
        "CHARGEWATCH_STORE": "influx",
        "CHARGEWATCH_INFLUX__URL": influx.url,
        "CHARGEWATCH_INFLUX__ORG": influx.org,
        "CHARGEWATCH_INFLUX__TOKEN": influx.token,
        "CHARGEWATCH_INFLUX__BATCH_MAX_WAIT_SECONDS": "0.2",
        "CHARGEWATCH_INFLUX__BACKOFF_BASE_SECONDS": "0.2",
        "CHARGEWATCH_INFLUX__BACKOFF_MAX_SECONDS": "1",
        "CHARGEWATCH_INFLUX__CONFIG_ERROR_RETRY_SECONDS": "1",
        "CHARGEWATCH_INFLUX__REQUEST_TIMEOUT_SECONDS": "1",
        "CHARGEWATCH_INFLUX__POLL_SECONDS": "0.05",
        **overrides,
    }


@dataclass
class ForwarderProcess:
    """``chargewatch forward`` with the ingest server's environment, in its own process group."""

    server: IngestServer
    process: subprocess.Popen | None = None

    def start(self, timeout_seconds: float = 20.0) -> ForwarderProcess:
        started_ms = int(time.time() * 1000)
        with (self.server.data_dir / "forwarder.log").open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "chargewatch", "forward"], env=self.server.env(),
                                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:  # up once it has reported to the outbox
            if self.process.poll() is not None:
                raise RuntimeError(f"the forwarder exited with {self.process.returncode}: {self.log()}")
            rows = self.server.query("SELECT value FROM forwarder_state WHERE key = 'heartbeat_ms'")
            if rows and rows[0][0] >= started_ms:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the forwarder did not start: {self.log()}")

    def log(self) -> str:
        path = self.server.data_dir / "forwarder.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.crash()

    def crash(self) -> None:
        """kill -9."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def outbox_depth(server: IngestServer) -> int:
    return server.query("SELECT count(*) FROM outbox")[0][0]


def wait_until(condition, timeout_seconds: float, what: str) -> float:
    """Poll ``condition`` every 50 ms; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_seconds:
            raise AssertionError(f"{what}: not within {timeout_seconds} s")
        time.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Post:
    sent_at: float  # time.monotonic() when the request started
    seconds: float
    status: int | None  # None: no answer (ingest was down)


@dataclass
class SteadyLoad:
    """``threads`` devices-gateways, each posting ``pairs`` meter+vehicle readings (paired by the default
    rule: ``EV-<n>`` <-> ``MTR-<n>``) ``rate_per_thread`` times a second; bounded by construction."""

    url: str
    threads: int = 4
    pairs: int = 5
    rate_per_thread: float = 10.0
    token: str = WRITE_TOKEN
    acked: list[Identity] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    @property
    def readings_per_second(self) -> float:
        return self.threads * self.pairs * 2 * self.rate_per_thread

    def start(self) -> SteadyLoad:
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
        self._workers = [threading.Thread(target=self._send, args=(n + 1, base), daemon=True)
                         for n in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _send(self, gateway: int, base: datetime) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        interval = 1 / self.rate_per_thread
        sequence = 0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                sequence += 1
                at = base + timedelta(milliseconds=100 * sequence)  # unique per device, 1 h ago and later
                batch: list[MeterReading | VehicleReading] = []
                for i in range(self.pairs):
                    number = f"{gateway}{i:03d}"
                    batch.append(MeterReading(meter_id=f"MTR-{number}", kwh_consumed_ac=0.5, voltage=230, timestamp=at))
                    batch.append(VehicleReading(vehicle_id=f"EV-{number}", soc=50, kwh_delivered_dc=0.45,
                                                battery_temp=25, timestamp=at))
                started = time.monotonic()
                try:
                    response = session.post(self.url + "/v1/ingest", json=[to_wire(r) for r in batch], timeout=10)
                except requests.RequestException:
                    self.posts.append(Post(started, time.monotonic() - started, None))  # never acknowledged
                    session.close()
                    session = requests.Session()
                    session.headers["Authorization"] = f"Token {self.token}"
                else:
                    self.posts.append(Post(started, time.monotonic() - started, response.status_code))
                    if response.status_code == 200:
                        self.acked.extend((r.kind, r.device_id, r.time_ms) for r in batch)
                    else:
                        self.errors.append(f"{response.status_code}: {response.text[:200]}")
                next_at = max(next_at + interval, time.monotonic() - interval)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            session.close()

    def latency(self, start: float, end: float) -> dict[str, float]:
        """p50/p99/max seconds of the answered requests sent in ``[start, end)`` (monotonic)."""
        seconds = sorted(p.seconds for p in self.posts if start <= p.sent_at < end and p.status is not None)
        if not seconds:
            return {"requests": 0}
        quantiles = statistics.quantiles(seconds, n=100, method="inclusive") if len(seconds) > 1 else seconds * 99
        return {"requests": len(seconds), "p50": quantiles[49], "p99": quantiles[98], "max": seconds[-1]}


def chargewatch_cli(server: IngestServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chargewatch", *args], env=server.env(), capture_output=True,
                          text=True, timeout=60)
