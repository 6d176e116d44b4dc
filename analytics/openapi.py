"""The analytics service's OpenAPI document, generated from its response models."""

from __future__ import annotations

from typing import Any

from analytics.schemas import AlertList, FleetSummaryBody, PerformanceBody, SeriesBody
from chargewatch import __version__
from chargewatch.readings import DEVICE_ID_PATTERN
from webapi.openapi import Operation, build_openapi, path_param, query_param
from webapi.ops import OPS_OPERATIONS

_PERIOD = [
    query_param("start", "RFC 3339 with offset; default stop - 24 h", {"type": "string", "format": "date-time"}),
    query_param("stop", "RFC 3339 with offset; default now", {"type": "string", "format": "date-time"}),
]
_VEHICLE = path_param("vehicleId", "vehicle id", DEVICE_ID_PATTERN)
_PERIOD_TEXT = ("The period is whole efficiency windows: start rounds down and stop rounds down to a window "
                "boundary, so only closed windows count.")

OPERATIONS = [
    Operation("GET", "/v1/analytics/performance/{vehicleId}", "A vehicle's AC and DC totals and efficiency", "read",
              parameters=[_VEHICLE, *_PERIOD], description=_PERIOD_TEXT + " efficiencyRatio is 0-1.",
              responses={200: (PerformanceBody, "the report (status no_data when nothing was charged)"),
                         400: (None, "bad id or period")}),
    Operation("GET", "/v1/analytics/fleet/summary", "Fleet totals, efficiency distribution, worst vehicles", "read",
              parameters=[*_PERIOD, query_param("worst", "how many worst vehicles",
                                                {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10})],
              description=_PERIOD_TEXT, responses={200: (FleetSummaryBody, "summary"), 400: (None, "bad period")}),
    Operation("GET", "/v1/analytics/efficiency/{vehicleId}", "Efficiency windows of a vehicle, for charts", "read",
              parameters=[_VEHICLE, *_PERIOD], description=_PERIOD_TEXT,
              responses={200: (SeriesBody, "windows, oldest first"), 400: (None, "bad id or period")}),
    Operation("GET", "/v1/analytics/alerts", "Firing alerts, or recently firing and resolved ones", "read",
              parameters=[query_param("state", "active: firing now; recent: firing or resolved within hours",
                                      {"enum": ["active", "recent"], "default": "active"}),
                          query_param("hours", "look-back for state=recent",
                                      {"type": "integer", "minimum": 1, "maximum": 744, "default": 24})],
              responses={200: (AlertList, "alerts"), 400: (None, "bad parameter")}),
    *OPS_OPERATIONS,
]


def openapi_document() -> dict[str, Any]:
    return build_openapi(
        "chargewatch analytics", __version__,
        "Charging efficiency (DC delivered / AC consumed, as a ratio 0-1) per vehicle and for the fleet, "
        "from efficiency windows computed by the task runner, and low-efficiency alerts.",
        OPERATIONS,
    )
