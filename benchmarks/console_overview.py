"""The console's fleet overview for a 10,000-vehicle fleet (target: served in under 1 s).

Measures, in one run against 127.0.0.1, the real ``chargewatch serve analytics`` (gunicorn, 2
workers) answering a signed-in browser's ``GET /console/fleet``:

- the default view (last 24 h, the span the task runner materialises),
- an explicit 24 h period that is not materialised (summed from the hourly rollups),
- the last page, a status filter, an id search, and one vehicle's page.

The dataset is a day of efficiency windows written straight into the store (the console reads
windows and rollups, never raw readings): every vehicle charges two hours in six at a power and
efficiency drawn from its number, a tenth of them below 85 %.
"""

from __future__ import annotations

import random
import secrets
import statistics
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from http.cookiejar import CookieJar
from typing import Any

import harness
from analytics_day import start_analytics

from chargewatch.bootstrap import open_reading_store, sqlite_efficiency_stores
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import MS_PER_HOUR
from simulator.devices import pair_ids

WINDOW_MS = 300_000
POWERS_KW = (7.4, 11.0, 22.0, 50.0)


def load_windows(settings: Settings, vehicles: int, day_start_ms: int) -> dict[str, Any]:
    store = open_reading_store(settings)
    efficiency = sqlite_efficiency_stores(store.database)
    writer = efficiency.window_writer
    assert writer is not None  # SQLite computes its windows
    traits = []
    for number in range(1, vehicles + 1):
        rng = random.Random(number)
        vehicle_id, meter_id = pair_ids(number)
        ratio = rng.uniform(0.70, 0.84) if number % 10 == 0 else rng.uniform(0.86, 0.97)
        traits.append((vehicle_id, meter_id, rng.choice(POWERS_KW) * 5 / 60, ratio, rng.randrange(72)))
    started = time.perf_counter()
    written = 0
    for hour in range(24):
        hour_start = day_start_ms + hour * MS_PER_HOUR
        windows = []
        for stop in range(hour_start + WINDOW_MS, hour_start + MS_PER_HOUR + 1, WINDOW_MS):
            slot = (stop - day_start_ms) // WINDOW_MS
            for vehicle_id, meter_id, dc_kwh, ratio, phase in traits:
                if (slot + phase) % 72 < 24:  # charging two hours in six
                    windows.append(EfficiencyWindow(vehicle_id, meter_id, stop, dc_kwh / ratio, dc_kwh, 5, 5,
                                                    25.0, ratio))
        writer.replace_windows(WINDOW_MS, hour_start, hour_start + MS_PER_HOUR, windows, hour_start)
        written += len(windows)
    day_end_ms = day_start_ms + 24 * MS_PER_HOUR
    # What the task runner leaves behind after its run at the end of the day.
    writer.refresh_fleet_latest(WINDOW_MS, day_end_ms - 24 * MS_PER_HOUR, day_end_ms)
    efficiency.runner_state.update({"last_stop_ms": day_end_ms, "last_run_ms": day_end_ms, "last_duration_s": 1.0})
    store.close()
    return {"vehicles": vehicles, "windows": written, "load_seconds": round(time.perf_counter() - started, 1)}


def signed_in_opener(base_url: str, token: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    body = urllib.parse.urlencode({"token": token, "next": "/console/fleet"}).encode()
    with opener.open(base_url + "/console/sign-in", data=body, timeout=30) as response:
        assert response.url.endswith("/console/fleet"), response.url
    return opener


def time_page(opener: urllib.request.OpenerDirector, url: str, requests: int, must_contain: str) -> dict[str, Any]:
    timings = []
    size = 0
    for _ in range(requests):
        started = time.perf_counter()
        with opener.open(url, timeout=60) as response:
            body = response.read()
        timings.append(time.perf_counter() - started)
        assert response.status == 200 and must_contain.encode() in body, (url, body[:300])
        size = len(body)
    timings.sort()
    return {"median_ms": round(1000 * statistics.median(timings), 1),
            "p95_ms": round(1000 * timings[min(len(timings) - 1, int(0.95 * len(timings)))], 1),
            "max_ms": round(1000 * timings[-1], 1), "requests": requests, "html_bytes": size}


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--vehicles", type=int, default=10_000, help="fleet size (default %(default)s)")
    parser.add_argument("--requests", type=int, default=20, help="requests timed per page (default %(default)s)")
    args = parser.parse_args()
    data_dir = harness.make_data_dir("console")
    day_start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    day_start_ms = int(day_start.timestamp() * 1000)
    settings = Settings(data_dir=data_dir, sqlite={"synchronous": "normal"})
    server = None
    try:
        print(f"writing a day of windows for {args.vehicles} vehicles ...", file=sys.stderr)
        dataset = load_windows(settings, args.vehicles, day_start_ms)
        token = "bench-r-" + secrets.token_hex(8)
        server = start_analytics(data_dir, token)
        opener = signed_in_opener(server.url, token)
        fleet = server.url + "/console/fleet"
        last_page = -(-args.vehicles // 50)
        explicit = urllib.parse.urlencode({"start": day_start.strftime("%Y-%m-%dT%H:%M"),
                                           "stop": (day_start + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M")})
        # the explicit period asks for the same 24 h one minute wider, so it misses the materialised span
        explicit_uncached = urllib.parse.urlencode({
            "start": (day_start + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
            "stop": (day_start + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M")})
        pages = {
            "overview_default_24h": (fleet, f"{args.vehicles} vehicles"),
            "overview_explicit_period_not_materialised": (f"{fleet}?{explicit_uncached}", "vehicles"),
            "overview_explicit_24h": (f"{fleet}?{explicit}", f"{args.vehicles} vehicles"),
            "overview_last_page": (f"{fleet}?page={last_page}", f"page {last_page} of {last_page}"),
            "overview_status_low": (f"{fleet}?status=low", "matching"),
            "overview_search": (f"{fleet}?q=VEHICLE_099", "matching"),
            "vehicle_page": (server.url + "/console/vehicles/VEHICLE_010", "VEHICLE_010"),
        }
        if args.vehicles < 10_000:
            pages.pop("vehicle_page")
        timings = {name: time_page(opener, url, args.requests, text) for name, (url, text) in pages.items()}
        result = {
            "benchmark": "console_overview",
            "machine": harness.machine_info(),
            "dataset": dataset,
            "pages": timings,
            "target": {"overview_ms": 1000},
        }
        harness.emit(result, args.output)
    finally:
        if server is not None:
            server.stop()
        harness.remove_data_dir(data_dir, args.keep_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
