"""The real engines of the live suite: find them, start them as processes on 127.0.0.1, stop them by PID.

``tools/engines/build`` builds ``influxd`` and ``telegraf`` at the versions pinned in
``tools/engines/versions`` into ``~/.cache/chargewatch/engines/<name>-<version>/`` (or
``$CHARGEWATCH_ENGINES_DIR``) and installs Debian's ``prometheus-alertmanager``. A binary can also be
named directly with ``CHARGEWATCH_ENGINE_INFLUXD`` / ``_TELEGRAF`` / ``_ALERTMANAGER``.

A missing engine skips its tests with the reason, except under ``CI=true``, where it fails them: CI
must never pass without having run the live suite.

Each process gets a temporary data directory and a log file; :func:`log_tail` gives the end of the log
for a failing test's report.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.harness import free_port

REPO = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO / "tools" / "engines" / "versions"
BUILD_HINT = "run tools/engines/build to build or install it"


def pinned_versions() -> dict[str, str]:
    """``tools/engines/versions`` as {NAME: value} (NAME=value lines, # comments)."""
    versions = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            versions[name.strip()] = value.strip()
    return versions


def engines_dir() -> Path:
    return Path(os.environ.get("CHARGEWATCH_ENGINES_DIR") or Path.home() / ".cache" / "chargewatch" / "engines")


def find_engine(name: str) -> Path | None:
    """The binary of engine ``name`` (influxd, telegraf, alertmanager), or None when it is not there."""
    named = os.environ.get(f"CHARGEWATCH_ENGINE_{name.upper()}")
    if named:
        return Path(named) if os.access(named, os.X_OK) else None
    if name == "alertmanager":
        found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        return Path(found) if found else None
    version = pinned_versions()[f"{name.upper()}_VERSION"]
    path = engines_dir() / f"{name}-{version}" / name
    return path if os.access(path, os.X_OK) else None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_engine(name: str) -> Path:
    """The engine's binary; skips the test when it is missing (fails it under CI=true)."""
    path = find_engine(name)
    if path is None:
        message = f"{name} not found ({BUILD_HINT}; or set CHARGEWATCH_ENGINE_{name.upper()})"
        if in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


def log_tail(path: Path, max_chars: int = 6000) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace")
    return text[-max_chars:]


@dataclass
class EngineProcess:
    """One engine process in its own process group, its output in ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    ready_url: str | None = None
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None

    def start(self, timeout_seconds: float = 60.0) -> EngineProcess:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, start_new_session=True)
        if self.ready_url:
            self.wait_ready(timeout_seconds)
        return self

    def wait_ready(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
            try:
                if self.ready_url and requests.get(self.ready_url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {self.ready_url} within {timeout_seconds} s:\n"
                           f"{log_tail(self.log_path)}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_seconds: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_seconds``; only the process group this object started."""
        if not self.running:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.kill9()

    def kill9(self) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait(self, timeout_seconds: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_seconds)


ADMIN_TOKEN = "chargewatch-live-admin-token"
ORG = "chargewatch-live"


class InfluxApi:
    """Calls of InfluxDB's HTTP API with the operator token; needs ``url``, ``token``, ``org``, ``org_id``."""

    url: str
    token: str
    org: str
    org_id: str

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call of the HTTP API with the operator token; the JSON answer (None for 204)."""
        response = requests.request(method, self.url + path, headers={"Authorization": f"Token {self.token}"},
                                    timeout=60, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def create_bucket(self, name: str, retention_seconds: int = 0) -> str:
        rules = [{"type": "expire", "everySeconds": retention_seconds}] if retention_seconds else []
        return self.api("POST", "/api/v2/buckets", json={"orgID": self.org_id, "name": name,
                                                         "retentionRules": rules})["id"]

    def query(self, flux: str, params: dict[str, Any] | None = None, org: str | None = None) -> list[dict[str, Any]]:
        """Run a Flux query (in ``org``, default the onboarded one); its rows as dicts."""
        from influxdb_client import InfluxDBClient

        with InfluxDBClient(url=self.url, token=self.token, org=org or self.org, timeout=120_000) as client:
            tables = client.query_api().query(flux, params=params)
        return [record.values for table in tables for record in table.records]

    def write(self, bucket: str, body: str, precision: str = "ms", org: str | None = None) -> None:
        response = requests.post(f"{self.url}/api/v2/write", params={"org": org or self.org, "bucket": bucket,
                                                                     "precision": precision},
                                 headers={"Authorization": f"Token {self.token}"}, data=body.encode(), timeout=120)
        if response.status_code != 204:
            raise AssertionError(f"write: {response.status_code} {response.text[:500]}")


@dataclass
class Influxd(InfluxApi):
    """A real ``influxd`` on 127.0.0.1 with its own data directory, onboarded by ``POST /api/v2/setup``
    (user, org ``chargewatch-live``, bucket ``onboarding``, an all-access operator token)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    token: str = ADMIN_TOKEN
    org: str = ORG
    engine: EngineProcess | None = None
    org_id: str = ""
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "influxd.log"

    def start(self) -> Influxd:
        binary = require_engine("influxd")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(binary), "--reporting-disabled", "--http-bind-address", f"127.0.0.1:{self.port}",
                "--bolt-path", str(self.data_dir / "influxd.bolt"), "--engine-path", str(self.data_dir / "engine"),
                "--sqlite-path", str(self.data_dir / "influxd.sqlite"),
                "--log-level", os.environ.get("CHARGEWATCH_INFLUXD_LOG_LEVEL", "warn")]
        # No user config (~/.influxdbv2) may leak in: influxd reads INFLUXD_* and a config file.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXD_")}
        env["INFLUXD_CONFIG_PATH"] = str(self.data_dir)
        self.engine = EngineProcess("influxd", argv, self.log_path, ready_url=f"{self.url}/health", env=env).start()
        self._onboard()
        return self

    def _onboard(self) -> None:
        allowed = requests.get(f"{self.url}/api/v2/setup", timeout=10).json()
        if not allowed.get("allowed"):  # a restart on the same data directory: already set up
            self.org_id = self.api("GET", "/api/v2/orgs", params={"org": self.org})["orgs"][0]["id"]
            return
        body = {"username": "chargewatch", "password": "chargewatch-live-password", "org": self.org,
                "bucket": "onboarding", "token": self.token}
        response = requests.post(f"{self.url}/api/v2/setup", json=body, timeout=30)
        response.raise_for_status()
        self.org_id = response.json()["org"]["id"]

    def restart(self) -> None:
        """Start again on the same port and data directory (after :meth:`kill9` or :meth:`stop`)."""
        assert self.engine is not None
        self.engine.start()
        self._onboard()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def kill9(self) -> None:
        assert self.engine is not None
        self.engine.kill9()

@dataclass
class ExternalInflux(InfluxApi):
    """An InfluxDB the user runs (``CHARGEWATCH_INFLUX__URL``, ``__TOKEN``, ``__ORG``): not started or
    stopped here; tests that must kill the engine skip on it."""

    url: str
    token: str
    org: str
    org_id: str = ""

    def __post_init__(self) -> None:
        self.org_id = self.api("GET", "/api/v2/orgs", params={"org": self.org})["orgs"][0]["id"]


def external_influx() -> ExternalInflux | None:
    url = os.environ.get("CHARGEWATCH_INFLUX__URL")
    if not url:
        return None
    missing = [n for n in ("CHARGEWATCH_INFLUX__TOKEN", "CHARGEWATCH_INFLUX__ORG") if not os.environ.get(n)]
    if missing:
        pytest.fail(f"CHARGEWATCH_INFLUX__URL is set but {', '.join(missing)} is not", pytrace=False)
    return ExternalInflux(url, os.environ["CHARGEWATCH_INFLUX__TOKEN"], os.environ["CHARGEWATCH_INFLUX__ORG"])
