"""Locust scenarios for chargewatch: devices, gateways and dashboards, with the simulator's own readings.

Run it headless with ``python -m loadtests.run`` (or ``python loadtests/run.py``), which sizes the
users from a target rate, bounds the run and writes CSV and HTML reports; or interactively with
``locust -f loadtests/locustfile.py --host http://127.0.0.1:8080``.

Users
-----
``DeviceUser``
    Stands for ``--pairs-per-user`` P vehicle+meter pairs, i.e. 2P devices. Each device posts one
    reading every 60 s as a single JSON object to ``POST /v1/ingest``, so the user posts every
    60 / (2P) s (constant pacing), cycling through its devices in the order their minute comes round.
``GatewayUser``
    A site gateway for ``--gateway-pairs`` G pairs: every 60 s it posts that minute's 2G readings as
    one list. ``--gateway-users`` of them run (fixed count; 0 leaves them out).
``DashboardUser``
    A fleet operator's screen, one read every ``--dashboard-interval`` s with the read token: the
    fleet listing ``GET /v1/ingest/devices`` and a device's ``GET /v1/ingest/{meter|vehicle}/{id}/current``
    (ids taken from the listing). With ``--analytics-url`` (env ``CHARGEWATCH_LOADTEST_ANALYTICS_URL``)
    it also reads ``GET /v1/analytics/performance/{vehicleId}`` and ``GET /v1/analytics/fleet/summary``
    from the analytics service at that base URL. ``--dashboard-users`` of them run (fixed count).

Every payload is built by ``simulator.devices`` (validated pydantic models, ``to_wire``), so the load
is what real devices send: sessions, tapering, idle zero readings, clock offsets. Delivery faults
(loss, duplicates, lateness) are off: every generated reading is posted once, which keeps the request
rate exactly what the sizing below says. Each user's pairs are its own (numbered from a per-process
counter, offset by the worker index under ``--processes``), so users never collide on an identity.

Sizing
------
A fleet of F pairs is 2F devices posting every 60 s: 2F / 60 requests/s. 10,000 pairs make
333.3 requests/s; twice that load is 666.7 requests/s, i.e. 40,000 devices. One locust user per
device would take 40,000 users; instead each DeviceUser stands for 2P devices and posts 2P / 60 times
a second. With P = 50 (100 devices, a post every 0.6 s, 1.667 requests/s per user)::

    device users = ceil(rate * 60 / (2 * P)) = ceil(666.7 * 60 / 100) = 400 users -> 666.7 requests/s

Gateways add G * 2 readings per minute each but only one request per minute; dashboards add
1 / interval requests/s each. ``loadtests/run.py --rate R`` does this arithmetic.

Pass/fail
---------
When locust quits, the run fails (exit code 1) if any request failed, if no request was made, or if
the 99th percentile response time of all requests exceeds ``--p99-threshold-ms``.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timezone

import gevent
import orjson
from locust import FastHttpUser, events, task
from locust.runners import WorkerRunner

from chargewatch.readings import to_wire
from simulator.devices import INTERVAL, Fleet, FleetConfig, Generated

logger = logging.getLogger("chargewatch.loadtest")

INGEST_PATH = "/v1/ingest"
PAIRS_PER_WORKER_PROCESS = 1_000_000  # pair numbers of worker n start at n * this + 1
_next_free_pair = 1


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    parser.add_argument("--write-token", env_var="CHARGEWATCH_LOADTEST_WRITE_TOKEN", default="",
                        is_secret=True, help="ingest write token for device and gateway users")
    parser.add_argument("--read-token", env_var="CHARGEWATCH_LOADTEST_READ_TOKEN", default="",
                        is_secret=True, help="read token for dashboard users")
    parser.add_argument("--analytics-url", env_var="CHARGEWATCH_LOADTEST_ANALYTICS_URL", default="",
                        help="analytics base URL; when set, dashboards also read /v1/analytics/...")
    parser.add_argument("--pairs-per-user", type=int, env_var="CHARGEWATCH_LOADTEST_PAIRS_PER_USER", default=50,
                        help="pairs one DeviceUser stands for (it posts 2P readings a minute)")
    parser.add_argument("--gateway-users", type=int, env_var="CHARGEWATCH_LOADTEST_GATEWAY_USERS", default=1,
                        help="GatewayUsers to run (0: none)")
    parser.add_argument("--gateway-pairs", type=int, env_var="CHARGEWATCH_LOADTEST_GATEWAY_PAIRS", default=100,
                        help="pairs behind one gateway (its list holds 2G readings)")
    parser.add_argument("--dashboard-users", type=int, env_var="CHARGEWATCH_LOADTEST_DASHBOARD_USERS", default=1,
                        help="DashboardUsers to run (0: none)")
    parser.add_argument("--dashboard-interval", type=float, env_var="CHARGEWATCH_LOADTEST_DASHBOARD_INTERVAL",
                        default=1.0, help="seconds between a dashboard's reads")
    parser.add_argument("--p99-threshold-ms", type=float, env_var="CHARGEWATCH_LOADTEST_P99_THRESHOLD_MS",
                        default=500.0, help="fail the run when p99 of all requests exceeds this")
    parser.add_argument("--seed", type=int, env_var="CHARGEWATCH_LOADTEST_SEED", default=0,
                        help="simulator seed")


@events.init.add_listener
def _choose_users(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    GatewayUser.fixed_count = max(0, options.gateway_users)
    DashboardUser.fixed_count = max(0, options.dashboard_users)
    # A class with fixed_count 0 would be weighted like DeviceUser: leave it out instead.
    environment.user_classes[:] = [
        cls for cls in environment.user_classes if cls is DeviceUser or cls.fixed_count > 0
    ]


@events.quitting.add_listener
def _judge(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the merged stats
    total = environment.stats.total
    threshold = environment.parsed_options.p99_threshold_ms if environment.parsed_options else 500.0
    p50, p99 = total.get_response_time_percentile(0.5), total.get_response_time_percentile(0.99)
    problems = []
    if total.num_requests == 0:
        problems.append("no request was made")
    if total.num_failures:
        problems.append(f"{total.num_failures} of {total.num_requests} requests failed")
    if p99 > threshold:
        problems.append(f"p99 {p99:.0f} ms exceeds the threshold of {threshold:.0f} ms")
    verdict = "FAILED: " + "; ".join(problems) if problems else "passed"
    logger.info("chargewatch load test %s (%d requests, %.1f req/s, p50 %.0f ms, p99 %.0f ms)",
                verdict, total.num_requests, total.total_rps, p50, p99)
    if problems:
        environment.process_exit_code = 1


def _allocate_pairs(environment, count: int) -> int:
    """First pair number of a block of ``count`` pairs no other user (in any process) uses."""
    global _next_free_pair
    # No I/O between the read and the write, so gevent cannot switch users in between.
    first, _next_free_pair = _next_free_pair, _next_free_pair + count
    worker = max(0, getattr(environment.runner, "worker_index", 0) or 0)
    return worker * PAIRS_PER_WORKER_PROCESS + first


def _fleet(user, pairs: int) -> Fleet:
    options = user.environment.parsed_options
    seed = options.seed if options else 0
    config = FleetConfig(pairs=pairs, seed=seed, first_pair=_allocate_pairs(user.environment, pairs))
    # Start one interval ago: step k is then due k minutes from now, as the pacing sends it.
    return Fleet(config, datetime.now(timezone.utc) - INTERVAL)


def _start_at_random_phase(pacing_seconds: float) -> float:
    """Sleep a random share of one pace before the first task, so users started together spread
    evenly over the pace (constant pacing alone would keep them bunched); returns that start time."""
    delay = random.random() * pacing_seconds
    gevent.sleep(delay)
    return time.monotonic()


def _check(response, expected: int = 200) -> None:
    if response.status_code != expected:
        response.failure(f"HTTP {response.status_code}: {response.text[:300] if response.text else ''}")


class DeviceUser(FastHttpUser):
    """2P devices posting single readings, one every 60 / (2P) s."""

    weight = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        pairs = max(1, options.pairs_per_user if options else 50)
        self.fleet = _fleet(self, pairs)
        self.pacing_seconds = INTERVAL.total_seconds() / (2 * pairs)
        token = options.write_token if options else ""
        self.headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
        self.queue: list[Generated] = []
        self.next_due = _start_at_random_phase(self.pacing_seconds)

    def wait_time(self) -> float:
        self.next_due += self.pacing_seconds
        return max(0.0, self.next_due - time.monotonic())

    @task
    def post_reading(self) -> None:
        if not self.queue:
            self.queue = sorted(self.fleet.tick(), key=lambda g: g.send_time, reverse=True)
        reading = self.queue.pop().reading
        # FastHttpSession sends bytes as they are (geventhttpclient); its annotation names only str and dict.
        with self.client.post(INGEST_PATH, data=orjson.dumps(to_wire(reading)), headers=self.headers,  # type: ignore[arg-type]
                              name="POST /v1/ingest (device)", catch_response=True) as response:
            _check(response)


class GatewayUser(FastHttpUser):
    """A gateway posting each minute's readings of G pairs as one list."""

    fixed_count = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.fleet = _fleet(self, max(1, options.gateway_pairs if options else 100))
        token = options.write_token if options else ""
        self.headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
        self.next_due = _start_at_random_phase(INTERVAL.total_seconds())

    def wait_time(self) -> float:
        self.next_due += INTERVAL.total_seconds()
        return max(0.0, self.next_due - time.monotonic())

    @task
    def post_list(self) -> None:
        body = orjson.dumps([to_wire(g.reading) for g in self.fleet.tick()])
        # FastHttpSession sends bytes as they are (geventhttpclient); its annotation names only str and dict.
        with self.client.post(INGEST_PATH, data=body, headers=self.headers,  # type: ignore[arg-type]
                              name="POST /v1/ingest (gateway list)", catch_response=True) as response:
            _check(response)


