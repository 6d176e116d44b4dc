"""Drive the real ``chargewatch serve ingest`` (gunicorn) on 127.0.0.1, and look into its SQLite file."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

WRITE_TOKEN = "e2e-write-token"
READ_TOKEN = "e2e-read-token"


@contextmanager
def stopped_at_exit(process: subprocess.Popen[Any]) -> Iterator[None]:
    """Kill the process's group (it was started with ``start_new_session``) if it still runs at the end."""
    try:
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class IngestServer:
    """A chargewatch service started by the test, in its own process group: ``serve ingest`` by
    default, ``serve analytics``, or the task runner (``tasks``, no port)."""

    data_dir: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    service: str = "ingest"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "chargewatch.db"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")}
        env.update({
            "CHARGEWATCH_DATA_DIR": str(self.data_dir),
            f"CHARGEWATCH_{self.service.upper()}__PORT": str(self.port),
            f"CHARGEWATCH_{self.service.upper()}__WORKERS": "2",
            "CHARGEWATCH_AUTH__WRITE_TOKENS": WRITE_TOKEN,
            "CHARGEWATCH_AUTH__READ_TOKENS": READ_TOKEN,
            "CHARGEWATCH_LOG_LEVEL": "WARNING",
        })
        env.update(self.extra_env)
        return env

    def start(self) -> IngestServer:
        command = ["tasks"] if self.service == "tasks" else ["serve", self.service]
        with (self.data_dir / f"{self.service}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chargewatch", *command],
                env=self.env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=log,
            )
        if self.service == "tasks":
            return self
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # a worker still booting on a busy machine
                pass
            time.sleep(0.1)
        self.crash()  # never leave a half-started server behind
        raise RuntimeError(f"{self.service} did not become ready: {self.log()}")

    def log(self) -> str:
        path = self.data_dir / f"{self.service}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def crash(self) -> None:
        """kill -9 the master and every worker (the process group this fixture created)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    # -- direct looks into the real SQLite file ------------------------------------------------

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def history_tables(self, kind: str) -> list[str]:
        return [name for (name,) in self.query(
            "SELECT name FROM sqlite_master WHERE type='table' AND name GLOB ?", (f"{kind}_[0-9]*",))]

    def rows(self, kind: str, where: str = "1", params: tuple = ()) -> list[tuple]:
        result = []
        for table in self.history_tables(kind):
            result.extend(self.query(f"SELECT * FROM {table} WHERE {where}", params))
        return result

    def total_rows(self) -> int:
        return len(self.rows("meter")) + len(self.rows("vehicle"))


class IngestClient:
    """Talks to a running ingest service like a device or an operator would."""

    def __init__(self, base_url: str, token: str = WRITE_TOKEN) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def post(self, path: str, payload: Any = None, **kwargs: Any) -> requests.Response:
        if payload is not None:
            kwargs["json"] = payload
        return self.session.post(self.base_url + path, timeout=30, **kwargs)

    def get(self, path: str, token: str = READ_TOKEN, **kwargs: Any) -> requests.Response:
        return requests.get(self.base_url + path, headers={"Authorization": f"Token {token}"}, timeout=30, **kwargs)

    def post_readings(self, readings: Any, path: str = "/v1/ingest") -> requests.Response:
        return self.post(path, readings)


def simulate_backfill(ingest: IngestServer, truth_path: Path, *, hours: int, pairs: int, seed: int,
                      faulty_share: float) -> dict[str, Any]:
    """``chargewatch simulate backfill`` into ``ingest`` as a real process; the ground truth it wrote."""
    sent = subprocess.run(
        [sys.executable, "-m", "chargewatch", "simulate", "backfill", "--hours", str(hours), "--pairs", str(pairs),
         "--seed", str(seed), "--faulty-share", str(faulty_share), "--ground-truth", str(truth_path), "--json"],
        env=ingest.env(), capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stderr
    truth: dict[str, Any] = json.loads(truth_path.read_text())
    return truth


def wait_for_task_runner(analytics: IngestServer, tasks: IngestServer, timeout_seconds: float = 180) -> None:
    """Until analytics' /health says the task runner's last run is current (its first run has computed the
    windows and replayed the history)."""
    deadline = time.monotonic() + timeout_seconds
    while requests.get(analytics.url + "/health", timeout=5).json()["details"]["taskRunner"]["status"] != "ok":
        assert time.monotonic() < deadline, f"the task runner did not finish its run in time: {tasks.log()}"
        time.sleep(0.5)
