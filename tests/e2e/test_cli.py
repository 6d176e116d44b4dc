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

from tests.e2e.harness import free_port, stopped_at_exit


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
    deleted = chargewatch(tmp_path, "pairing", "delete", "VEHICLE_001")
    assert deleted.returncode == 0
    assert deleted.stdout.strip() == ("deleted the registry pairing of VEHICLE_001; "
                                      "the default rule pairs it with METER_001")
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
    # Both ports free: the default analytics port (8081) may be taken by another run on this machine.
    environment.update({"CHARGEWATCH_DATA_DIR": str(tmp_path), "CHARGEWATCH_INGEST__PORT": str(port),
                        "CHARGEWATCH_ANALYTICS__PORT": str(free_port())})
    process = subprocess.Popen([sys.executable, "-m", "chargewatch", "run"], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert process.stdout is not None
    with stopped_at_exit(process), process.stdout:
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
        rest: list[str] = []
        while not rest or not rest[-1].startswith("Press Ctrl-C"):
            rest.append(process.stdout.readline())
        # the banner tells a command that works from any shell, and where the browser goes
        assert any(f"{sys.executable} -m chargewatch tokens" in line for line in rest), rest
        assert any("console (browser):    http://127.0.0.1:" in line for line in rest), rest
        second = subprocess.run([sys.executable, "-m", "chargewatch", "run"], env=environment,
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and second.stdout == ""  # no banner
        assert f"already running on {tmp_path} (pid {process.pid})" in second.stderr
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=40) == 0


def test_every_command_has_a_description_and_every_argument_a_help() -> None:
    import argparse

    from chargewatch.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        if not parser.description:
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
                missing.append(f"{path}: {action.dest} has no help")

    walk(build_parser(), "chargewatch")
    assert missing == []


def test_reset_deletes_the_stored_data_only_when_told_and_nothing_runs(tmp_path) -> None:
    assert chargewatch(tmp_path, "pairing", "set", "VEHICLE_901", "METER_917").returncode == 0
    assert (tmp_path / "chargewatch.db").exists()
    dry = chargewatch(tmp_path, "reset")
    assert dry.returncode == 1 and "add --yes" in dry.stderr
    assert json.loads(chargewatch(tmp_path, "pairing", "list").stdout) == {"VEHICLE_901": "METER_917"}
    from chargewatch.locks import AlreadyRunning, hold_instance_lock

    lock = hold_instance_lock(tmp_path / "task-runner.lock", AlreadyRunning())  # a runner "running"
    try:
        busy = chargewatch(tmp_path, "reset", "--yes")
        assert busy.returncode == 1 and "the task runner still running" in busy.stderr
    finally:
        os.close(lock)
    done = chargewatch(tmp_path, "reset", "--yes")
    assert done.returncode == 0 and "deleted chargewatch.db" in done.stdout
    assert json.loads(chargewatch(tmp_path, "pairing", "list").stdout) == {}


def test_building_the_cli_does_not_import_prometheus_client() -> None:
    # `chargewatch serve` sets PROMETHEUS_MULTIPROC_DIR after parsing; prometheus_client reads it once
    # at import, so an import while building the parser would leave /metrics empty.
    check = subprocess.run([sys.executable, "-c", "import sys, chargewatch.cli as c; c.build_parser(); "
                            "sys.exit('prometheus_client' in sys.modules)"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
