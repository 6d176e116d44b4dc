"""Every Flux query Grafana runs: dashboard panels, the dashboard variable and the alert rules.

Grafana replaces macros as text before InfluxDB sees a query (``pkg/tsdb/influxdb/flux/macros.go``):
``v.timeRangeStart``/``v.timeRangeStop`` become RFC 3339 times, ``v.windowPeriod`` a duration, and a
dashboard variable such as ``${vehicle_id}`` its value. Vehicle ids are 1-64 characters of
``[A-Za-z0-9._:-]`` (refused otherwise at ingest), so a value pasted into a Flux string literal
cannot break out of it. Grafana's macro pass rewrites any ``<word>.timeRangeStart``,
``<word>.bucket`` and the like, not only ``v.``; so no record here has fields with those names.
The tests substitute macros the same way and type-check every query with the Flux compiler.

Shapes Grafana turns into what the panels expect (``pkg/tsdb/influxdb/flux/builder.go``): the
labels of a series are its table's group key; a table with exactly one ``_time`` and one ``_value``
column besides the group key is a plain time series; everything else is a table. So time series
queries end with ``_time``, ``_value`` and the labels wanted (``vehicle_id``, ``_field``, ``kind``),
and table queries end ungrouped.

Units: the efficiency bucket holds one point per vehicle, meter and window, stamped with the
window's stop (docs/architecture.md "Efficiency windows"); energy is kWh; efficiency a 0-1 ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from chargewatch.settings import AlertSettings, EfficiencySettings

TELEMETRY_BUCKET = "telemetry"
EFFICIENCY_BUCKET = "efficiency"
MONITORING_BUCKET = "monitoring"  # Telegraf writes the services' /metrics here (telegraf/telegraf.conf)
TASKS_BUCKET = "_tasks"  # InfluxDB's own record of task runs



@dataclass(frozen=True)
class AlertLimits:
    """The alert settings as Grafana's rules and panels use them (``CHARGEWATCH_ALERTS__*``)."""

    threshold: float
    resolve_threshold: float  # past the hysteresis, as analytics/alerts.py resolves
    above_one_threshold: float
    above_one_resolve_threshold: float
    min_span_energy_kwh: float
    span: timedelta
    pending: timedelta

    @classmethod
    def from_settings(cls, alerts: AlertSettings) -> AlertLimits:
        return cls(
            threshold=alerts.threshold,
            resolve_threshold=round(alerts.threshold + alerts.hysteresis, 6),
            above_one_threshold=alerts.above_one_threshold,
            above_one_resolve_threshold=round(alerts.above_one_threshold - alerts.hysteresis, 6),
            min_span_energy_kwh=alerts.min_span_energy_kwh,
            span=timedelta(minutes=alerts.span_minutes),
            pending=timedelta(minutes=alerts.pending_minutes),
        )


# The defaults: the committed dashboards and rules are generated from them.
DEFAULT_LIMITS = AlertLimits.from_settings(AlertSettings())
_WINDOWS = EfficiencySettings()
THRESHOLD = DEFAULT_LIMITS.threshold
RESOLVE_THRESHOLD = DEFAULT_LIMITS.resolve_threshold
ABOVE_ONE_THRESHOLD = DEFAULT_LIMITS.above_one_threshold
ABOVE_ONE_RESOLVE_THRESHOLD = DEFAULT_LIMITS.above_one_resolve_threshold
MIN_SPAN_ENERGY_KWH = DEFAULT_LIMITS.min_span_energy_kwh
SPAN = DEFAULT_LIMITS.span
PENDING = DEFAULT_LIMITS.pending
WINDOW = timedelta(seconds=_WINDOWS.window_seconds)
ACTIVE_WINDOW_KWH = 0.1  # a window with this much energy on either side is charging (analytics/alerts.py)
TASK_STALE_AFTER = timedelta(seconds=2 * _WINDOWS.window_seconds + _WINDOWS.offset_seconds)

