"""`chargewatch simulate` as a user runs it, against the real gunicorn ingest and its SQLite file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import IngestServer, free_port


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[IngestServer]:
    """A server of its own per test: the checks compare whole per-device sums."""
    server = IngestServer(tmp_path / "ingest", free_port())
    server.data_dir.mkdir()
    server.start()
    yield server
    server.stop()


def simulate(server: IngestServer, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # No --url or --token: both come from the same CHARGEWATCH_* settings the server runs with.
    return subprocess.run([sys.executable, "-m", "chargewatch", "simulate", *args, "--json"],
                          env=server.env(), capture_output=True, text=True, timeout=timeout)


def stored_totals(server: IngestServer) -> dict[str, tuple[int, float]]:
    """(rows, kWh) per device id, straight from the history tables."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in server.rows("meter"):
        values[row[0]].append(row[3])  # meter_id, time_ms, vehicle_id, kwh_consumed_ac, ...
    for row in server.rows("vehicle"):
        values[row[0]].append(row[4])  # vehicle_id, time_ms, meter_id, soc, kwh_delivered_dc, ...
    return {device: (len(kwh), math.fsum(kwh)) for device, kwh in values.items()}


def assert_store_matches_ground_truth(server: IngestServer, truth: dict) -> int:
    stored = stored_totals(server)
    expected_devices = set()
    delivered = 0
    for vehicle in truth["vehicles"]:
        for kind, device in (("vehicle", vehicle["vehicleId"]), ("meter", vehicle["meterId"])):
            tally = vehicle[kind]
            if tally["deliveredReadings"] == 0:
                continue
            expected_devices.add(device)
            delivered += tally["deliveredReadings"]
            rows, kwh = stored[device]
            assert rows == tally["deliveredReadings"], device
            assert math.isclose(kwh, tally["deliveredKwh"], rel_tol=1e-12, abs_tol=1e-12), device
    assert set(stored) == expected_devices
    return delivered


def test_a_backfilled_fleet_is_stored_exactly_as_the_ground_truth_says(fresh_server, tmp_path) -> None:
    truth_file = tmp_path / "truth.json"
    result = simulate(fresh_server, "backfill", "--hours", "3", "--pairs", "5", "--seed", "7",
                      "--ground-truth", str(truth_file), "--batch-size", "200")
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    truth = json.loads(truth_file.read_text())
    totals = truth["totals"]
    delivered = totals["vehicle"]["deliveredReadings"] + totals["meter"]["deliveredReadings"]
    resent = totals["vehicle"]["duplicateCopiesSent"] + totals["meter"]["duplicateCopiesSent"]
    assert (summary["rejected"], summary["failed"]) == (0, 0)
    assert summary["sent"] == summary["accepted"] == delivered + resent
    assert summary["stored"] == delivered and summary["duplicates"] == resent
    assert totals["vehicle"]["generatedReadings"] == 5 * 180
    assert totals["vehicle"]["lostReadings"] + totals["meter"]["lostReadings"] > 0
    assert assert_store_matches_ground_truth(fresh_server, truth) == delivered
    for vehicle in truth["vehicles"]:
        assert vehicle["deliveredEfficiency"] is None or 0.7 < vehicle["deliveredEfficiency"] < 1.0


def test_an_accelerated_run_replays_the_last_half_hour_in_seconds(fresh_server, tmp_path) -> None:
    truth_file = tmp_path / "truth.json"
    result = simulate(fresh_server, "accelerated", "--speed", "600", "--duration", "3s", "--pairs", "3",
                      "--seed", "9", "--ground-truth", str(truth_file))
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    truth = json.loads(truth_file.read_text())
    assert 2.5 <= summary["elapsedSeconds"] < 10
    assert truth["totals"]["vehicle"]["generatedReadings"] == 3 * 30
    assert summary["requests"] == summary["sent"]  # one reading per request, as devices post
    assert assert_store_matches_ground_truth(fresh_server, truth) == summary["stored"]


def test_live_devices_post_single_readings_as_their_minute_comes_round(fresh_server, tmp_path) -> None:
    truth_file = tmp_path / "truth.json"
    result = simulate(fresh_server, "live", "--duration", "4s", "--pairs", "100", "--seed", "3",
                      "--loss-rate", "0", "--ground-truth", str(truth_file))
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    truth = json.loads(truth_file.read_text())
    assert summary["sent"] > 0 and summary["rejected"] == 0
    assert assert_store_matches_ground_truth(fresh_server, truth) == summary["stored"]


def test_a_wrong_token_stops_the_run_with_status_2(fresh_server) -> None:
    result = simulate(fresh_server, "backfill", "--hours", "1", "--pairs", "1", "--token", "not-a-token")
    assert result.returncode == 2
    assert "refused the token (HTTP 401)" in result.stderr
    assert fresh_server.total_rows() == 0


def test_live_ends_on_sigterm_with_its_summary(fresh_server: IngestServer) -> None:
    import signal

    process = subprocess.Popen([sys.executable, "-m", "chargewatch", "simulate", "live", "--pairs", "3", "--json"],
                               env=fresh_server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        banner = process.stderr.readline()
        assert "until stopped (Ctrl-C)" in banner, banner
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["mode"] == "live"
    assert summary["sent"] == summary["accepted"] and summary["failed"] == 0
