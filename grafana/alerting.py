"""The Grafana alert rules as code: the low-efficiency and data-quality rules of docs/alerts.md.

Built with grafana-foundation-sdk's alerting and expression builders, which model the HTTP
provisioning API; :func:`rule_group_file` maps them to the file-provisioning format Grafana reads
from ``provisioning/alerting`` (``pkg/services/provisioning/alerting/rules_types.go``): the group
carries ``name``, ``folder`` (a title) and ``interval`` as a duration string; a rule links to a panel
with ``dashboardUid``/``panelId``.

Both rules evaluate query A (``queries.trailing_efficiency_per_vehicle``) over the trailing span:
DC / AC as a ratio of sums per vehicle, only where enough AC flowed, one series per vehicle, so
Grafana keeps one alert instance per vehicle. B reduces each series to its value; C compares it
with the threshold and, through the recovery threshold (``unloadEvaluator``), resolves only past the
hysteresis margin, as chargewatch's own evaluator does (``analytics/alerts.py``). Like that
evaluator, query A scales a window's side that lost readings and keeps the span's edges where meter
and vehicle clocks cancel (queries.py says how); unlike it, a session that has ended is not measured
whole: its span gives no verdict (Grafana's noDataState OK resolves the alert).
"""

from __future__ import annotations

from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting, expr
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.alerting import RelativeTimeRange
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from grafana import panels, queries

ORG_ID = 1
GROUP_NAME = "chargewatch-efficiency"
FOLDER_TITLE = "Chargewatch alerts"  # not the dashboards' folder: each provisioner creates its own by title
INTERVAL_SECONDS = 60  # a multiple of Grafana's 10 s scheduler tick; windows close every 5 min
EXPRESSION_UID = "__expr__"
EXPRESSION_DATASOURCE = DataSourceRef(type_val=EXPRESSION_UID, uid=EXPRESSION_UID)
# The threshold comparisons the rules use (Grafana's threshold evaluator types).
Comparison = Literal["gt", "lt"]
# The rule names and alert names of chargewatch's own evaluator (analytics/alerts.py; a test keeps
# them equal), so a webhook receiver sees the same alertname from either source. Not imported:
# importing the analytics package builds its Flask and metrics machinery.
LOW = "low_efficiency"
ABOVE_ONE = "efficiency_above_one"
ALERT_NAMES = {LOW: "ChargingEfficiencyLow", ABOVE_ONE: "ChargingEfficiencyAboveOne"}


class AlertFluxQuery(cogvariants.Dataquery):
    """Query A's model: a Flux query of the provisioned InfluxDB data source."""

    def __init__(self, query: str) -> None:
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {"datasource": panels.DATASOURCE.to_json(), "intervalMs": 60_000, "maxDataPoints": 43_200,
                "query": self.query, "refId": "A"}


class _AlertFlux(cogbuilder.Builder[AlertFluxQuery]):
    def __init__(self, query: str) -> None:
        self._internal = AlertFluxQuery(query)

    def build(self) -> AlertFluxQuery:
        return self._internal


def _queries(limits: queries.AlertLimits, condition_type: Comparison, threshold: float, resolve_type: Comparison,
             resolve_threshold: float) -> list[Any]:
    span_seconds = int(limits.span.total_seconds())
    return [
        alerting.Query("A").datasource_uid(panels.DATASOURCE_UID)
        .relative_time_range(RelativeTimeRange(from_val=span_seconds, to=0))
        .model(_AlertFlux(queries.trailing_efficiency_per_vehicle(limits.min_span_energy_kwh))),
        alerting.Query("B").datasource_uid(EXPRESSION_UID)
        .model(expr.TypeReduce().ref_id("B").datasource(EXPRESSION_DATASOURCE).expression("A").reducer("last")
               .settings(expr.ExprTypeReduceSettings().mode("dropNN"))),
        alerting.Query("C").datasource_uid(EXPRESSION_UID)
        .model(expr.TypeThreshold().ref_id("C").datasource(EXPRESSION_DATASOURCE).expression("B").conditions([
            expr.ExprTypeThresholdConditions()
            .evaluator(expr.ExprTypeThresholdConditionsEvaluator().type(condition_type).params([threshold]))
            .unload_evaluator(expr.ExprTypeThresholdConditionsUnloadEvaluator().type(resolve_type)
                              .params([resolve_threshold]))
        ])),
    ]


