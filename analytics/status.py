"""The task runner's status as the analytics service reports it (/health, /metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from analytics.schemas import TaskRunnerBody
from chargewatch.efficiency_ports import EfficiencyStores, RunnerStateStore
from webapi.schemas import from_ms


def runner_status(runner_state: RunnerStateStore, window_seconds: int, offset_seconds: int,
                  now: float | None = None) -> TaskRunnerBody:
    """stale when no run finished within two windows (plus the offset) of now."""
    now = time.time() if now is None else now
    state = runner_state.load()
    if "last_run_ms" not in state:
        return TaskRunnerBody(status="never_ran", last_run_at=None, last_window_stop=None, lag_seconds=None,
                              last_duration_seconds=None)
    lag = now - state["last_stop_ms"] / 1000
    fresh = lag <= 2 * window_seconds + offset_seconds
    return TaskRunnerBody(
        status="ok" if fresh else "stale", last_run_at=from_ms(int(state["last_run_ms"])),
        last_window_stop=from_ms(int(state["last_stop_ms"])), lag_seconds=lag,
        last_duration_seconds=state.get("last_duration_s"),
    )


class RunnerCollector(Collector):
    """Gauges read from the store at scrape time: they describe another process (the runner)."""

    def __init__(self, stores: EfficiencyStores) -> None:
        self.stores = stores

    def collect(self) -> Iterable[Metric]:
        state = self.stores.runner_state.load()
        if "last_run_ms" in state:
            yield GaugeMetricFamily("chargewatch_task_last_run_timestamp_seconds", "When the task runner last ran.",
                                    value=state["last_run_ms"] / 1000)
            yield GaugeMetricFamily("chargewatch_task_lag_seconds",
                                    "Now minus the stop of the newest computed efficiency window.",
                                    value=time.time() - state["last_stop_ms"] / 1000)
            yield GaugeMetricFamily("chargewatch_task_last_duration_seconds", "Duration of the last run.",
                                    value=state.get("last_duration_s", 0.0))
            yield GaugeMetricFamily("chargewatch_task_last_windows_written", "Windows written by the last run.",
                                    value=state.get("last_windows_written", 0.0))
        firing = GaugeMetricFamily("chargewatch_alerts_firing", "Alerts firing now, by rule.", labels=["rule"])
        counts: dict[str, int] = {"low_efficiency": 0, "efficiency_above_one": 0}
        for alert in self.stores.alerts.open_alerts():
            if alert.state == "firing":
                counts[alert.rule] = counts.get(alert.rule, 0) + 1
        for rule, count in counts.items():
            firing.add_metric([rule], count)
        yield firing
        notifications = GaugeMetricFamily("chargewatch_notifications",
                                          "Alert notifications (webhooks, Alertmanager) by outcome.",
                                          labels=["outcome"])
        for outcome, count in self.stores.notifications.notification_counts().items():
            notifications.add_metric([outcome], count)
        yield notifications