class DashboardUser(FastHttpUser):
    """Operator reads: the fleet listing, a device's current state, and analytics when it is there."""

    fixed_count = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.headers = {"Authorization": f"Token {options.read_token if options else ''}"}
        self.analytics_url = (options.analytics_url if options else "").rstrip("/")
        self.pacing_seconds = options.dashboard_interval if options else 1.0
        self.devices: list[tuple[str, str]] = []
        self.next_due = _start_at_random_phase(self.pacing_seconds)

    def wait_time(self) -> float:
        self.next_due += self.pacing_seconds
        return max(0.0, self.next_due - time.monotonic())

    @task(1)
    def list_devices(self) -> None:
        with self.client.get("/v1/ingest/devices?limit=100", headers=self.headers,
                             name="GET /v1/ingest/devices", catch_response=True) as response:
            _check(response)
            if response.status_code == 200:
                page = orjson.loads(response.content)
                self.devices = [(d["kind"], d["deviceId"]) for d in page["devices"]]

    @task(3)
    def current_state(self) -> None:
        if not self.devices:
            return self.list_devices()
        kind, device_id = random.choice(self.devices)
        with self.client.get(f"/v1/ingest/{kind}/{device_id}/current", headers=self.headers,
                             name="GET /v1/ingest/[kind]/[id]/current", catch_response=True) as response:
            _check(response)

    @task(2)
    def vehicle_performance(self) -> None:
        if not self.analytics_url:
            return self.current_state()
        vehicles = [device for kind, device in self.devices if kind == "vehicle"]
        if not vehicles:
            return self.list_devices()
        with self.client.get(f"{self.analytics_url}/v1/analytics/performance/{random.choice(vehicles)}",
                             headers=self.headers, name="GET /v1/analytics/performance/[vehicleId]",
                             catch_response=True) as response:
            _check(response)

    @task(1)
    def fleet_summary(self) -> None:
        if not self.analytics_url:
            return self.list_devices()
        with self.client.get(f"{self.analytics_url}/v1/analytics/fleet/summary", headers=self.headers,
                             name="GET /v1/analytics/fleet/summary", catch_response=True) as response:
            _check(response)
