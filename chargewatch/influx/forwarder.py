"""The forwarder: ships the outbox to InfluxDB's write API, at least once, deleting only what
InfluxDB acknowledged. One per outbox (an ``flock`` beside the SQLite file): two would send the
same rows twice and race each other's deletes.

What InfluxDB's answers mean here (docs/influxdb-and-grafana.md "Writing", with sources; checked
against a real influxd 2.7.12 in tests/live/test_forwarder_engine_live.py):

- 2xx: every point is written: the rows are deleted.
- no answer (refused, reset, timeout), 429, 5xx: transient. Keep the rows; retry with exponential
  backoff and jitter, waiting at least a ``Retry-After`` (up to the backoff ceiling). A 500 may
  have written some points; the resend rewrites them identically, which InfluxDB absorbs.
- 400 whose message says ``unable to parse``: the whole request was refused and nothing written.
  InfluxDB names every bad line (``unable to parse '<line>': <reason>``): those rows go to
  ``dead_letters`` and the rest is sent again. If the named lines cannot be matched, the batch is
  bisected (safe, nothing was written) down to single lines, and a single refused line is dead.
- 422 (partial write): the valid points *were* written and the dropped ones were not, but the
  message names only the first reason and the count (``partial write: <reason> dropped=N``). The
  batch is bisected: a re-sent valid point is an identical overwrite, a dropped one fails again,
  and a single line that still gets 422 is dead. When ``dropped`` covers the whole request, all
  its lines are dead without bisecting. ``dropped`` is never used to skip re-sending: it can
  under-count (retention drops and shard drops are reported separately), and skipping would lose
  a line silently.
- 413 (only where a body limit is configured): the batch is halved, nothing is dead.
- 401, 403, 404, another 4xx, or a 400 that names no line: the request itself is wrong (token,
  permission, org, bucket), not the data. Keep every row, log an error naming the setting, mark
  the state ``config_error`` (visible in ``/metrics``), and retry slowly.

Dead letters never block the queue: the rows behind them ship in the same pass.

The HTTP side is plain ``requests`` rather than influxdb-client's synchronous WriteApi: the
forwarder's every decision rests on the status, InfluxDB's message and ``Retry-After``, which a
direct POST of the stored lines shows as they are; the rows are already encoded (no Point
objects); and this module, like the unit tests, must not need the optional influxdb-client.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from chargewatch import __version__
from chargewatch.locks import AlreadyRunning, hold_instance_lock
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.outbox import Outbox, OutboxRow

if TYPE_CHECKING:
    from chargewatch.settings import InfluxSettings

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
_DROPPED = re.compile(r"dropped=(\d+)")
_UNPARSABLE = "unable to parse '"
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")
_GZIP_LEVEL = 1  # line protocol is repetitive: level 1 already shrinks it ~10x, at a fraction of 6's CPU
_CONFIG_REASONS: dict[int | None, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large"}
_CONFIG_HINTS: dict[int | None, str] = {
    401: "InfluxDB refused the token: check CHARGEWATCH_INFLUX__TOKEN",
    403: "the token may not write to the bucket: give it write permission on CHARGEWATCH_INFLUX__TELEMETRY_BUCKET",
    404: "InfluxDB does not know the org or the bucket: check CHARGEWATCH_INFLUX__ORG and "
         "CHARGEWATCH_INFLUX__TELEMETRY_BUCKET (`chargewatch influx setup` creates the buckets)",
}


# -- one write request -----------------------------------------------------------------------------

@dataclass(frozen=True)
class WriteOutcome:
    """InfluxDB's answer to one write request; ``status`` None when none came (``reason`` says why)."""

    status: int | None
    message: str = ""
    retry_after_seconds: float | None = None
    reason: str | None = None  # for status None: connection | timeout

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class InfluxWriteClient:
    """``POST /api/v2/write`` of ready-encoded lines (millisecond precision), gzip on request."""

    def __init__(self, url: str, org: str, bucket: str, token: str, *, timeout_seconds: float = 10.0,
                 use_gzip: bool = True) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/write"
        self.params = {"org": org, "bucket": bucket, "precision": "ms"}
        self.timeout_seconds = timeout_seconds
        self.use_gzip = use_gzip
        self.session = requests.Session()
        self.session.headers.update({
            "Authorization": f"Token {token}",
            "Content-Type": "text/plain; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": f"chargewatch-forwarder/{__version__}",
        })
        if use_gzip:
            self.session.headers["Content-Encoding"] = "gzip"

    @classmethod
    def from_settings(cls, settings: InfluxSettings) -> InfluxWriteClient:
        return cls(settings.url, settings.org, settings.telemetry_bucket, settings.token.get_secret_value(),
                   timeout_seconds=settings.request_timeout_seconds, use_gzip=settings.gzip)

    def write(self, lines: Sequence[str]) -> WriteOutcome:
        body = "\n".join(lines).encode("utf-8")
        if self.use_gzip:
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL)
        try:
            response = self.session.post(self.endpoint, params=self.params, data=body,
                                         timeout=self.timeout_seconds)
        except requests.Timeout:
            return WriteOutcome(None, f"no answer from {self.endpoint} within {self.timeout_seconds} s",
                                reason="timeout")
        except requests.RequestException as err:
            return WriteOutcome(None, f"cannot reach InfluxDB at {self.endpoint}: {_root_cause(err)}",
                                reason="connection")
        if 200 <= response.status_code < 300:
            return WriteOutcome(response.status_code)
        return WriteOutcome(response.status_code, _error_message(response),
                            _retry_after_seconds(response.headers.get("Retry-After")))

    def close(self) -> None:
        self.session.close()


