"""The outbox and forwarder of influx mode as ingest's ``/metrics`` reports them."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from chargewatch.stores.outbox import Outbox

FORWARDER_STATES = ("shipping", "retrying", "config_error", "stopped")


class OutboxCollector(Collector):
    """Read from the SQLite file at scrape time: the forwarder is another process that serves no HTTP."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterable[Metric]:
        now = time.time()
        stats = self.outbox.stats()
        yield GaugeMetricFamily("chargewatch_outbox_depth", "Readings waiting in the outbox for InfluxDB.",
                                value=stats.depth)
        yield GaugeMetricFamily("chargewatch_outbox_capacity",
                                "Outbox bound; at it ingest answers 503 with Retry-After.", value=stats.max_rows)
        yield GaugeMetricFamily("chargewatch_outbox_lag_seconds",
                                "Age of the oldest reading InfluxDB has not acknowledged yet (0: outbox empty).",
                                value=stats.lag_seconds(int(now * 1000)))
        yield GaugeMetricFamily("chargewatch_outbox_dead_letters",
                                "Lines InfluxDB refused (400) or dropped (422), kept for `chargewatch outbox "
                                "dead-letters`.", value=stats.dead_letters)
        yield CounterMetricFamily("chargewatch_forwarder_shipped_lines", "Lines InfluxDB acknowledged.",
                                  value=stats.shipped_total)
        failures = CounterMetricFamily("chargewatch_forwarder_failures",
                                       "Write requests InfluxDB did not accept, by reason.", labels=["reason"])
        for reason, count in stats.failures.items():
            failures.add_metric([reason], count)
        yield failures
        state = GaugeMetricFamily("chargewatch_forwarder_state",
                                  "1 for the forwarder's current state (config_error: token, org or bucket "
                                  "wrong; nothing ships).", labels=["state"])
        for name in FORWARDER_STATES:
            state.add_metric([name], 1.0 if stats.forwarder_state == name else 0.0)
        yield state
        if stats.heartbeat_ms is not None:
            yield GaugeMetricFamily("chargewatch_forwarder_heartbeat_timestamp_seconds",
                                    "When the forwarder last reported; stale means no forwarder runs.",
                                    value=stats.heartbeat_ms / 1000)
        if stats.last_success_ms is not None:
            yield GaugeMetricFamily("chargewatch_forwarder_last_success_timestamp_seconds",
                                    "When InfluxDB last acknowledged a write.", value=stats.last_success_ms / 1000)