# The readings' and the services' names as ingest's and analytics' /metrics expose them
# (webapi/metrics.py, ingest/status.py), scraped by Telegraf's prometheus input with
# metric_version = 2: measurement "prometheus", one field per metric, labels as tags.
PROMETHEUS_MEASUREMENT = "prometheus"
METRIC_ACCEPTED = "chargewatch_readings_accepted_total"
METRIC_REJECTED = "chargewatch_readings_rejected_total"
METRIC_DUPLICATE = "chargewatch_readings_duplicate_total"
METRIC_UNPAIRED = "chargewatch_readings_unpaired_total"
METRIC_OUTBOX_DEPTH = "chargewatch_outbox_depth"
METRIC_OUTBOX_CAPACITY = "chargewatch_outbox_capacity"
METRIC_OUTBOX_LAG = "chargewatch_outbox_lag_seconds"
METRIC_DEAD_LETTERS = "chargewatch_outbox_dead_letters"
METRIC_SHIPPED = "chargewatch_forwarder_shipped_lines_total"
METRIC_FORWARDER_FAILURES = "chargewatch_forwarder_failures_total"
METRIC_FORWARDER_STATE = "chargewatch_forwarder_state"
METRIC_FORWARDER_HEARTBEAT = "chargewatch_forwarder_heartbeat_timestamp_seconds"
METRICS = (
    METRIC_ACCEPTED, METRIC_REJECTED, METRIC_DUPLICATE, METRIC_UNPAIRED, METRIC_OUTBOX_DEPTH,
    METRIC_OUTBOX_CAPACITY, METRIC_OUTBOX_LAG, METRIC_DEAD_LETTERS, METRIC_SHIPPED, METRIC_FORWARDER_FAILURES,
    METRIC_FORWARDER_STATE, METRIC_FORWARDER_HEARTBEAT,
)  # fmt: skip

VEHICLE_VARIABLE = "vehicle_id"


def flux_duration(value: timedelta) -> str:
    """A Flux duration literal in the largest whole unit: 300 s -> ``5m``."""
    seconds = int(value.total_seconds())
    if seconds <= 0 or seconds != value.total_seconds():
        raise ValueError(f"{value} is not a positive whole number of seconds")
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _render(template: str, **values: object) -> str:
    """Fill ``<<name>>`` placeholders (Flux itself uses braces and ``${}``, so those stay literal)."""
    text = template
    for name, value in values.items():
        text = text.replace(f"<<{name}>>", str(value))
    if "<<" in text:
        raise ValueError(f"unfilled placeholder in:\n{text}")
    return text.strip() + "\n"


# Folds ac_kwh and dc_kwh rows into one record per table, so a ratio of sums needs no join or
# pivot (a pivot merges only rows of one table; a join fails on an empty side).
_SUM_AC_DC = """
    |> reduce(
        identity: {ac_kwh: 0.0, dc_kwh: 0.0},
        fn: (r, accumulator) => ({
            ac_kwh: if r._field == "ac_kwh" then accumulator.ac_kwh + r._value else accumulator.ac_kwh,
            dc_kwh: if r._field == "dc_kwh" then accumulator.dc_kwh + r._value else accumulator.dc_kwh,
        }),
    )""".strip("\n")

_ENERGY_ROWS = """
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "efficiency" and (r._field == "ac_kwh" or r._field == "dc_kwh"))""".strip("\n")

_VEHICLE_ENERGY_ROWS = """
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "efficiency" and (r._field == "ac_kwh" or r._field == "dc_kwh"))
    |> filter(fn: (r) => r.vehicle_id == "${<<variable>>}")""".strip("\n")


def _common(template: str, **values: object) -> str:
    return _render(
        template.replace("<<energy_rows>>", _ENERGY_ROWS).replace("<<vehicle_energy_rows>>", _VEHICLE_ENERGY_ROWS)
        .replace("<<sum_ac_dc>>", _SUM_AC_DC),
        bucket=EFFICIENCY_BUCKET, variable=VEHICLE_VARIABLE, **values,
    )


# -- alert rules -----------------------------------------------------------------------------------

# Query A of both alert rules. The rule's relativeTimeRange is the trailing span, so
# v.timeRangeStart/Stop select the windows that closed in it. One table per vehicle (group key
# vehicle_id only: a vehicle whose pairing changed inside the span is still one instance), holding
# one row: _time, _value = DC / AC as a ratio of sums, and only when enough AC energy flowed.
#
# The span's edges are placed where they cancel, as chargewatch's own evaluator places them
# (analytics/alerts.py, "How the span is measured"): a meter and its vehicle stamp the same interval
# up to a minute apart, so at a session's start or end one reading's energy sits on one side only.
# Run on a simulated healthy fleet, the plain trailing sum fired at session edges (and after lost
# readings) for most vehicles every day. So:
# - within a window whose sides hold different counts of readings, the side with fewer is scaled up
#   to the other's count (a reading lost in transit is not lost energy);
# - a session's first window is left out when the session began inside the span (the window
#   before it, read from one window earlier, was idle);
# - a span whose oldest window charges while its newest is idle (a session that ended, cut by the
#   span's start) gives no verdict.
def trailing_efficiency_per_vehicle(min_span_energy_kwh: float) -> str:
    """The alert rules' query A: each vehicle's DC/AC over the trailing span, where enough AC flowed."""
    return _render(_TRAILING_EFFICIENCY_PER_VEHICLE, bucket=EFFICIENCY_BUCKET, window=flux_duration(WINDOW),
                   active_energy=ACTIVE_WINDOW_KWH, min_energy=min_span_energy_kwh)


