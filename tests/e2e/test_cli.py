"""The ``chargewatch`` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.e2e.harness import free_port


def chargewatch(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")}
    environment.update({"CHARGEWATCH_DATA_DIR": str(data_dir), **env})
    return subprocess.run([sys.executable, "-m", "chargewatch", *args], env=environment,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_every_command(tmp_path) -> None:
    result = chargewatch(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("run", "serve", "tokens", "pairing", "retention", "config"):
        assert command in result.stdout


def test_tokens_are_generated_on_first_use_and_shown_again(tmp_path) -> None:
    first = json.loads(chargewatch(tmp_path, "tokens", "--json").stdout)
    second = json.loads(chargewatch(tmp_path, "tokens", "--json").stdout)
    assert first == second
    assert first["write"][0].startswith("cw_w_")


def test_pairings_are_imported_listed_set_and_deleted(tmp_path) -> None:
    pairing_file = tmp_path / "pairs.json"
    pairing_file.write_text(json.dumps({"VEHICLE_001": "GRID-1", "VEHICLE_002": "GRID-2"}))
    assert chargewatch(tmp_path, "pairing", "import", str(pairing_file)).returncode == 0
    assert chargewatch(tmp_path, "pairing", "set", "VEHICLE_003", "GRID-3").returncode == 0
    assert chargewatch(tmp_path, "pairing", "delete", "VEHICLE_001").returncode == 0
    listed = json.loads(chargewatch(tmp_path, "pairing", "list").stdout)
    assert listed == {"VEHICLE_002": "GRID-2", "VEHICLE_003": "GRID-3"}
    conflict = chargewatch(tmp_path, "pairing", "set", "VEHICLE_009", "GRID-2")
    assert conflict.returncode == 1
    assert "GRID-2 is already paired with VEHICLE_002" in conflict.stderr


def test_invalid_configuration_names_the_variable(tmp_path) -> None:
    result = chargewatch(tmp_path, "config", CHARGEWATCH_INGEST__PORT="eighty")
    assert result.returncode != 0
    assert "CHARGEWATCH_INGEST__PORT" in result.stderr


def test_config_masks_tokens(tmp_path) -> None:
    result = chargewatch(tmp_path, "config", CHARGEWATCH_AUTH__WRITE_TOKENS="secret-token")
    assert "secret-token" not in result.stdout
    assert json.loads(result.stdout)["auth"]["write_tokens"] == ["***"]


def test_retention_reports_what_it_dropped(tmp_path) -> None:
    result = chargewatch(tmp_path, "retention")
    assert result.returncode == 0
    assert "dropped 0 day tables older than 30 days" in result.stdout


def test_run_starts_the_services_says_where_and_stops_on_ctrl_c(tmp_path) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")}
    # Both services on free ports: another chargewatch on this machine may hold the default 8081.
    environment.update({"CHARGEWATCH_DATA_DIR": str(tmp_path), "CHARGEWATCH_INGEST__PORT": str(port),
                        "CHARGEWATCH_ANALYTICS__PORT": str(free_port())})
    process = subprocess.Popen([sys.executable, "-m", "chargewatch", "run"], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        banner = [process.stdout.readline() for _ in range(3)]
        assert f"POST http://127.0.0.1:{port}/v1/ingest" in banner[1]
        token = json.loads(chargewatch(tmp_path, "tokens", "--json").stdout)["write"][0]
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.post(f"http://127.0.0.1:{port}/v1/ingest", timeout=5,
                                         headers={"Authorization": f"Token {token}"},
                                         json={"meterId": "METER_001", "kwhConsumedAc": 1, "voltage": 230})
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "ingest never came up"
                time.sleep(0.2)
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=40) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
