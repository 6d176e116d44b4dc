"""Posting readings to chargewatch ingest over HTTP; the only module of the simulator that does I/O.

``POST /v1/ingest`` with ``Authorization: Token <write token>`` takes one reading (a JSON object) or
a list. Connection errors, timeouts, 429 and 502/503/504 are retried with exponential backoff,
honouring ``Retry-After``; resending is safe because a reading's identity is (device, timestamp), so
a retry of a request that did reach the store only shows up as duplicates. Other 4xx answers are
never retried: the readings are counted as rejected, and 401/403 stop the run (:class:`SendRefused`).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
import requests

from chargewatch.readings import AnyReading, to_wire

logger = logging.getLogger(__name__)

INGEST_PATH = "/v1/ingest"
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
MAX_KEPT_ERRORS = 20


class SendRefused(Exception):
    """Ingest refused the token (401/403): no later request can succeed either."""


@dataclass
class SendStats:
    """Counts in readings unless named otherwise; ``retried`` counts repeated requests."""

    sent: int = 0  # readings handed to send() (a simulated duplicate counts again)
    requests: int = 0  # HTTP requests made, retries included
    accepted: int = 0  # stored now or earlier (= stored + duplicates)
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0  # refused by ingest as invalid (4xx, or listed in a 207)
    retried: int = 0
    failed: int = 0  # given up after every retry, or a 5xx that is not retried
    errors: list[str] = field(default_factory=list)  # the first few rejection/failure messages

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Sender:
    """Thread-safe: each thread gets its own keep-alive session; the counts are shared."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_seconds: float = 30.0,
        max_attempts: int = 8,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = base_url.rstrip("/") + INGEST_PATH
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._stats = SendStats()
        self._jitter = random.Random()

    @property
    def stats(self) -> SendStats:
        """A consistent copy of the counts so far."""
        with self._lock:
            return SendStats(**{**asdict(self._stats), "errors": list(self._stats.errors)})

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def send_one(self, reading: AnyReading) -> None:
        """POST one reading as a JSON object, as a device does."""
        self._post(orjson.dumps(to_wire(reading)), 1)

    def send_many(self, readings: Sequence[AnyReading]) -> None:
        """POST a list of readings in one request, as a gateway (or a backfill) does."""
        if readings:
            self._post(orjson.dumps([to_wire(r) for r in readings]), len(readings))

    def _post(self, body: bytes, count: int) -> None:
        self._count(sent=count)
        for attempt in range(1, self.max_attempts + 1):
            self._count(requests=1)
            try:
                response = self._session().post(self.url, data=body, headers=self._headers,
                                                timeout=self.timeout_seconds)
            except (requests.ConnectionError, requests.Timeout) as err:
                problem, wait = f"{type(err).__name__}: {err}", None
            else:
                if response.status_code not in RETRIED_STATUSES:
                    self._settle(response, count)
                    return
                problem, wait = f"HTTP {response.status_code}", _retry_after_seconds(response)
            if attempt == self.max_attempts:
                self._count(failed=count, error=f"gave up after {attempt} attempts: {problem}")
                logger.warning("gave up on %d readings after %d attempts: %s", count, attempt, problem)
                return
            if wait is None:
                wait = self.backoff_seconds * 2 ** (attempt - 1) * self._jitter.uniform(0.5, 1.0)
            self._count(retried=1)
            self._sleep(min(wait, self.max_backoff_seconds))

    def _settle(self, response: requests.Response, count: int) -> None:
        status = response.status_code
        if status in (200, 207):
            body = _json(response)
            if not isinstance(body.get("accepted"), int):
                self._count(failed=count, error=f"HTTP {status} without an ingest result: {response.text[:200]}")
                return
            rejected = body.get("rejected") or []
            self._count(accepted=body["accepted"], stored=body.get("stored", 0), duplicates=body.get("duplicates", 0),
                        rejected=len(rejected), error=_describe(rejected) if rejected else None)
        elif status in (401, 403):
            raise SendRefused(f"ingest refused the token (HTTP {status}): {_message(response)}")
        elif 400 <= status < 500:
            details = _json(response).get("details") or []
            # 422 lists every refused reading; other 4xx refuse the request as a whole.
            refused = len(details) if status == 422 and details else count
            self._count(rejected=refused, error=f"HTTP {status}: {_message(response)} {_describe(details)}")
        else:
            self._count(failed=count, error=f"HTTP {status}: {_message(response)}")

    def _count(self, error: str | None = None, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self._stats, name, getattr(self._stats, name) + value)
            if error and len(self._stats.errors) < MAX_KEPT_ERRORS:
                self._stats.errors.append(error)

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def _retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110); None when absent or bad."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: requests.Response) -> str:
    return str(_json(response).get("message") or response.text[:200])


def _describe(rejected: list[Any]) -> str:
    if not rejected:
        return ""
    first = rejected[0]
    return f"({len(rejected)} readings refused, first: {orjson.dumps(first).decode()[:300]})"