def _rule(limits: queries.AlertLimits, uid: str, rule: str, condition_type: Comparison, threshold: float,
          resolve_type: Comparison, resolve_threshold: float, severity: str, summary: str, description: str
          ) -> alerting.Rule:
    builder = (
        alerting.Rule(ALERT_NAMES[rule]).uid(uid).condition("C")
        .queries(_queries(limits, condition_type, threshold, resolve_type, resolve_threshold))
        .for_val(queries.flux_duration(limits.pending))
        # No vehicle with enough energy in the span (an idle fleet) is no verdict, not an alert.
        .no_data_state("OK").exec_err_state("Error")
        .labels({"severity": severity, "rule": rule})
        .annotations({"summary": summary, "description": description})
    )
    return builder


def rules(limits: queries.AlertLimits = queries.DEFAULT_LIMITS) -> list[alerting.Rule]:
    """The two rules, with the thresholds, span, pending time and least energy of ``limits``."""
    span = panels.minutes(limits.span)
    pending = panels.minutes(limits.pending)
    energy = f"at least {limits.min_span_energy_kwh} kWh of AC"
    return [
        _rule(
            limits, "chargewatch-efficiency-low", LOW, "lt", limits.threshold, "gt", limits.resolve_threshold,
            "warning",
            "{{ $labels.vehicle_id }}: charging efficiency {{ humanizePercentage $values.B.Value }} over the last "
            f"{span}, below {limits.threshold:.0%}",
            f"DC delivered / AC consumed over the trailing {span} ({energy}) has been below "
            f"{limits.threshold:.0%} for {pending}: a charger fault or leakage. Resolves above "
            f"{limits.resolve_threshold:.0%}.",
        ),
        _rule(
            limits, "chargewatch-efficiency-above-one", ABOVE_ONE, "gt", limits.above_one_threshold, "lt",
            limits.above_one_resolve_threshold, "info",
            "{{ $labels.vehicle_id }}: DC delivered exceeds AC consumed ({{ humanizePercentage $values.B.Value }} "
            f"over the last {span})",
            f"Efficiency above {limits.above_one_threshold:.0%} over the trailing {span} ({energy}) for {pending} "
            "is impossible: the meter or the vehicle-meter pairing is wrong (data quality). Resolves below "
            f"{limits.above_one_resolve_threshold:.0%}.",
        ),
    ]


def _file_rule(rule: alerting.Rule) -> dict[str, Any]:
    """An SDK rule (HTTP API shape) as a file-provisioning rule."""
    api = _plain(rule.build())
    # Expressions take no time range of their own; Grafana stores them with an empty one.
    data = [{"refId": query["refId"], "relativeTimeRange": query.get("relativeTimeRange", {"from": 0, "to": 0}),
             "datasourceUid": query["datasourceUid"], "model": query["model"]} for query in api["data"]]
    return {
        "uid": api["uid"],
        "title": api["title"],
        "condition": api["condition"],
        "data": data,
        "dashboardUid": panels.VEHICLE_UID,
        "panelId": panels.VEHICLE_EFFICIENCY_PANEL_ID,
        "noDataState": api["noDataState"],
        "execErrState": api["execErrState"],
        "for": api["for"],
        "labels": api["labels"],
        "annotations": api["annotations"],
        "isPaused": False,
    }


def _plain(value: Any) -> Any:
    """SDK models (and their nested models) as plain JSON values."""
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return _plain(to_json())
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def rule_group_file(limits: queries.AlertLimits = queries.DEFAULT_LIMITS) -> dict[str, Any]:
    """``provisioning/alerting/rules.yaml`` as data."""
    return {
        "apiVersion": 1,
        "groups": [{
            "orgId": ORG_ID,
            "name": GROUP_NAME,
            "folder": FOLDER_TITLE,
            "interval": f"{INTERVAL_SECONDS}s",
            "rules": [_file_rule(rule) for rule in rules(limits)],
        }],
    }