_TRAILING_EFFICIENCY_PER_VEHICLE = """
import "date"

from(bucket: "<<bucket>>")
    |> range(start: date.sub(d: <<window>>, from: v.timeRangeStart), stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "efficiency" and (r._field == "ac_kwh" or r._field == "dc_kwh" or r._field == "ac_readings" or r._field == "dc_readings"))
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> map(fn: (r) => ({r with
        active: if r.ac_kwh >= <<active_energy>> or r.dc_kwh >= <<active_energy>> then 1 else 0,
        ac: if r.ac_readings > 0 and r.ac_readings < r.dc_readings then r.ac_kwh * float(v: r.dc_readings) / float(v: r.ac_readings) else r.ac_kwh,
        dc: if r.dc_readings > 0 and r.dc_readings < r.ac_readings then r.dc_kwh * float(v: r.ac_readings) / float(v: r.dc_readings) else r.dc_kwh,
    }))
    |> group(columns: ["vehicle_id"])
    |> sort(columns: ["_time"])
    |> duplicate(column: "active", as: "started")
    |> difference(columns: ["started"], keepFirst: true)
    |> filter(fn: (r) => r._time >= v.timeRangeStart and not (exists r.started and r.started == 1))
    |> reduce(
        identity: {ac_kwh: 0.0, dc_kwh: 0.0, oldest_active: -1, newest_active: 0},
        fn: (r, accumulator) => ({
            ac_kwh: accumulator.ac_kwh + r.ac,
            dc_kwh: accumulator.dc_kwh + r.dc,
            oldest_active: if accumulator.oldest_active == -1 then r.active else accumulator.oldest_active,
            newest_active: r.active,
        }),
    )
    |> filter(fn: (r) => r.ac_kwh >= <<min_energy>> and not (r.oldest_active == 1 and r.newest_active == 0))
    |> map(fn: (r) => ({vehicle_id: r.vehicle_id, _time: v.timeRangeStop, _value: r.dc_kwh / r.ac_kwh}))
"""
TRAILING_EFFICIENCY_PER_VEHICLE = trailing_efficiency_per_vehicle(MIN_SPAN_ENERGY_KWH)

# -- Fleet overview ---------------------------------------------------------------------------------

FLEET_EFFICIENCY = _common("""
<<energy_rows>>
    |> group()
<<sum_ac_dc>>
    |> filter(fn: (r) => r.ac_kwh > 0.0)
    |> map(fn: (r) => ({_value: r.dc_kwh / r.ac_kwh}))
""")

VEHICLES_BELOW_THRESHOLD = _common("""
<<energy_rows>>
    |> group(columns: ["vehicle_id"])
<<sum_ac_dc>>
    |> filter(fn: (r) => r.ac_kwh >= <<min_energy>> and r.dc_kwh < <<threshold>> * r.ac_kwh)
    |> group()
    |> count(column: "vehicle_id")
    |> rename(columns: {vehicle_id: "_value"})
""", min_energy=MIN_SPAN_ENERGY_KWH, threshold=THRESHOLD)

# Windows are stamped with their stop: shifting them back one window length stamps each with its
# start, so aggregateWindow sums every window into the period it belongs to.
FLEET_ENERGY = _common("""
<<energy_rows>>
    |> group(columns: ["_field"])
    |> timeShift(duration: -<<window>>)
    |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)
""", window=flux_duration(WINDOW))

WORST_VEHICLES = _common("""
<<energy_rows>>
    |> group(columns: ["vehicle_id"])
<<sum_ac_dc>>
    |> filter(fn: (r) => r.ac_kwh >= <<min_energy>>)
    |> map(fn: (r) => ({vehicle_id: r.vehicle_id, efficiency: r.dc_kwh / r.ac_kwh, ac_kwh: r.ac_kwh, dc_kwh: r.dc_kwh}))
    |> group()
    |> sort(columns: ["efficiency"])
    |> limit(n: 10)
""", min_energy=MIN_SPAN_ENERGY_KWH)

