"""The embedded task runner: computes efficiency windows and evaluates alerts, once per window.

Exactly one runs per data directory: it holds an exclusive ``flock`` on ``<data_dir>/task-runner.lock``
for its lifetime (``chargewatch tasks`` refuses to start a second one), and gunicorn workers never run
tasks. Each run, ``offset`` after a window closes:

1. computes the window that has just closed, everything since the last run after downtime
   (catch-up, in hour chunks), and, for late data, the windows of just the vehicles that late
   readings marked: before reading, a run records up to which window stop it computes, and from
   then on every reading committed for a window up to there marks (window, vehicle) stale
   (``chargewatch.stores.sqlite``), so the next run recomputes exactly those (embedded mode: in
   influx mode the Flux task computes the windows and a run starts at step 3);
2. writes them idempotently (a window is replaced whole);
3. evaluates the alert rules at every window stop since the last run, and queues notifications
   (webhooks, Alertmanager), which a separate thread delivers so a failing receiver never stalls
   the runner (``taskrunner/notify.py``).

It works on the ports of ``chargewatch.efficiency_ports`` (``EfficiencyStores``, as
``chargewatch.bootstrap`` builds them), never on an adapter.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chargewatch import alerts
from chargewatch.bootstrap import alert_policy
from chargewatch.efficiency import EfficiencyWindow, charging_windows, combine
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores, QueuedNotification, WindowWriter
from chargewatch.locks import AlreadyRunning, hold_instance_lock
from chargewatch.settings import Settings
from taskrunner import replay
from taskrunner.notify import alertmanager_endpoint, alertmanager_outbox_row

MS_PER_HOUR = 3_600_000

logger = logging.getLogger(__name__)

ALERT_CATCHUP_WINDOWS = 288  # after downtime, replay alert evaluation over at most a day of windows
FLEET_SUMMARY_SPAN_MS = 24 * 3_600_000  # analytics' default period
# Influx mode: the Flux task runs at the same ``offset`` after a window closes; alerts wait this much
# longer, so they read the windows the task has just written.
INFLUX_TASK_GRACE_MS = 60_000


class RunnerBusy(AlreadyRunning):
    """Another task runner holds the lock for this data directory."""


@dataclass(frozen=True)
class RunReport:
    latest_stop_ms: int
    windows_written: int
    ranges_computed: int
    alerts_changed: int
    notifications: int
    duration_s: float


class TaskRunner:
    """Computes windows and alerts; ``run_once(now_ms)`` is deterministic given the stores and ``now``.

    Without a window writer (influx mode: the Flux task computes the windows inside InfluxDB and
    ``stores.windows`` reads them from there) a run only evaluates alerts, ``INFLUX_TASK_GRACE_MS`` later.
    """

    def __init__(self, stores: EfficiencyStores, settings: Settings, external_url: str = "") -> None:
        self.stores = stores
        self.settings = settings
        self.compute_windows = stores.window_writer is not None
        self.window_ms = settings.efficiency.window_seconds * 1000
        grace_ms = 0 if self.compute_windows else INFLUX_TASK_GRACE_MS
        self.offset_ms = settings.efficiency.offset_seconds * 1000 + grace_ms
        self.policy = alert_policy(settings)
        self.external_url = external_url

    def latest_stop(self, now_ms: int) -> int:
        """The newest window stop that closed at least ``offset`` ago."""
        return (now_ms - self.offset_ms) // self.window_ms * self.window_ms

    def next_run_ms(self, now_ms: int) -> int:
        return self.latest_stop(now_ms) + self.window_ms + self.offset_ms

    def run_once(self, now_ms: int) -> RunReport:
        started = time.perf_counter()
        latest = self.latest_stop(now_ms)
        state = self.stores.runner_state.load()
        previous = int(state["last_stop_ms"]) if "last_stop_ms" in state else None
        # The windows late readings marked (read before refresh_windows clears them): their alert
        # verdicts were judged without those readings.
        stale = self.writer().stale_windows(self.window_ms) if self.compute_windows and previous is not None else []
        written, ranges = self.refresh_windows(latest, previous, now_ms) if self.compute_windows else (0, 0)

        # A new runner establishes alert state from the last span; after downtime it replays (capped).
        first_eval = latest - self.policy.span_ms + self.window_ms if previous is None else max(
            previous + self.window_ms, latest - ALERT_CATCHUP_WINDOWS * self.window_ms)
        # History that was not there when its stops were judged live: the stored history before a new
        # runner's first span, and windows late readings marked stale (a backfill), replayed up to the
        # last stop already judged (capped at a day, like the catch-up).
        replay_from = first_eval - ALERT_CATCHUP_WINDOWS * self.window_ms if previous is None else (
            min((stop - self.window_ms for stop, _, _ in stale), default=first_eval))
        replay_from = max(replay_from, latest - ALERT_CATCHUP_WINDOWS * self.window_ms)
        if replay_from < first_eval - self.window_ms:
            # A later run replays only the vehicles whose windows late readings changed.
            replayed = None if previous is None else {vehicle_id for _, vehicle_id, _ in stale}
            replay.replay(self, replay_from, first_eval - self.window_ms, now_ms,
                          notify=self.settings.alerts.replay_notify, notify_still_firing=True, vehicle_ids=replayed)
        replay.run_queued_request(self, now_ms)
        changed = queued = 0
        for stop in range(first_eval, latest + 1, self.window_ms):
            records, notified = self.evaluate_alerts(stop, now_ms)
            changed += records
            queued += notified
        duration = time.perf_counter() - started
        self.stores.runner_state.update({
            "last_stop_ms": latest, "last_run_ms": now_ms, "last_duration_s": duration,
            "last_windows_written": written, "runs_total": state.get("runs_total", 0) + 1,
        })
        return RunReport(latest, written, ranges, changed, queued, duration)

    def writer(self) -> WindowWriter:
        """The embedded engine's window writer; influx mode has none (the Flux task computes)."""
        if self.stores.window_writer is None:
            raise RuntimeError("no window writer: in influx mode the Flux task computes the windows")
        return self.stores.window_writer

    def refresh_windows(self, latest: int, previous: int | None, now_ms: int) -> tuple[int, int]:
        """Compute the newest window, any gap since ``previous`` and the windows late readings
        marked; returns (windows written, ranges computed)."""
        writer = self.writer()
        retention_start = latest - self.settings.retention_days * 86_400_000
        start = retention_start if previous is None else max(retention_start, min(previous, latest - self.window_ms))
        stale = writer.stale_windows(self.window_ms)
        # From here on, readings for windows up to ``latest`` mark them: none falls between this
        # run's reads and the next run.
        writer.mark_computing(self.window_ms, latest)
        ranges = _hour_chunks(start, latest)
        written = 0
        for range_start, range_end in ranges:
            written += self.compute(range_start, range_end, now_ms)
        by_stop: dict[int, list[str]] = {}
        handled = [mark for mark in stale if mark[0] <= latest]  # later ones: for a later run
        for stop, vehicle_id, _ in handled:
            if not (start < stop <= latest or stop <= retention_start):  # else computed whole above, or expired
                by_stop.setdefault(stop, []).append(vehicle_id)
        for stop, vehicle_ids in by_stop.items():
            written += self.compute_vehicles(stop, vehicle_ids, now_ms)
        if handled:
            writer.clear_stale_windows(self.window_ms, handled)
        # The fleet summary's default span, ready-made for the dashboards that ask for it all day.
        writer.refresh_fleet_latest(self.window_ms, latest - FLEET_SUMMARY_SPAN_MS, latest)
        return written, len(ranges) + len(by_stop)

    def compute_vehicles(self, stop_ms: int, vehicle_ids: list[str], now_ms: int) -> int:
        """Recompute one window of some vehicles from the readings."""
        writer = self.writer()
        ac, dc = writer.side_totals(self.window_ms, stop_ms - self.window_ms, stop_ms, vehicle_ids)
        windows = combine(ac, dc, self.settings.efficiency.min_energy_kwh)
        writer.replace_vehicle_windows(self.window_ms, stop_ms, vehicle_ids, windows, now_ms)
        return len(windows)

    def compute(self, start_ms: int, end_ms: int, now_ms: int) -> int:
        """Recompute every window with stop in (start_ms, end_ms] from the readings."""
        if end_ms <= start_ms:
            return 0
        writer = self.writer()
        ac, dc = writer.side_totals(self.window_ms, start_ms, end_ms)
        windows = combine(ac, dc, self.settings.efficiency.min_energy_kwh)
        writer.replace_windows(self.window_ms, start_ms, end_ms, windows, now_ms)
        return len(windows)

    def evaluate_alerts(self, stop_ms: int, now_ms: int) -> tuple[int, int]:
        verdicts = self.verdicts_at(stop_ms)
        records, events = alerts.evaluate(self.stores.alerts.open_alerts(), verdicts, stop_ms, self.policy)
        notifications = self.notifications(events)
        for record, status in events:
            logger.info("alert %s %s for %s (efficiency %s)", record.rule, status, record.vehicle_id, record.value)
        self.stores.alerts.save_alerts(records, notifications, now_ms)
        return len(records), len(notifications)

    def notifications(self, events: list[tuple[AlertRecord, str]]) -> list[QueuedNotification]:
        """Outbox rows for alert events: a webhook body per webhook URL, an Alertmanager row per Alertmanager."""
        return [
            (url, alerts.webhook_payload(record, status, self.policy, self.external_url))
            for record, status in events for url in self.settings.alerts.webhook_urls
        ] + [
            (alertmanager_endpoint(url), alertmanager_outbox_row(record))
            for record, _ in events for url in self.settings.alerts.alertmanager_urls
        ]

    def verdicts_at(self, stop_ms: int, history: Mapping[str, Sequence[EfficiencyWindow]] | None = None
                    ) -> dict[str, alerts.SpanVerdict]:
        """Every vehicle's span verdict at window stop ``stop_ms``, from the stored windows; or, given
        ``history`` (:meth:`history`: some vehicles' windows, read once for a replay, reaching at least
        ``alerts.lookback_ms`` before ``stop_ms``), those vehicles' verdicts."""
        # The span plus the window before it: enough to tell whether a session began inside the span.
        fetched_from = stop_ms - self.policy.span_ms - self.window_ms
        lookback_from = stop_ms - alerts.lookback_ms(self.policy)
        # Only the vehicles charging in the span: any other has no verdict to give (``alerts.span_verdict``
        # finds no span), and its open alerts step on the empty verdict, as ``alerts.evaluate`` gives them.
        since, active_kwh = stop_ms - self.policy.span_ms, self.policy.active_kwh
        if history is None:
            fetched = self.stores.windows.charging_windows(self.window_ms, fetched_from, stop_ms, since, active_kwh)
        else:
            fetched = charging_windows([window for windows in history.values()
                                        for window in _stops_in(windows, fetched_from, stop_ms)], since, active_kwh)
        by_vehicle: dict[str, list[EfficiencyWindow]] = {}
        for window in fetched:
            by_vehicle.setdefault(window.vehicle_id, []).append(window)
        earliest_stop = fetched_from + self.window_ms
        # An ended session measured whole may reach further back: read those vehicles' sessions in one go.
        reaching_back = [
            vehicle_id for vehicle_id, windows in by_vehicle.items()
            if (span := alerts.measured_span(windows, stop_ms, self.window_ms, self.policy))
            and span[0].stop_ms <= earliest_stop
        ]
        if reaching_back and history is not None:
            by_vehicle.update({vehicle_id: _stops_in(history[vehicle_id], lookback_from, stop_ms)
                               for vehicle_id in reaching_back})
        elif reaching_back:
            longer: dict[str, list[EfficiencyWindow]] = {vehicle_id: [] for vehicle_id in reaching_back}
            for window in self.stores.windows.windows_of(self.window_ms, lookback_from, stop_ms, reaching_back):
                longer[window.vehicle_id].append(window)
            by_vehicle.update(longer)
        return {vehicle_id: alerts.span_verdict(vehicle_id, windows, stop_ms, self.window_ms, self.policy)
                for vehicle_id, windows in by_vehicle.items()}

    def history(self, start_ms: int, end_ms: int, vehicle_ids: Sequence[str]) -> dict[str, list[EfficiencyWindow]]:
        """The windows of ``vehicle_ids`` with stop in (start_ms, end_ms], per vehicle in stop order."""
        by_vehicle: dict[str, list[EfficiencyWindow]] = {}
        for window in self.stores.windows.windows_of(self.window_ms, start_ms, end_ms, vehicle_ids):
            by_vehicle.setdefault(window.vehicle_id, []).append(window)
        return by_vehicle


