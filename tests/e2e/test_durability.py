"""kill -9 under load: every reading that got a 2xx is there after a restart."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from chargewatch.readings import MeterReading, VehicleReading, to_wire
from tests.e2e.harness import WRITE_TOKEN, IngestServer, free_port

pytestmark = pytest.mark.slow


def _sender(server: IngestServer, worker: int, stop: threading.Event, acked: list[tuple[str, str, int]],
            errors: list[str]) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {WRITE_TOKEN}"
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    sequence = 0
    while not stop.is_set():
        sequence += 1
        at = base + timedelta(seconds=sequence)
        batch: list[MeterReading | VehicleReading]
        if sequence % 5 == 0:  # every fifth request is a gateway list
            batch = [MeterReading(meter_id=f"DUR-M{worker}-{sequence}-{i}", kwh_consumed_ac=0.5, voltage=230,
                                  timestamp=at)
                     for i in range(20)]
        else:
            batch = [VehicleReading(vehicle_id=f"DUR-V{worker}", soc=50, kwh_delivered_dc=0.4, battery_temp=25,
                                    timestamp=at)]
        try:
            response = session.post(server.url + "/v1/ingest", json=[to_wire(r) for r in batch], timeout=10)
        except requests.RequestException:
            continue  # the crash cut this request: it was never acknowledged
        if 200 <= response.status_code < 300:
            acked.extend((r.kind, r.device_id, r.time_ms) for r in batch)
        else:
            errors.append(f"{response.status_code}: {response.text[:200]}")


@pytest.mark.parametrize("writer", ["group", "process"])
def test_every_acknowledged_reading_survives_kill_9(tmp_path, writer) -> None:
    server = IngestServer(tmp_path, free_port(), extra_env={"CHARGEWATCH_SQLITE__WRITER": writer}).start()
    acked: list[tuple[str, str, int]] = []
    errors: list[str] = []
    stop = threading.Event()
    senders = [threading.Thread(target=_sender, args=(server, n, stop, acked, errors)) for n in range(8)]
    try:
        for thread in senders:
            thread.start()
        deadline = time.monotonic() + 20
        while len(acked) < 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.crash()  # mid-stream: requests are in flight on every sender
        stop.set()
        for thread in senders:
            thread.join(timeout=30)
        assert not errors
        assert len(acked) >= 1000, "the load did not get going before the crash"

        server.start()
        stored = {(kind, row[0], row[1]) for kind in ("meter", "vehicle") for row in server.rows(kind)}
        missing = [reading for reading in acked if reading not in stored]
        assert missing == [], f"{len(missing)} of {len(acked)} acknowledged readings were lost"
        print(f"\n{len(acked)} readings acknowledged before kill -9, all {len(stored)} rows back after restart")
        assert server.query("PRAGMA integrity_check") == [("ok",)]
        newest_soc = server.query(
            "SELECT count(*) FROM current_state WHERE kind = 'vehicle' AND device_id LIKE 'DUR-V%'")
        assert newest_soc == [(8,)]
    finally:
        stop.set()
        server.stop()
