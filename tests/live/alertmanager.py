"""A real Alertmanager on 127.0.0.1 (Debian's ``prometheus-alertmanager``) and a webhook receiver for
what it notifies. Used by the ``alertmanager_factory`` and ``webhook_receiver`` fixtures."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.e2e.harness import free_port
from tests.live.engines import EngineProcess, require_engine


def receiver_config(webhook_url: str) -> str:
    """An Alertmanager config that groups by alertname and notifies ``webhook_url`` within about a second."""
    return f"""\
route:
  receiver: test
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
"""


@dataclass
class AlertmanagerServer:
    """``alertmanager`` with its own config file and storage directory, listening on 127.0.0.1:``port``,
    no cluster gossip."""

    directory: Path
    config_text: str | None = None
    config_path: Path | None = None
    port: int = field(default_factory=free_port)
    engine: EngineProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "alertmanager.log"

    def start(self) -> AlertmanagerServer:
        binary = require_engine("alertmanager")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.config_path is None:
            self.config_path = self.directory / "alertmanager.yml"
            self.config_path.write_text(self.config_text or "")
        argv = [str(binary), f"--config.file={self.config_path}", f"--storage.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=debug"]
        self.engine = EngineProcess("alertmanager", argv, self.log_path, ready_url=f"{self.url}/-/ready").start()
        return self

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, self.url + path, timeout=10, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the alerts Alertmanager holds as active, silenced or inhibited."""
        return self.api("GET", "/api/v2/alerts")


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it, in order of arrival."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._changed:
                    receiver.bodies.append(body)
                    receiver._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], timeout_seconds: float = 30.0) -> dict[str, Any]:
        """The first body received for which ``matches`` is true, waiting up to ``timeout_seconds``."""
        deadline = time.monotonic() + timeout_seconds
        with self._changed:
            while True:
                found = next((body for body in self.bodies if matches(body)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notification within {timeout_seconds} s; got {self.bodies}")
                self._changed.wait(left)
