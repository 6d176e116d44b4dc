"""Alert replay: the alert rules run again over past window stops, for history that arrived late.

A backfill (or a gateway's buffered hours) lands after the runner has judged those hours on the
trailing span alone, so a fault that began in them raises no alert, or one stamped with the time
the runner first saw it. A replay over (since, until] steps the same state machine
(:func:`chargewatch.alerts.evaluate`) through every window stop in order, starting from the alerts
that were open before ``since``, and then makes the stored alerts that started in the range
exactly what it found, marked ``replayed``, with their real times: idempotent, so replaying twice
changes nothing. An alert still open at ``until`` stays open and the live runner carries it on.
Webhooks are sent for the replay's firings and resolutions only when asked (``notify``): those
events are in the past. The runner's own replays announce only alerts that still fire at the end
of the replayed range (current conditions), unless ``CHARGEWATCH_ALERTS__REPLAY_NOTIFY`` asks for all.

The task runner replays by itself (capped at a day of windows): on its first run, the history
before its first live span, and on later runs, the hours late readings marked stale. It also runs
replays that ``chargewatch alerts replay`` queues while it holds the runner lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from chargewatch import alerts
from chargewatch.efficiency_ports import AlertRecord

if TYPE_CHECKING:
    from taskrunner.runner import TaskRunner

logger = logging.getLogger(__name__)

# runner_state keys of a replay queued for the running task runner
REQUEST_SINCE, REQUEST_UNTIL, REQUEST_NOTIFY, REQUEST_AT = (
    "replay_since_ms", "replay_until_ms", "replay_notify", "replay_requested_ms")
DONE_AT, DONE_ALERTS = "replay_done_ms", "replay_done_alerts"


@dataclass(frozen=True)
class ReplayReport:
    since_ms: int
    until_ms: int
    stops: int
    alerts: list[AlertRecord]  # what the range now holds (cancelled breaches left out)
    removed: int  # stored alerts of the range it replaced
    notifications: int
    duration_s: float


def replay(runner: TaskRunner, since_ms: int, until_ms: int, now_ms: int, *, notify: bool = False,
           notify_still_firing: bool = False, vehicle_ids: Collection[str] | None = None) -> ReplayReport:
    """Evaluate the alert rules at every window stop in (since_ms, until_ms] (aligned down to window
    stops) and store what they find in place of the range's alerts. ``notify``: webhooks for every
    firing and resolution found; ``notify_still_firing``: only for alerts found firing that still
    fire at ``until`` (a current condition, which the live runner would otherwise never announce).
    ``vehicle_ids``: replay only these vehicles (a verdict depends on its vehicle's windows alone, so
    the others' alerts, judged on windows that have not changed, stay as they are)."""
    started = time.perf_counter()
    window_ms = runner.window_ms
    since_ms = since_ms // window_ms * window_ms
    until_ms = until_ms // window_ms * window_ms
    alert_store, policy = runner.stores.alerts, runner.policy
    # Alerts open at ``since`` carry on through the range, as they were then: one that fired by then
    # as firing (resolved since: firing again, so the replay resolves it at its real time), one that
    # started by then and fired or was resolved later as pending (else the replay would find it a
    # second time, from a later start, beside the stored one).
    only = None if vehicle_ids is None else set(vehicle_ids)
    carried: dict[tuple[str, str], AlertRecord] = {}
    for a in alert_store.open_alerts() + alert_store.recent_alerts(since_ms, limit=1_000_000):
        if a.started_ms > since_ms or (only is not None and a.vehicle_id not in only):
            continue
        if a.fired_ms is not None and a.fired_ms <= since_ms:
            carried[(a.vehicle_id, a.rule)] = replace(a, state="firing", resolved_ms=None)
        else:
            carried[(a.vehicle_id, a.rule)] = replace(a, state="pending", fired_ms=None, resolved_ms=None)
    chosen = None if only is None else sorted(only)
    # The chosen vehicles' windows, read once for every stop of the range.
    history = None if chosen is None else runner.history(since_ms - alerts.lookback_ms(policy), until_ms, chosen)
    open_now = dict(carried)
    found: dict[tuple[str, str, int], AlertRecord] = {}
    events: list[tuple[AlertRecord, str]] = []
    stops = 0
    for stop in range(since_ms + window_ms, until_ms + 1, window_ms):
        stops += 1
        records, stepped = alerts.evaluate(open_now.values(), runner.verdicts_at(stop, history), stop, policy)
        for record in records:
            record = record if (record.vehicle_id, record.rule) in carried and record.started_ms <= since_ms \
                else replace(record, replayed=True)
            found[(record.vehicle_id, record.rule, record.started_ms)] = record
            if record.state in ("pending", "firing"):
                open_now[(record.vehicle_id, record.rule)] = record
            else:
                open_now.pop((record.vehicle_id, record.rule), None)
        events += stepped
    # A carried alert keeps its row whatever the replay makes of it (cancelled included: it was open).
    kept = [r for r in found.values() if r.state != "cancelled" or r.started_ms <= since_ms]
    if not notify:  # only the firings of alerts that still fire at ``until``, as they are there
        events = [(now, status) for r, status in events
                  if notify_still_firing and status == "firing" and r.replayed
                  and (now := open_now.get((r.vehicle_id, r.rule))) is not None
                  and now.started_ms == r.started_ms and now.state == "firing"]
    notifications = runner.notifications(events)
    removed = alert_store.replace_alerts(since_ms, until_ms, kept, notifications, now_ms, vehicle_ids=chosen)
    report = ReplayReport(since_ms, until_ms, stops, sorted(kept, key=lambda r: (r.started_ms, r.vehicle_id)),
                          removed, len(notifications), time.perf_counter() - started)
    logger.info("replayed alerts over %d window stops: %d alerts (%d replaced), %d notifications", stops,
                len(kept), removed, len(notifications))
    return report


def queue_request(runner: TaskRunner, since_ms: int, until_ms: int, notify: bool, now_ms: int) -> None:
    """Ask the running task runner to replay at its next run."""
    runner.stores.runner_state.update({REQUEST_SINCE: since_ms, REQUEST_UNTIL: until_ms, REQUEST_NOTIFY: int(notify),
                                   REQUEST_AT: now_ms})


def run_queued_request(runner: TaskRunner, now_ms: int) -> ReplayReport | None:
    """The runner's side of :func:`queue_request`: replay once per request."""
    state = runner.stores.runner_state.load()
    requested = state.get(REQUEST_AT)
    if requested is None or state.get(DONE_AT, -1) >= requested:
        return None
    report = replay(runner, int(state[REQUEST_SINCE]), int(state[REQUEST_UNTIL]), now_ms,
                    notify=bool(state.get(REQUEST_NOTIFY)))
    runner.stores.runner_state.update({DONE_AT: requested, DONE_ALERTS: len(report.alerts)})
    return report
