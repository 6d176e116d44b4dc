"""The ingest service's OpenAPI document, generated from the models the routes use."""

from __future__ import annotations

from typing import Any

from chargewatch import __version__
from chargewatch.readings import DEVICE_ID_PATTERN, MeterReading, Reading, VehicleReading
from ingest.schemas import DevicePage, DeviceStateBody, IngestResponse, PairingBody, PairingList, PairingRequest
from webapi.openapi import Operation, build_openapi, path_param, query_param
from webapi.ops import OPS_OPERATIONS

_INGEST_RESPONSES = {
    200: (IngestResponse, "every reading accepted (durably stored, or already stored)"),
    207: (IngestResponse, "some readings accepted and stored; the rest listed in rejected with index and reasons"),
    400: (None, "the body is not JSON, not an object or array, empty, or over the item limit "
               "(CHARGEWATCH_LIMITS__MAX_BATCH_ITEMS readings, 32 JSON values per reading)"),
    413: (None, "the body (or its gzip-decoded form) is over the size limit"),
    415: (None, "Content-Type is not application/json, or Content-Encoding is not gzip"),
    422: (None, "no reading accepted; details lists every rejected reading with its index and reasons"),
    503: (None, "the store cannot take writes right now; retry after Retry-After seconds"),
}

_ONE_OR_MANY = "Body: one reading (object) or a list (array). Gzip with Content-Encoding: gzip."


def _one_or_many(model: Any) -> Any:
    return model | list[model]


_DEVICE = path_param("deviceId", "meter or vehicle id", DEVICE_ID_PATTERN)
_VEHICLE = path_param("vehicleId", "vehicle id", DEVICE_ID_PATTERN)

OPERATIONS = [
    Operation("POST", "/v1/ingest", "Ingest meter and vehicle readings, kinds mixed", "write",
              _one_or_many(Reading), responses=_INGEST_RESPONSES,
              description=_ONE_OR_MANY + " The kind is told by which id is present."),
    Operation("POST", "/v1/ingest/meter", "Ingest meter readings", "write", _one_or_many(MeterReading),
              responses=_INGEST_RESPONSES, description=_ONE_OR_MANY),
    Operation("POST", "/v1/ingest/vehicle", "Ingest vehicle readings", "write", _one_or_many(VehicleReading),
              responses=_INGEST_RESPONSES, description=_ONE_OR_MANY),
    Operation(
        "POST", "/api/v2/write", "InfluxDB 2.x compatible line-protocol write", "write", str,
        request_media_type="text/plain",
        parameters=[
            query_param("bucket", "must be the telemetry bucket (default 'telemetry')", {"type": "string"}, True),
            query_param("org", "accepted and ignored (single tenant)", {"type": "string"}),
            query_param("precision", "timestamp unit", {"enum": ["ns", "us", "ms", "s"], "default": "ns"}),
        ],
        responses={
            204: (None, "every line stored"),
            400: (None, "no line stored: syntax errors or invalid values (details lists each line); bad "
                       "precision; more than CHARGEWATCH_LIMITS__MAX_BATCH_ITEMS lines"),
            404: (None, "unknown bucket"),
            413: (None, "the body (or its gzip-decoded form) is over the size limit"),
            415: (None, "Content-Encoding is not gzip (Content-Type is not looked at, as in InfluxDB)"),
            422: (None, "partial write: valid lines stored, details lists each rejected line"),
            503: (None, "the store cannot take writes right now"),
        },
        description="Measurements meter (tag meter_id; fields kwh_consumed_ac, voltage) and vehicle "
        "(tag vehicle_id; fields soc, kwh_delivered_dc, battery_temp). Errors carry InfluxDB's 'code' too.",
    ),
    Operation("GET", "/v1/ingest/meter/{deviceId}/current", "A meter's newest reading", "read",
              parameters=[_DEVICE], responses={200: (DeviceStateBody, "current state"), 404: (None, "no reading yet")}),
    Operation("GET", "/v1/ingest/vehicle/{deviceId}/current", "A vehicle's newest reading", "read",
              parameters=[_DEVICE], responses={200: (DeviceStateBody, "current state"), 404: (None, "no reading yet")}),
    Operation(
        "GET", "/v1/ingest/devices", "Fleet listing: every device's current state, paginated", "read",
        parameters=[
            query_param("kind", "only meters or only vehicles", {"enum": ["meter", "vehicle"]}),
            query_param("unpaired", "only devices whose newest reading had no paired device", {"type": "boolean"}),
            query_param("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            query_param("cursor", "nextCursor of the previous page", {"type": "string"}),
        ],
        responses={200: (DevicePage, "one page, ordered by kind then id"), 400: (None, "bad parameter")},
    ),
    Operation("GET", "/v1/pairings", "Explicit pairings and the default rule", "read",
              responses={200: (PairingList, "pairings")}),
    Operation("GET", "/v1/pairings/{vehicleId}", "The meter a vehicle is paired with now", "read",
              parameters=[_VEHICLE], responses={200: (PairingBody, "paired"), 404: (None, "unpaired")}),
    Operation("PUT", "/v1/pairings/{vehicleId}", "Pair a vehicle with a meter (registry entry)", "write",
              PairingRequest, parameters=[_VEHICLE],
              responses={200: (PairingBody, "saved"), 409: (None, "the meter is paired with another vehicle"),
                         422: (None, "invalid meter id")}),
    Operation("DELETE", "/v1/pairings/{vehicleId}", "Remove a registry pairing (the default rule applies again)",
              "write", parameters=[_VEHICLE], responses={204: (None, "removed"), 404: (None, "no registry entry")}),
    *OPS_OPERATIONS,
]


def openapi_document() -> dict[str, Any]:
    return build_openapi(
        "chargewatch ingest", __version__,
        "Devices post meter and vehicle readings; every accepted reading is durable before the response.",
        OPERATIONS,
    )