def _root_cause(err: Exception) -> str:
    """``[Errno 111] Connection refused`` rather than urllib3's nested retry report."""
    text = str(err)
    match = _ERRNO.search(text)
    return match.group() if match else f"{type(err).__name__}: {text[:300]}"


def _error_message(response: requests.Response) -> str:
    """InfluxDB's ``message`` from its ``{"code", "message"}`` body, else the body text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(message := body.get("message"), str):
        return message
    return response.text[:2000] or f"HTTP {response.status_code}"


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


# -- the shipping loop -----------------------------------------------------------------------------

class Forwarder:
    """Ships the outbox oldest first, in batches bounded by lines and by the oldest line's wait.

    ``clock`` (seconds since the epoch) and ``jitter`` (a float in [0, 1)) are injected so tests
    can drive the backoff without waiting.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: InfluxWriteClient,
        *,
        batch_max_lines: int = 5000,
        batch_max_wait_seconds: float = 1.0,
        backoff_base_seconds: float = 1.0,
        backoff_max_seconds: float = 30.0,
        config_error_retry_seconds: float = 60.0,
        poll_seconds: float = 0.2,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.batch_max_lines = batch_max_lines
        self.batch_max_wait_seconds = batch_max_wait_seconds
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.config_error_retry_seconds = config_error_retry_seconds
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.jitter = jitter
        self.failures = 0  # consecutive failed attempts (transient or configuration)
        self._last_heartbeat = float("-inf")

    @classmethod
    def from_settings(cls, outbox: Outbox, client: InfluxWriteClient, settings: InfluxSettings) -> Forwarder:
        return cls(
            outbox, client,
            batch_max_lines=settings.batch_max_lines,
            batch_max_wait_seconds=settings.batch_max_wait_seconds,
            backoff_base_seconds=settings.backoff_base_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
            config_error_retry_seconds=settings.config_error_retry_seconds,
            poll_seconds=settings.poll_seconds,
        )

    def run(self, stopping: Callable[[float], bool]) -> None:
        """Ship until ``stopping(timeout)`` (e.g. ``Event.wait``) returns True."""
        delay = 0.0
        while not stopping(delay):
            try:
                delay = self.step()
            except StorageUnavailable as err:  # the SQLite file, not InfluxDB: try again shortly
                logger.error("outbox unavailable: %s", err)
                delay = max(1.0, self.poll_seconds)
        try:
            self.outbox.set_state(self._now_ms(), "stopped")
        except StorageUnavailable as err:
            logger.warning("could not record the forwarder's stop: %s", err)

    def step(self) -> float:
        """Ship at most one batch; returns how long to wait before the next step (0: at once)."""
        rows = self.outbox.oldest(self.batch_max_lines)
        now = self.clock()
        if len(rows) < self.batch_max_lines:
            waited = now - rows[0].created_ms / 1000 if rows else 0.0
            if not rows or waited < self.batch_max_wait_seconds:
                self._heartbeat(now)
                return self.poll_seconds if not rows else min(self.poll_seconds, self.batch_max_wait_seconds - waited)
        delay = self._ship(rows)
        return 0.0 if delay is None else delay

    def _ship(self, rows: Sequence[OutboxRow]) -> float | None:
        """Send rows and settle them; None when every row is acknowledged or dead, else the delay
        after which to try again (the unsettled rows stay in the outbox)."""
        return self._settle(rows, self.client.write([row.line for row in rows]))

    def _settle(self, rows: Sequence[OutboxRow], outcome: WriteOutcome) -> float | None:
        status = outcome.status
        if outcome.accepted:
            self.outbox.acknowledge(rows, self._now_ms())
            if self.failures:
                logger.info("InfluxDB takes writes again after %d failed attempts", self.failures)
                self.failures = 0
            return None
        if status == 400 and "unable to parse" in outcome.message:
            self._count("rejected", outcome)
            return self._settle_rejected(rows, outcome)
        if status == 422:
            self._count("partial_write", outcome)
            return self._settle_partial(rows, outcome)
        if status == 413 and len(rows) > 1:
            self._count("too_large", outcome)
            return self._ship_halves(rows)
        if status is None or status == 429 or status >= 500:
            return self._retry_later(rows, outcome)
        return self._stop_for_configuration(rows, outcome)

    def _settle_rejected(self, rows: Sequence[OutboxRow], outcome: WriteOutcome) -> float | None:
        """400: nothing was written; dead-letter the lines InfluxDB named and send the rest again."""
        named = _named_lines(outcome.message)
        bad = [row for row in rows if row.line in named]
        if bad:
            self._dead_letter(bad, 400, [named[row.line] for row in bad])
            rest = [row for row in rows if row.line not in named]
            return self._ship(rest) if rest else None
        if len(rows) == 1:
            self._dead_letter(rows, 400, [outcome.message])
            return None
        return self._ship_halves(rows)

    def _settle_partial(self, rows: Sequence[OutboxRow], outcome: WriteOutcome) -> float | None:
        """422: the valid points are written; find the dropped lines by bisecting."""
        match = _DROPPED.search(outcome.message)
        if len(rows) == 1 or (match is not None and int(match.group(1)) >= len(rows)):
            self._dead_letter(rows, 422, [outcome.message] * len(rows))
            return None
        return self._ship_halves(rows)

    def _ship_halves(self, rows: Sequence[OutboxRow]) -> float | None:
        middle = len(rows) // 2
        for half in (rows[:middle], rows[middle:]):
            delay = self._ship(half)
            if delay is not None:
                return delay
        return None

    def _retry_later(self, rows: Sequence[OutboxRow], outcome: WriteOutcome) -> float:
        status = outcome.status
        if status is None:
            reason = outcome.reason or "connection"
        else:
            reason = "throttled" if status == 429 else "server_error"
        self.failures += 1
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0 ** min(self.failures - 1, 30))
        delay *= 0.5 + 0.5 * self.jitter()  # restarted forwarders must not retry in step
        if outcome.retry_after_seconds is not None:
            delay = max(delay, min(outcome.retry_after_seconds, self.backoff_max_seconds))
        self._count(reason, outcome, "retrying")
        if self.failures == 1 or self.failures & (self.failures - 1) == 0:  # 1, 2, 4, 8, ... attempts
            logger.warning("InfluxDB write failed (%s, attempt %d): %s; %d+ lines wait, retrying in %.1f s",
                           status or reason, self.failures, outcome.message, len(rows), delay)
        return delay

    def _stop_for_configuration(self, rows: Sequence[OutboxRow], outcome: WriteOutcome) -> float:
        status = outcome.status
        reason = _CONFIG_REASONS.get(status, "unexpected_status")
        self.failures += 1
        self._count(reason, outcome, "config_error")
        hint = _CONFIG_HINTS.get(status, "the write request itself was refused")
        logger.error("InfluxDB answered %s to a write: %s. %s. Shipping is stopped and every line is kept; "
                     "retrying in %.0f s", status, outcome.message, hint, self.config_error_retry_seconds)
        return self.config_error_retry_seconds

    def _dead_letter(self, rows: Sequence[OutboxRow], status: int, errors: Sequence[str]) -> None:
        self.outbox.dead_letter(rows, status, errors, self._now_ms())
        logger.error("InfluxDB refused %d line(s) (%d): %s; moved to dead letters "
                     "(see `chargewatch outbox dead-letters`)", len(rows), status, errors[0])

    def _count(self, reason: str, outcome: WriteOutcome, state: str | None = None) -> None:
        self.outbox.record_failure(reason, outcome.message or reason, self._now_ms(), state)

    def _heartbeat(self, now: float) -> None:
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            self.outbox.set_state(int(now * 1000))

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


def _named_lines(message: str) -> dict[str, str]:
    """line -> its ``unable to parse '<line>': <reason>`` entry, for every entry of a 400 message.

    A line ends at the first ``': `` after the quote: chargewatch's lines hold no quote (ids are
    ``[A-Za-z0-9._:-]``, fields are floats). One pass over the message, however many lines it names.
    """
    named: dict[str, str] = {}
    for entry in message.split("\n"):
        if entry.startswith(_UNPARSABLE):
            end = entry.find("': ", len(_UNPARSABLE))
            if end != -1:
                named.setdefault(entry[len(_UNPARSABLE):end], entry)
    return named


# -- one forwarder per outbox ------------------------------------------------------------------------

class ForwarderBusy(AlreadyRunning):
    """Another forwarder already ships this outbox."""


def hold_forwarder_lock(db_path: Path) -> int:
    """Take the one-forwarder-per-outbox lock beside the SQLite file; returns the descriptor to keep open."""
    return hold_instance_lock(db_path.with_name(db_path.name + ".forwarder.lock"),
                              ForwarderBusy(f"another forwarder is shipping the outbox of {db_path}"))
