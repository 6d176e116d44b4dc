"""The three dashboards as code (grafana-foundation-sdk builders): Fleet overview, Vehicle detail,
Ingest health. Every query comes from ``grafana/queries.py``; every panel and target names the
provisioned InfluxDB data source by its fixed uid (``grafana/provisioning/datasources``).

Panel ids and grid positions are explicit: alert rules link to a panel by id
(``grafana/alerting.py``), and a stable layout keeps the generated JSON diff-friendly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, histogram, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    GridPos,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

from grafana import queries

DATASOURCE_UID = "chargewatch-influxdb"
DATASOURCE = DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)
GRAFANA_BUILTIN = DataSourceRef(type_val="grafana", uid="-- Grafana --")  # the built-in annotations source
TAG = "chargewatch"

FLEET_UID = "chargewatch-fleet"
VEHICLE_UID = "chargewatch-vehicle"
INGEST_UID = "chargewatch-ingest"
VEHICLE_EFFICIENCY_PANEL_ID = 3  # the alert rules link here: their state changes annotate it

RATIO_THRESHOLDS = [Threshold(value=None, color="red"), Threshold(value=queries.THRESHOLD, color="green")]


class FluxTarget(cogvariants.Dataquery):
    """A Flux query of the InfluxDB data source (the SDK has no InfluxDB query type)."""

    def __init__(self, ref_id: str, query: str) -> None:
        self.ref_id = ref_id
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {"datasource": DATASOURCE.to_json(), "query": self.query, "refId": self.ref_id}


class Flux(cogbuilder.Builder[FluxTarget]):
    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = FluxTarget(ref_id, query)

    def build(self) -> FluxTarget:
        return self._internal


def minutes(value: timedelta) -> str:
    """A duration for people: ``5 min``."""
    return f"{int(value.total_seconds() // 60)} min"


def _thresholds(steps: Sequence[Threshold]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(list(steps))


def _rename(name: str, display_name: str) -> tuple[str, list[DynamicConfigValue]]:
    return name, [DynamicConfigValue(id_val="displayName", value=display_name)]


def _place(panel: Any, panel_id: int, x: int, y: int, w: int, h: int, title: str, description: str,
           targets: Sequence[Flux]) -> Any:
    panel.id(panel_id).title(title).description(description).datasource(DATASOURCE)
    panel.grid_pos(GridPos(h=h, w=w, x=x, y=y))
    for target in targets:
        panel.with_target(target)
    return panel


def _timeseries(panel_id: int, x: int, y: int, w: int, h: int, title: str, description: str,
                targets: Sequence[Flux], unit: str, renames: Sequence[tuple[str, str]] = (),
                min_interval: str | None = None, bars: bool = False) -> timeseries.Panel:
    panel = _place(timeseries.Panel(), panel_id, x, y, w, h, title, description, targets)
    panel.unit(unit).legend(common_builders.VizLegendOptions().show_legend(True).display_mode(
        common.LegendDisplayMode.LIST).placement(common.LegendPlacement.BOTTOM))
    panel.tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.NONE))
    if bars:
        panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60).line_width(1)
    else:
        panel.draw_style(common.GraphDrawStyle.LINE).line_width(2).fill_opacity(10).show_points(
            common.VisibilityMode.NEVER)
    if min_interval:
        panel.interval(min_interval)
    for name, display_name in renames:
        panel.override_by_name(*_rename(name, display_name))
    return panel


def _stat(panel_id: int, x: int, y: int, w: int, h: int, title: str, description: str, targets: Sequence[Flux],
          unit: str, fields: str = "", no_value: str | None = None) -> stat.Panel:
    panel = _place(stat.Panel(), panel_id, x, y, w, h, title, description, targets)
    panel.unit(unit).graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.VALUE)
    panel.text_mode(common.BigValueTextMode.AUTO).justify_mode(common.BigValueJustifyMode.AUTO)
    panel.orientation(common.VizOrientation.AUTO)
    panel.reduce_options(common_builders.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields(fields))
    if no_value is not None:
        panel.no_value(no_value)
    return panel


def _dashboard(uid: str, title: str, description: str, time_from: str, refresh: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title).uid(uid).description(description).tags([TAG]).readonly()
        .time(time_from, "now").refresh(refresh).timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
        .annotation(
            dashboard.AnnotationQuery().name("Annotations & Alerts").datasource(GRAFANA_BUILTIN).enable(True)
            .hide(True).icon_color("rgba(0, 211, 255, 1)").type("dashboard").built_in(1)
        )
        .link(dashboard.DashboardLink("chargewatch").type(DashboardLinkType.DASHBOARDS).tags([TAG]).as_dropdown(True)
              .keep_time(True).include_vars(False).target_blank(False).icon("external link").tooltip("").url(""))
    )


def fleet_overview() -> dashboard.Dashboard:
    """Fleet efficiency, vehicles below the threshold, energy, worst vehicles, state of charge, ingest."""
    below = f"{queries.THRESHOLD:.0%}"
    board = _dashboard(
        FLEET_UID, "Fleet overview",
        f"Charging efficiency (DC delivered / AC consumed) of the whole fleet over the selected range, from the "
        f"{minutes(queries.WINDOW)} efficiency windows in InfluxDB.", "now-24h", "1m",
    )
    board.with_panel(
        _stat(1, 0, 0, 6, 5, "Fleet efficiency",
              "Sum of DC delivered / sum of AC consumed over the selected range, every vehicle and window "
              "(a ratio of sums, never a mean of ratios).",
              [Flux(queries.FLEET_EFFICIENCY)], "percentunit")
        .decimals(1).thresholds(_thresholds(RATIO_THRESHOLDS)).override_by_name(*_rename("_value", "Fleet efficiency"))
    )
    board.with_panel(
        _stat(2, 6, 0, 6, 5, f"Vehicles below {below}",
              f"Vehicles whose efficiency over the selected range (sums) is below {below} with at least "
              f"{queries.MIN_SPAN_ENERGY_KWH} kWh of AC consumed.",
              [Flux(queries.VEHICLES_BELOW_THRESHOLD)], "none", no_value="0")
        .decimals(0).thresholds(_thresholds([Threshold(value=None, color="green"), Threshold(value=1, color="red")]))
        .override_by_name(*_rename("_value", f"Vehicles below {below}"))
    )
    board.with_panel(
        _place(histogram.Panel(), 3, 12, 0, 12, 10, "State of charge now",
               "Distribution of the newest state of charge of every vehicle that reported in the last hour "
               "(independent of the selected range).", [Flux(queries.STATE_OF_CHARGE_NOW)])
        .unit("percent").min(0).max(100).bucket_size(10).bucket_offset(0).fill_opacity(80)
        .legend(common_builders.VizLegendOptions().show_legend(False).display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM))
        .override_by_name(*_rename("_value", "State of charge"))
    )
    board.with_panel(
        _timeseries(4, 0, 5, 12, 5, "Ingest rate",
                    "Readings that reached InfluxDB per second, by kind (the forwarder's output; readings accepted "
                    "by ingest are on the Ingest health dashboard).",
                    [Flux(queries.STORED_READINGS_RATE)], "suffix: readings/s", min_interval="1m")
    )
    board.with_panel(
        _timeseries(5, 0, 10, 24, 9, "AC consumed vs DC delivered",
                    "Energy of the whole fleet per period: AC drawn by the chargers' meters, DC that reached the "
                    "batteries. The gap is the charging loss.",
                    [Flux(queries.FLEET_ENERGY)], "kwatth",
                    renames=[("ac_kwh", "AC consumed"), ("dc_kwh", "DC delivered")],
                    min_interval=queries.flux_duration(queries.WINDOW), bars=True)
    )
    vehicle_link = (f"/d/{VEHICLE_UID}/vehicle-detail?var-{queries.VEHICLE_VARIABLE}=${{__value.raw}}"
                    "&${__url_time_range}")
    board.with_panel(
        _place(table.Panel(), 6, 0, 19, 24, 10, "Worst vehicles",
               f"The ten vehicles with the lowest efficiency over the selected range (sums; at least "
               f"{queries.MIN_SPAN_ENERGY_KWH} kWh of AC). Click a vehicle for its detail.",
               [Flux(queries.WORST_VEHICLES)])
        .show_header(True).cell_height(common.TableCellHeight.SM).footer(
            common_builders.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False).fields([]))
        .override_by_name("vehicle_id", [
            DynamicConfigValue(id_val="displayName", value="Vehicle"),
            DynamicConfigValue(id_val="links", value=[{"title": "Vehicle detail", "url": vehicle_link}]),
        ])
        .override_by_name("efficiency", [
            DynamicConfigValue(id_val="displayName", value="Efficiency"),
            DynamicConfigValue(id_val="unit", value="percentunit"),
            DynamicConfigValue(id_val="decimals", value=1),
            DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background", "mode": "basic"}),
            DynamicConfigValue(id_val="thresholds", value=_thresholds(RATIO_THRESHOLDS).build()),
        ])
        .override_by_name("ac_kwh", [DynamicConfigValue(id_val="displayName", value="AC consumed"),
                                     DynamicConfigValue(id_val="unit", value="kwatth")])
        .override_by_name("dc_kwh", [DynamicConfigValue(id_val="displayName", value="DC delivered"),
                                     DynamicConfigValue(id_val="unit", value="kwatth")])
    )
    return board


def vehicle_detail() -> dashboard.Dashboard:
    """One vehicle: efficiency with the threshold line, energy per window, state of charge, temperature."""
    variable = queries.VEHICLE_VARIABLE
    board = _dashboard(
        VEHICLE_UID, "Vehicle detail",
        "One vehicle's charging: efficiency per window and over the alert's trailing span, energy, state of "
        "charge and battery temperature. Alert state changes appear as annotations.", "now-24h", "1m",
    )
    board.with_variable(
        dashboard.QueryVariable(variable).label("Vehicle").datasource(DATASOURCE)
        .query({"refId": "InfluxVariableQueryEditor-VariableQuery", "query": queries.VEHICLE_IDS})
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD).sort(VariableSort.ALPHABETICAL_ASC).multi(False)
        .include_all(False)
    )
    board.with_panel(
        _stat(1, 0, 0, 8, 5, "Efficiency over the range",
              "Sum of DC delivered / sum of AC consumed over the selected range.",
              [Flux(queries.VEHICLE_EFFICIENCY_OVER_RANGE)], "percentunit")
        .decimals(1).thresholds(_thresholds(RATIO_THRESHOLDS)).override_by_name(*_rename("_value", "Efficiency"))
    )
    board.with_panel(
        _stat(2, 8, 0, 16, 5, "Energy over the range", "AC consumed by the paired meter and DC delivered.",
              [Flux(queries.VEHICLE_ENERGY_OVER_RANGE)], "kwatth")
        .decimals(2).color_mode(common.BigValueColorMode.NONE)
        .override_by_name(*_rename("ac_kwh", "AC consumed")).override_by_name(*_rename("dc_kwh", "DC delivered"))
    )
    span = minutes(queries.SPAN)
    board.with_panel(
        _timeseries(VEHICLE_EFFICIENCY_PANEL_ID, 0, 5, 24, 9, "Efficiency",
                    f"Per {minutes(queries.WINDOW)} window, and over the trailing {span} (sums, "
                    f"at least {queries.MIN_SPAN_ENERGY_KWH} kWh of AC), against the alert threshold "
                    f"{queries.THRESHOLD:.0%}, the dashed line. Single windows are noisy (meter and vehicle clocks "
                    f"drift); the trailing span is not, except at a session's start and end, which the alert rules "
                    f"leave out of their measure.",
                    [Flux(queries.VEHICLE_WINDOW_EFFICIENCY, "A"), Flux(queries.VEHICLE_TRAILING_EFFICIENCY, "B")],
                    "percentunit")
        .decimals(1).axis_soft_min(0.5).axis_soft_max(1.05).thresholds(_thresholds(RATIO_THRESHOLDS))
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
        .override_by_query("B", [DynamicConfigValue(id_val="displayName", value=f"trailing {span}"),
                                 DynamicConfigValue(id_val="custom.lineWidth", value=3)])
        .override_by_name("efficiency", [DynamicConfigValue(id_val="displayName", value="per window"),
                                         DynamicConfigValue(id_val="custom.drawStyle", value="points"),
                                         DynamicConfigValue(id_val="custom.pointSize", value=4)])
    )
    board.with_panel(
        _timeseries(4, 0, 14, 24, 8, "AC vs DC per window",
                    "Energy per efficiency window: AC consumed by the paired meter, DC delivered to the battery.",
                    [Flux(queries.VEHICLE_WINDOW_ENERGY)], "kwatth",
                    renames=[("ac_kwh", "AC consumed"), ("dc_kwh", "DC delivered")], bars=True)
    )
    board.with_panel(
        _timeseries(5, 0, 22, 12, 8, "State of charge", "Mean state of charge per period.",
                    [Flux(queries.VEHICLE_STATE_OF_CHARGE)], "percent", renames=[("soc", "State of charge")])
        .min(0).max(100)
    )
    board.with_panel(
        _timeseries(6, 12, 22, 12, 8, "Battery temperature", "Mean battery temperature per period.",
                    [Flux(queries.VEHICLE_BATTERY_TEMPERATURE)], "celsius",
                    renames=[("battery_temp", "Battery temperature")])
    )
    return board


def ingest_health() -> dashboard.Dashboard:
    """Readings accepted and rejected, the outbox and forwarder, the efficiency task."""
    board = _dashboard(
        INGEST_UID, "Ingest health",
        "The services' /metrics as Telegraf scrapes them into the monitoring bucket, and the efficiency "
        "task's runs and lag.", "now-6h", "30s",
    )
    state_colours = {"shipping": "green", "retrying": "orange", "config_error": "red", "stopped": "red"}
    board.with_panel(
        _stat(1, 0, 0, 6, 5, "Forwarder state",
              "shipping: InfluxDB acknowledges writes; retrying: InfluxDB unreachable or failing (readings wait in "
              "the outbox); config_error: token, org or bucket wrong; stopped.",
              [Flux(queries.FORWARDER_STATE)], "none", fields="/^state$/", no_value="no data")
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .mappings([ValueMap(options={state: ValueMappingResult(color=colour, index=index)
                                     for index, (state, colour) in enumerate(state_colours.items())})])
    )
    board.with_panel(
        _stat(2, 6, 0, 6, 5, "Forwarder last seen",
              "Seconds since the forwarder last reported (every 5 s while it runs).",
              [Flux(queries.FORWARDER_LAST_SEEN)], "s")
        .decimals(0).thresholds(_thresholds([Threshold(value=None, color="green"), Threshold(value=30, color="red")]))
        .override_by_name(*_rename("_value", "last seen"))
    )
    board.with_panel(
        _stat(3, 12, 0, 6, 5, "Dead letters",
              "Lines InfluxDB refused (400) or dropped (422); `chargewatch outbox dead-letters` lists, requeues or "
              "purges them.", [Flux(queries.DEAD_LETTERS)], "none", no_value="0")
        .decimals(0).thresholds(_thresholds([Threshold(value=None, color="green"), Threshold(value=1, color="red")]))
        .override_by_name(*_rename("_value", "dead letters"))
    )
    stale_seconds = int(queries.TASK_STALE_AFTER.total_seconds())
    board.with_panel(
        _stat(4, 18, 0, 6, 5, "Efficiency task lag",
              f"Now minus the stop of the newest efficiency window (either engine). Normally between the task's "
              f"offset and one window plus the offset; stale above {stale_seconds} s, or when no vehicle reports.",
              [Flux(queries.EFFICIENCY_TASK_LAG)], "s")
        .decimals(0)
        .thresholds(_thresholds([Threshold(value=None, color="green"), Threshold(value=stale_seconds, color="red")]))
        .override_by_name(*_rename("_value", "lag"))
    )
    board.with_panel(
        _timeseries(5, 0, 5, 12, 8, "Readings accepted", "Valid readings ingest took in per second, by kind.",
                    [Flux(queries.READINGS_ACCEPTED_RATE)], "suffix: readings/s", min_interval="30s")
    )
    board.with_panel(
        _timeseries(6, 12, 5, 12, 8, "Readings rejected, by reason",
                    "Readings refused per second, by the first error's type (validation, skew, retention, ...).",
                    [Flux(queries.READINGS_REJECTED_RATE)], "suffix: readings/s", min_interval="30s")
    )
    board.with_panel(
        _timeseries(7, 0, 13, 12, 8, "Duplicate and unpaired readings",
                    "Device retries answered as duplicates, and readings stored without a paired device, per second.",
                    [Flux(queries.READINGS_DUPLICATE_RATE, "A"), Flux(queries.READINGS_UNPAIRED_RATE, "B")],
                    "suffix: readings/s", renames=[(queries.METRIC_DUPLICATE, "duplicates")], min_interval="30s")
        .override_by_query("B", [DynamicConfigValue(id_val="displayName", value="unpaired ${__field.labels.kind}")])
    )
    board.with_panel(
        _timeseries(8, 12, 13, 12, 8, "Outbox depth",
                    "Readings waiting in the outbox for InfluxDB, and the outbox bound (at it, ingest answers 503).",
                    [Flux(queries.OUTBOX_DEPTH, "A"), Flux(queries.OUTBOX_CAPACITY, "B")], "short",
                    renames=[(queries.METRIC_OUTBOX_DEPTH, "waiting"), (queries.METRIC_OUTBOX_CAPACITY, "bound")],
                    min_interval="30s")
        .override_by_query("B", [DynamicConfigValue(id_val="custom.lineStyle",
                                                    value={"fill": "dash", "dash": [10, 10]}),
                                 DynamicConfigValue(id_val="custom.fillOpacity", value=0)])
    )
    board.with_panel(
        _timeseries(9, 0, 21, 12, 8, "Forwarder lag",
                    "Age of the oldest reading InfluxDB has not acknowledged yet (0: the outbox is empty).",
                    [Flux(queries.FORWARDER_LAG)], "s", renames=[(queries.METRIC_OUTBOX_LAG, "lag")],
                    min_interval="30s")
    )
    board.with_panel(
        _timeseries(10, 12, 21, 12, 8, "Forwarder writes",
                    "Lines InfluxDB acknowledged per second, and failed write requests per second by reason.",
                    [Flux(queries.FORWARDER_SHIPPED_RATE, "A"), Flux(queries.FORWARDER_FAILURE_RATE, "B")], "short",
                    renames=[(queries.METRIC_SHIPPED, "lines shipped/s")], min_interval="30s")
        .override_by_query("B", [DynamicConfigValue(id_val="displayName", value="failed ${__field.labels.reason}/s"),
                                 DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})])
    )
    board.with_panel(
        _timeseries(11, 0, 29, 24, 8, "Efficiency task runs",
                    "Runs of the Flux tasks InfluxDB recorded (bucket _tasks), per period and status.",
                    [Flux(queries.TASK_RUNS)], "short", min_interval=queries.flux_duration(queries.WINDOW), bars=True)
        .override_by_name("failed", [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"})])
        .override_by_name("success", [DynamicConfigValue(id_val="color",
                                                         value={"mode": "fixed", "fixedColor": "green"})])
    )
    return board


DASHBOARDS = {
    "fleet-overview.json": fleet_overview,
    "vehicle-detail.json": vehicle_detail,
    "ingest-health.json": ingest_health,
}