# The newest state of charge of every vehicle that reported in the last hour (a vehicle whose
# pairing changed has two series: the newest reading wins).
STATE_OF_CHARGE_NOW = _render("""
from(bucket: "<<bucket>>")
    |> range(start: -1h)
    |> filter(fn: (r) => r._measurement == "vehicle" and r._field == "soc")
    |> last()
    |> group(columns: ["vehicle_id"])
    |> sort(columns: ["_time"])
    |> last()
    |> group()
    |> keep(columns: ["vehicle_id", "_value"])
""", bucket=TELEMETRY_BUCKET)

# Readings that reached InfluxDB, per second: counted per series where the data lives (a pushed-down
# aggregate), then summed per kind into the same periods.
STORED_READINGS_RATE = _render("""
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => (r._measurement == "meter" and r._field == "kwh_consumed_ac") or (r._measurement == "vehicle" and r._field == "kwh_delivered_dc"))
    |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false, timeSrc: "_start")
    |> group(columns: ["_measurement"])
    |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)
    |> map(fn: (r) => ({r with _value: float(v: r._value) * 1000000000.0 / float(v: int(v: v.windowPeriod))}))
""", bucket=TELEMETRY_BUCKET)

# -- Vehicle detail ---------------------------------------------------------------------------------

VEHICLE_IDS = _render("""
import "influxdata/influxdb/schema"

schema.tagValues(bucket: "<<bucket>>", tag: "vehicle_id", predicate: (r) => r._measurement == "vehicle", start: -30d)
""", bucket=TELEMETRY_BUCKET)

VEHICLE_EFFICIENCY_OVER_RANGE = _common("""
<<vehicle_energy_rows>>
    |> group()
<<sum_ac_dc>>
    |> filter(fn: (r) => r.ac_kwh > 0.0)
    |> map(fn: (r) => ({_value: r.dc_kwh / r.ac_kwh}))
""")

VEHICLE_ENERGY_OVER_RANGE = _common("""
<<vehicle_energy_rows>>
    |> group()
<<sum_ac_dc>>
""")

VEHICLE_WINDOW_EFFICIENCY = _common("""
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "efficiency" and r._field == "efficiency")
    |> filter(fn: (r) => r.vehicle_id == "${<<variable>>}")
    |> group(columns: ["_field"])
    |> sort(columns: ["_time"])
    |> keep(columns: ["_time", "_value", "_field"])
""")

# The alert's measure as a line: at each window stop T, DC / AC summed over the span ending at T
# (windows stamped T - span + window ... T), shown only with enough AC energy. Sliding windows
# of the span, stepping one window; a span cut short by the range's edges is left out. The range
# ends one window after the dashboard's: the sliding window holding the newest point T stops at
# T + window, after now for the first window length after T, and would be cut short (the line
# lagged one window behind the data); stamps beyond now do not exist, so nothing later shows.
VEHICLE_TRAILING_EFFICIENCY = _common("""
import "date"

from(bucket: "<<bucket>>")
    |> range(start: date.sub(d: <<span>>, from: v.timeRangeStart), stop: date.add(d: <<window>>, to: v.timeRangeStop))
    |> filter(fn: (r) => r._measurement == "efficiency" and (r._field == "ac_kwh" or r._field == "dc_kwh"))
    |> filter(fn: (r) => r.vehicle_id == "${<<variable>>}")
    |> group()
    |> window(every: <<window>>, period: <<span>>)
<<sum_ac_dc>>
    |> filter(fn: (r) => int(v: r._stop) - int(v: r._start) == int(v: <<span>>) and r.ac_kwh >= <<min_energy>>)
    |> map(fn: (r) => ({r with _time: date.sub(d: <<window>>, from: r._stop), _value: r.dc_kwh / r.ac_kwh}))
    |> group()
    |> keep(columns: ["_time", "_value"])
    |> sort(columns: ["_time"])
""", span=flux_duration(SPAN), window=flux_duration(WINDOW), min_energy=MIN_SPAN_ENERGY_KWH)

VEHICLE_WINDOW_ENERGY = _common("""
<<vehicle_energy_rows>>
    |> group(columns: ["_field"])
    |> sort(columns: ["_time"])
    |> keep(columns: ["_time", "_value", "_field"])
""")


def _vehicle_reading(field: str) -> str:
    return _render("""
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "vehicle" and r._field == "<<field>>")
    |> filter(fn: (r) => r.vehicle_id == "${<<variable>>}")
    |> group(columns: ["_field"])
    |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)
""", bucket=TELEMETRY_BUCKET, field=field, variable=VEHICLE_VARIABLE)


VEHICLE_STATE_OF_CHARGE = _vehicle_reading("soc")
VEHICLE_BATTERY_TEMPERATURE = _vehicle_reading("battery_temp")

