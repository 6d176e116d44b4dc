"""docker-compose.yml's process healthchecks, run for real. The forwarder's, against a real forwarder
process: unhealthy before any forwarder ran, healthy while one runs (even with InfluxDB unreachable:
readings wait safely in the outbox, which is the forwarder doing its job). The task runner's, against
the runner's own lock: healthy exactly while a runner holds it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.fluxcheck import REPO

BIN = Path(sys.executable).parent


def healthcheck_script(service: str = "forwarder") -> str:
    with (REPO / "docker-compose.yml").open() as handle:
        test = yaml.safe_load(handle)["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    return test[3]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def forwarder_env(tmp_path):
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "CHARGEWATCH_DATA_DIR": str(tmp_path),
        "CHARGEWATCH_STORE": "influx",
        "CHARGEWATCH_INFLUX__URL": f"http://127.0.0.1:{closed_port()}",
        "CHARGEWATCH_INFLUX__TOKEN": "not-a-real-token",
    }


def run_healthcheck(env: dict[str, str], service: str = "forwarder") -> int:
    return subprocess.run([sys.executable, "-c", healthcheck_script(service)], env=env, capture_output=True,
                          timeout=60).returncode


def test_the_forwarder_healthcheck_fails_until_a_forwarder_runs_and_passes_while_it_runs(forwarder_env):
    assert run_healthcheck(forwarder_env) == 1
    forwarder = subprocess.Popen([str(BIN / "chargewatch"), "forward"], env=forwarder_env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        status = 1
        while status != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            assert forwarder.poll() is None, "the forwarder exited"
            status = run_healthcheck(forwarder_env)
        assert status == 0
    finally:
        forwarder.send_signal(signal.SIGTERM)
        forwarder.wait(timeout=30)


def test_the_task_runner_healthcheck_passes_exactly_while_a_runner_holds_its_lock(tmp_path):
    from taskrunner.runner import hold_runner_lock

    env = {**os.environ, "CHARGEWATCH_DATA_DIR": str(tmp_path)}
    assert run_healthcheck(env, "tasks") == 1  # no runner ever started
    lock = hold_runner_lock(tmp_path)
    try:
        assert run_healthcheck(env, "tasks") == 0
    finally:
        os.close(lock)
    assert run_healthcheck(env, "tasks") == 1  # the runner is gone
