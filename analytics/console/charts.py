"""Plotly figure specifications (plain dicts, serialised into the page) for the console's charts.

Each chart has a ``summary``: one sentence the page gives screen readers (``aria-label``), since
the canvas itself says nothing; the numbers behind a chart are also in the page's tables."""

from __future__ import annotations

from typing import Any

from analytics import queries
from analytics.console.data import VehicleDetail
from chargewatch.alerts import AlertPolicy
from webapi.schemas import from_ms

# Okabe-Ito colours: told apart with the common colour-vision deficiencies, all >= 3:1 on white.
BLUE, ORANGE, GREEN, VERMILION, PURPLE = "#0072B2", "#D55E00", "#009E73", "#CC3311", "#7B3294"


def _t(ms: int) -> str:
    return from_ms(ms).isoformat().replace("+00:00", "Z")


def _layout(title: str, y_title: str, period: queries.Period | None = None, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 15}}, "height": 300, "margin": {"l": 60, "r": 60, "t": 40, "b": 40},
        "xaxis": {"type": "date", "title": {"text": "time (UTC)"}},
        "yaxis": {"title": {"text": y_title}}, "legend": {"orientation": "h", "y": -0.25},
        "font": {"family": "system-ui, sans-serif", "color": "#1a1a1a"},
        "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff",
    }
    if period is not None:
        layout["xaxis"]["range"] = [_t(period.start_ms), _t(period.end_ms)]
    layout.update(extra)
    return layout


def _threshold_line(threshold: float) -> dict[str, Any]:
    return {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": threshold * 100,
            "y1": threshold * 100, "line": {"color": VERMILION, "dash": "dash", "width": 2}}


def _pct(ratio: float | None) -> float | None:
    return None if ratio is None else round(ratio * 100, 3)


def fleet_timeline(points: list[tuple[int, float | None, float, float]], threshold: float) -> dict[str, Any]:
    rated = [(p[0], p[1]) for p in points if p[1] is not None]
    if rated:
        worst_ms, worst = min(rated, key=lambda p: p[1])
        summary = (f"Fleet efficiency per hour, {len(rated)} hours; lowest {worst * 100:.1f} % at "
                   f"{from_ms(worst_ms):%H:%M} UTC; threshold {threshold * 100:.0f} %.")
    else:
        summary = "Fleet efficiency per hour: no charging in this period."
    return {
        "id": "fleet-timeline", "summary": summary,
        "data": [{"type": "scatter", "mode": "lines+markers", "name": "fleet DC / AC",
                  "x": [_t(p[0]) for p in points], "y": [_pct(p[1]) for p in points],
                  "line": {"color": BLUE}, "hovertemplate": "%{y:.1f} %<extra></extra>"}],
        "layout": _layout("Fleet efficiency per hour", "efficiency (%)",
                          shapes=[_threshold_line(threshold)]),
    }


def _alert_shapes(detail: VehicleDetail, period: queries.Period) -> list[dict[str, Any]]:
    """A shaded band per alert, from when its condition first held to its end (or the period's)."""
    shapes = []
    for alert in detail.alerts:
        end = alert.resolved_ms or period.end_ms
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": _t(max(alert.started_ms, period.start_ms)),
                       "x1": _t(min(end, period.end_ms)), "y0": 0, "y1": 1, "fillcolor": VERMILION,
                       "opacity": 0.12, "line": {"width": 0}, "layer": "below"})
    return shapes


def _alert_note(detail: VehicleDetail) -> str:
    return f" {len(detail.alerts)} alert(s) shaded." if detail.alerts else ""