# -- Ingest health ----------------------------------------------------------------------------------


def _metric_rows(metric: str) -> str:
    return _render("""
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "<<measurement>>" and r._field == "<<metric>>")
""", bucket=MONITORING_BUCKET, measurement=PROMETHEUS_MEASUREMENT, metric=metric).rstrip("\n")


def counter_rate(metric: str, by: str) -> str:
    """Per-second rate of a counter, summed over scraped instances, one series per ``by`` value.

    The rate is taken per scraped series (a restart resets a counter: that step is dropped),
    averaged per period, then summed across instances into the same periods.
    """
    return _render("""
<<rows>>
    |> derivative(unit: 1s, nonNegative: true)
    |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false, timeSrc: "_start")
    |> group(columns: ["<<by>>"])
    |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)
""", rows=_metric_rows(metric), by=by)


def gauge_max(metric: str) -> str:
    """A gauge's largest value per period over every scraped instance (they report one outbox).

    Only ``_field`` stays besides time and value: ``max`` is a selector and keeps its row's other
    columns, and Grafana would label the series with the scraped ``url`` of its first row (and the
    panel's rename by field name would then miss it).
    """
    return _render("""
<<rows>>
    |> keep(columns: ["_time", "_value", "_field"])
    |> group(columns: ["_field"])
    |> aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)
""", rows=_metric_rows(metric))


def gauge_last(metric: str) -> str:
    """A gauge's newest value."""
    return _render("""
<<rows>>
    |> last()
    |> group()
    |> sort(columns: ["_time"])
    |> last()
    |> keep(columns: ["_value"])
""", rows=_metric_rows(metric))


READINGS_ACCEPTED_RATE = counter_rate(METRIC_ACCEPTED, "kind")
READINGS_REJECTED_RATE = counter_rate(METRIC_REJECTED, "reason")
READINGS_DUPLICATE_RATE = counter_rate(METRIC_DUPLICATE, "_field")
READINGS_UNPAIRED_RATE = counter_rate(METRIC_UNPAIRED, "kind")
OUTBOX_DEPTH = gauge_max(METRIC_OUTBOX_DEPTH)
OUTBOX_CAPACITY = gauge_max(METRIC_OUTBOX_CAPACITY)
FORWARDER_LAG = gauge_max(METRIC_OUTBOX_LAG)
FORWARDER_SHIPPED_RATE = counter_rate(METRIC_SHIPPED, "_field")
FORWARDER_FAILURE_RATE = counter_rate(METRIC_FORWARDER_FAILURES, "reason")
DEAD_LETTERS = gauge_last(METRIC_DEAD_LETTERS)

# The state whose gauge is 1 in the newest scrape.
FORWARDER_STATE = _render("""
<<rows>>
    |> last()
    |> group()
    |> sort(columns: ["_time"], desc: true)
    |> limit(n: 1)
    |> keep(columns: ["state"])
""", rows=_metric_rows(METRIC_FORWARDER_STATE) + "\n    |> filter(fn: (r) => r._value == 1.0)")

# Seconds since the forwarder last reported (it reports every 5 s while running).
FORWARDER_LAST_SEEN = _render("""
<<rows>>
    |> last()
    |> group()
    |> sort(columns: ["_value"], desc: true)
    |> limit(n: 1)
    |> map(fn: (r) => ({_value: float(v: int(v: now())) / 1000000000.0 - r._value}))
""", rows=_metric_rows(METRIC_FORWARDER_HEARTBEAT))

# The efficiency task's lag, measured where its output lands, so it holds for either engine (the
# Flux task in InfluxDB or chargewatch's own runner): now minus the stop of the newest window.
EFFICIENCY_TASK_LAG = _render("""
from(bucket: "<<bucket>>")
    |> range(start: -7d)
    |> filter(fn: (r) => r._measurement == "efficiency" and r._field == "ac_kwh")
    |> last()
    |> group()
    |> sort(columns: ["_time"], desc: true)
    |> limit(n: 1)
    |> map(fn: (r) => ({_value: float(v: int(v: now()) - int(v: r._time)) / 1000000000.0}))
""", bucket=EFFICIENCY_BUCKET)

# Every Flux task run InfluxDB recorded, counted per period and status (success, failed).
TASK_RUNS = _render("""
from(bucket: "<<bucket>>")
    |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
    |> filter(fn: (r) => r._measurement == "runs" and r._field == "runID")
    |> group(columns: ["status"])
    |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)
""", bucket=TASKS_BUCKET)