def _stops_in(windows: Sequence[EfficiencyWindow], start_ms: int, end_ms: int) -> list[EfficiencyWindow]:
    """The windows (in stop order) with stop in (start_ms, end_ms]."""
    first, last = bisect.bisect_right(windows, start_ms, key=_stop), bisect.bisect_right(windows, end_ms, key=_stop)
    return list(windows[first:last])


def _stop(window: EfficiencyWindow) -> int:
    return window.stop_ms


def _hour_chunks(start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """[start, end) cut at whole hours, so one transaction never holds the lock for long."""
    chunks = []
    cursor = start_ms
    while cursor < end_ms:
        boundary = min((cursor // MS_PER_HOUR + 1) * MS_PER_HOUR, end_ms)
        chunks.append((cursor, boundary))
        cursor = boundary
    return chunks


def hold_runner_lock(data_dir: Path) -> int:
    """Take the one-runner-per-data-directory lock; returns the descriptor to keep open."""
    return hold_instance_lock(data_dir / "task-runner.lock",
                              RunnerBusy(f"another task runner is running on {data_dir}"))


def run_forever(runner: TaskRunner, stopping: Callable[[float], bool], clock: Callable[[], float] = time.time) -> None:
    """Run at every window stop + offset until ``stopping(timeout)`` returns True."""
    while True:
        now_ms = int(clock() * 1000)
        try:
            report = runner.run_once(now_ms)
            logger.info("windows up to %s: %d written in %.2f s, %d alert changes",
                        time.strftime("%H:%M", time.gmtime(report.latest_stop_ms / 1000)), report.windows_written,
                        report.duration_s, report.alerts_changed)
        except Exception:  # the runner must outlive a bad run; the next run recomputes everything
            logger.exception("task run failed; retrying at the next window")
        wait_s = max(1.0, (runner.next_run_ms(int(clock() * 1000)) - clock() * 1000) / 1000)
        if stopping(wait_s):
            return