def vehicle_energy(detail: VehicleDetail, period: queries.Period) -> dict[str, Any]:
    windows = detail.windows
    summary = (f"AC drawn and DC delivered per window, {len(windows)} windows: "
               f"{detail.report.ac_kwh:.2f} kWh AC and {detail.report.dc_kwh:.2f} kWh DC in total."
               + _alert_note(detail))
    return {
        "id": "vehicle-energy", "summary": summary,
        "data": [
            {"type": "bar", "name": "AC drawn (kWh)", "x": [_t(w.stop_ms) for w in windows],
             "y": [w.ac_kwh for w in windows], "marker": {"color": ORANGE}},
            {"type": "bar", "name": "DC delivered (kWh)", "x": [_t(w.stop_ms) for w in windows],
             "y": [w.dc_kwh for w in windows], "marker": {"color": BLUE}},
        ],
        "layout": _layout("AC vs DC per window", "kWh", period, barmode="group",
                          shapes=_alert_shapes(detail, period)),
    }


def vehicle_efficiency(detail: VehicleDetail, period: queries.Period, policy: AlertPolicy) -> dict[str, Any]:
    rated = [w for w in detail.windows if w.efficiency is not None]
    judged = [v for _, v in detail.judged if v is not None]
    summary = (f"Efficiency per window ({len(rated)} rated windows) and as the alert rules judge it "
               f"(over up to {policy.span_ms // 60_000} min, placed at session edges)"
               + (f", lowest judged {min(judged) * 100:.1f} %" if judged else "")
               + f", against the {policy.threshold * 100:.0f} % threshold." + _alert_note(detail))
    return {
        "id": "vehicle-efficiency", "summary": summary,
        "data": [
            {"type": "scatter", "mode": "markers", "name": "per window", "x": [_t(w.stop_ms) for w in rated],
             "y": [_pct(w.efficiency) for w in rated], "marker": {"color": PURPLE, "size": 5}},
            {"type": "scatter", "mode": "lines", "name": "judged by the alert rules",
             "x": [_t(s) for s, _ in detail.judged], "y": [_pct(v) for _, v in detail.judged],
             "line": {"color": BLUE, "width": 2}, "connectgaps": False},
        ],
        "layout": _layout("Efficiency (DC / AC)", "efficiency (%)", period,
                          shapes=[_threshold_line(policy.threshold), *_alert_shapes(detail, period)]),
    }


def vehicle_battery(detail: VehicleDetail, period: queries.Period) -> dict[str, Any]:
    summary = (f"State of charge ({len(detail.soc)} readings) and mean battery temperature per window "
               f"({len(detail.battery_temp)} windows).")
    return {
        "id": "vehicle-battery", "summary": summary,
        "data": [
            {"type": "scatter", "mode": "lines", "name": "state of charge (%)", "x": [_t(t) for t, _ in detail.soc],
             "y": [v for _, v in detail.soc], "line": {"color": GREEN}},
            {"type": "scatter", "mode": "lines", "name": "battery temperature (deg C)", "yaxis": "y2",
             "x": [_t(t) for t, _ in detail.battery_temp], "y": [v for _, v in detail.battery_temp],
             "line": {"color": ORANGE, "dash": "dot"}},
        ],
        "layout": _layout("State of charge and battery temperature", "SoC (%)", period,
                          yaxis2={"title": {"text": "deg C"}, "overlaying": "y", "side": "right"}),
    }


def readings_per_minute(per_minute: dict[str, list[tuple[int, int]]]) -> dict[str, Any]:
    totals = {kind: sum(n for _, n in points) for kind, points in per_minute.items()}
    summary = ("Readings stored per minute of reading time, last hour: "
               + ", ".join(f"{totals[k]} {k} readings" for k in sorted(totals)) + ".")
    colours = {"meter": ORANGE, "vehicle": BLUE}
    return {
        "id": "readings-per-minute", "summary": summary,
        "data": [{"type": "scatter", "mode": "lines", "name": f"{kind} readings", "x": [_t(m) for m, _ in points],
                  "y": [n for _, n in points], "line": {"color": colours.get(kind, GREEN)}}
                 for kind, points in sorted(per_minute.items())],
        "layout": _layout("Readings per minute", "readings"),
    }
