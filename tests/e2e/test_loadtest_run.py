"""The headless load test (`python -m loadtests.run`) against the real ingest; locust runs only as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.run import device_users_for, is_loopback_url
from tests.e2e.harness import READ_TOKEN, WRITE_TOKEN, IngestServer

SMALL_LOAD = ["--rate", "20", "--pairs-per-user", "5", "--gateway-pairs", "10", "--ramp-seconds", "2"]


def run_loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtests.run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).parents[2])


def test_twice_a_10000_pair_fleet_takes_400_device_users_of_50_pairs() -> None:
    assert device_users_for(2 * 20_000 / 60, 50) == 400  # 666.7 requests/s
    assert device_users_for(667, 50) == 401
    assert device_users_for(20, 5) == 120
    assert device_users_for(0.1, 50) == 1


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:8080", True), ("http://localhost:8080", True), ("http://127.3.4.5", True),
    ("http://[::1]:8080", True), ("http://10.0.0.1:8080", False), ("http://192.168.1.2", False),
    ("http://example.com", False), ("ftp://127.0.0.1", False), ("127.0.0.1:8080", False),
])
def test_only_this_machine_is_a_load_test_target(url: str, local: bool) -> None:
    assert is_loopback_url(url) is local


def test_a_remote_host_is_refused_before_any_request(tmp_path) -> None:
    result = run_loadtest("--host", "http://10.1.2.3:8080", "--report-dir", str(tmp_path),
                          "--write-token", "w", "--read-token", "r", timeout=30)
    assert result.returncode == 2
    assert "refusing http://10.1.2.3:8080" in result.stderr
    assert not (tmp_path / "locust_stats.csv").exists()


@pytest.mark.slow
def test_a_short_headless_run_passes_and_writes_its_reports(server: IngestServer, tmp_path) -> None:
    before = server.total_rows()
    result = run_loadtest("--host", server.url, "--run-time", "15s", *SMALL_LOAD, "--report-dir", str(tmp_path),
                          "--write-token", WRITE_TOKEN, "--read-token", READ_TOKEN, "--p99-threshold-ms", "2000")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "locust_stats.csv").stat().st_size > 0
    assert (tmp_path / "report.html").stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] and summary["failures"] == 0 and summary["requests"] > 100
    assert {"POST POST /v1/ingest (device)", "GET GET /v1/ingest/devices"} <= set(summary["byRequest"])
    assert server.total_rows() - before >= summary["byRequest"]["POST POST /v1/ingest (device)"]["requests"]


@pytest.mark.slow
def test_a_run_with_failing_requests_exits_non_zero(server: IngestServer, tmp_path) -> None:
    result = run_loadtest("--host", server.url, "--run-time", "4s", *SMALL_LOAD, "--dashboard-users", "0",
                          "--gateway-users", "0", "--report-dir", str(tmp_path),
                          "--write-token", "not-the-token", "--read-token", READ_TOKEN)
    assert result.returncode != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["passed"] and summary["failures"] == summary["requests"] > 0
    assert "requests failed" in summary["problems"][0]
