"""Ingest HTTP routes: translate requests into service calls and results into responses."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from flask import Blueprint, Response, current_app, jsonify, request

from chargewatch.lineprotocol import TooManyLines
from chargewatch.pairing import PairingConflict, PairingRegistry
from chargewatch.readings import DEVICE_ID, AnyReading, InvalidBody, ReadingRules, validate_batch
from chargewatch.settings import Settings
from chargewatch.stores import Kind, ReadingStore
from ingest import service
from ingest.schemas import (
    DevicePage,
    DeviceStateBody,
    IngestResponse,
    PairingBody,
    PairingList,
    PairingRequest,
    RejectionBody,
)
from webapi.auth import require
from webapi.body import read_body, require_content_type
from webapi.errors import ApiError
from webapi.metrics import (
    READINGS_ACCEPTED,
    READINGS_CONFLICTING,
    READINGS_DUPLICATE,
    READINGS_REJECTED,
    READINGS_UNPAIRED,
    labelled,
)

bp = Blueprint("ingest", __name__)

_KINDS: dict[str, Kind] = {"meter": "meter", "vehicle": "vehicle"}


def _store() -> ReadingStore:
    return current_app.extensions["reading_store"]


def _pairings() -> PairingRegistry:
    return current_app.extensions["pairing_registry"]


@dataclass(frozen=True)
class _Posting:
    """What a device post needs from the app, looked up once per post rather than piece by piece."""

    store: ReadingStore
    pairings: PairingRegistry
    telemetry_bucket: str
    max_items: int
    max_body_bytes: int
    max_decompressed_bytes: int
    max_energy_kwh: float
    max_future_skew: timedelta
    retention: timedelta

    @classmethod
    def of_app(cls) -> _Posting:
        extensions = current_app.extensions
        posting: _Posting | None = extensions.get("ingest_posting")
        if posting is None:
            settings: Settings = extensions["chargewatch_settings"]
            posting = extensions["ingest_posting"] = cls(
                extensions["reading_store"], extensions["pairing_registry"], settings.telemetry_bucket,
                settings.limits.max_batch_items, settings.ingest.max_body_bytes, settings.ingest.max_decompressed_bytes,
                settings.limits.max_energy_kwh_per_reading, timedelta(seconds=settings.limits.max_future_skew_seconds),
                timedelta(days=settings.retention_days))
        return posting

    def arrival(self) -> tuple[ReadingRules, int]:
        """The rules a reading arriving now must meet, and now in epoch milliseconds."""
        now = datetime.now(timezone.utc)
        rules = ReadingRules(now=now, max_energy_kwh=self.max_energy_kwh, max_future_skew=self.max_future_skew,
                             retention=self.retention)
        return rules, int(now.timestamp() * 1000)

    def body(self) -> bytes:
        return read_body(self.max_body_bytes, self.max_decompressed_bytes)

    def ingest(self, readings: list[AnyReading], received_ms: int) -> service.IngestResult:
        result = service.ingest_readings(readings, self.store, self.pairings.current(), received_ms)
        _count_accepted(result)
        return result


def _count_rejections(first_error_types: list[str]) -> None:
    for reason in first_error_types:
        labelled(READINGS_REJECTED, reason).inc()


def _json_readings(kind: str | None) -> tuple[Response, int]:
    require_content_type("application/json")
    posting = _Posting.of_app()
    rules, received_ms = posting.arrival()
    try:
        batch = validate_batch(posting.body(), rules, kind=kind, max_items=posting.max_items)
    except InvalidBody as err:
        labelled(READINGS_REJECTED, "invalid_body").inc()
        raise ApiError(400, "invalid_body", str(err)) from None
    _count_rejections([r.errors[0].type for r in batch.rejections])
    rejected = [RejectionBody.of(r) for r in batch.rejections]
    if not batch.readings:
        noun = "readings were" if batch.is_list else "reading was"
        raise ApiError(422, "invalid_readings", f"no {noun} accepted",
                       [r.model_dump(mode="json") for r in rejected])
    result = posting.ingest(batch.readings, received_ms)
    body = IngestResponse(accepted=result.accepted, stored=result.stored, duplicates=result.duplicates,
                          conflicts=result.conflicts, unpaired=result.unpaired, rejected=rejected)
    # Serialised by pydantic's core: half the cost of model_dump and jsonify, on every device post.
    return Response(body.model_dump_json(), mimetype="application/json"), 207 if rejected else 200


def _count_accepted(result: service.IngestResult) -> None:
    for kind, count in result.accepted_by_kind.items():
        labelled(READINGS_ACCEPTED, kind).inc(count)
    for kind, count in result.unpaired_by_kind.items():
        labelled(READINGS_UNPAIRED, kind).inc(count)
    if result.duplicates:
        READINGS_DUPLICATE.inc(result.duplicates)
    if result.conflicts:
        READINGS_CONFLICTING.inc(result.conflicts)


@bp.post("/v1/ingest")
@require("write")
def ingest_any() -> tuple[Response, int]:
    return _json_readings(None)


@bp.post("/v1/ingest/meter")
@require("write")
def ingest_meter() -> tuple[Response, int]:
    return _json_readings("meter")


@bp.post("/v1/ingest/vehicle")
@require("write")
def ingest_vehicle() -> tuple[Response, int]:
    return _json_readings("vehicle")


# InfluxDB's error codes (its errors.go) by status, for the errors /api/v2/write shares with the
# other routes (auth, body limits); InfluxDB clients read ``code``, and Telegraf logs it. InfluxDB
# has no code of its own for 408 and 415, so those are "invalid", as for its other client errors.
_INFLUX_CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not found",
                 405: "method not allowed", 408: "invalid", 413: "request too large",
                 415: "invalid", 422: "unprocessable entity", 503: "unavailable"}


@bp.after_request
def _influx_error_code(response: Response) -> Response:
    """Give /api/v2/write's error bodies InfluxDB's ``code`` (and its X-Platform-Error-Code)."""
    if response.status_code < 400 or request.endpoint != "ingest.write_line_protocol" or not response.is_json:
        return response
    body = response.get_json(silent=True)
    if isinstance(body, dict) and "code" not in body:
        code = _INFLUX_CODES.get(response.status_code, "internal error")
        response.set_data(jsonify({**body, "code": code}).get_data())
        response.headers["X-Platform-Error-Code"] = code
    return response


@bp.post("/api/v2/write")
@require("write")
def write_line_protocol() -> Response | tuple[Response, int]:
    """InfluxDB 2.x write API: 204 when all lines are stored (or the body holds none), 422 for a
    partial write (the good lines are stored), 400 when no line could be stored; error bodies carry
    InfluxDB's ``code`` beside chargewatch's error shape, so InfluxDB clients report them as they
    would InfluxDB's.
    Content-Type is not looked at, as InfluxDB does not (curl sends a form type by default)."""
    posting = _Posting.of_app()
    bucket = request.args.get("bucket", "")
    if bucket != posting.telemetry_bucket:
        raise ApiError(404, "not_found", f'bucket "{bucket}" not found; chargewatch takes writes to '
                       f'bucket "{posting.telemetry_bucket}"')
    precision = request.args.get("precision", "ns")
    rules, received_ms = posting.arrival()
    try:
        text = posting.body().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, "invalid_body", f"line protocol must be UTF-8: {err}") from None
    try:
        readings, rejections = service.readings_from_line_protocol(
            text, precision, rules, max_lines=posting.max_items)
    except TooManyLines as err:
        labelled(READINGS_REJECTED, "invalid_body").inc()
        raise ApiError(400, "invalid_body", str(err)) from None
    except ValueError as err:  # unknown precision
        raise ApiError(400, "invalid_precision", str(err)) from None
    _count_rejections([r.errors[0].type for r in rejections])
    if readings:
        posting.ingest(readings, received_ms)
    if not rejections:  # an empty body too: InfluxDB answers 204 to it, and nothing was refused
        return Response(status=204)
    details = [{"line": r.line, "text": r.text, "errors": [vars(e) for e in r.errors]} for r in rejections]
    first = rejections[0]
    error = first.errors[0]
    summary = f"line {first.line}: {error.field + ': ' if error.field else ''}{error.message}"
    if readings:
        status, code, influx_code = 422, "partial_write", "unprocessable entity"
        message = f"partial write: {summary} dropped={len(rejections)}"
    else:
        status, code, influx_code = 400, "invalid_line_protocol", "invalid"
        message = f"no line was stored; {summary}"
    response = jsonify({"error": code, "code": influx_code, "message": message, "details": details})
    response.status_code = status
    response.headers["X-Platform-Error-Code"] = influx_code
    return response


# -- current state -------------------------------------------------------------------------------

def _device_id(value: str) -> str:
    if not DEVICE_ID.fullmatch(value):
        raise ApiError(400, "invalid_device_id", "a device id is 1-64 characters of [A-Za-z0-9._:-]")
    return value


@bp.get("/v1/ingest/<any(meter, vehicle):kind>/<device_id>/current")
@require("read")
def current_state(kind: Kind, device_id: str) -> Response:  # the route's any() converter gives a Kind
    state = _store().current(kind, _device_id(device_id))
    if state is None:
        raise ApiError(404, "not_found", f"no reading from {kind} {device_id} yet")
    return jsonify(DeviceStateBody.of(state).model_dump(mode="json"))


@bp.get("/v1/ingest/devices")
@require("read")
def list_devices() -> Response:
    kind: Kind | None = None
    if request.args.get("kind"):
        kind = _KINDS.get(request.args["kind"])
        if kind is None:
            raise ApiError(400, "invalid_parameter", "kind is meter or vehicle")
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "invalid_parameter", "limit is a whole number from 1 to 1000") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_parameter", "limit is a whole number from 1 to 1000")
    unpaired = request.args.get("unpaired", "false").lower() in ("1", "true", "yes")
    after = _decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None
    states = _store().list_current(kind, after, limit, unpaired_only=unpaired)
    next_cursor = _encode_cursor(states[-1].kind, states[-1].device_id) if len(states) == limit else None
    page = DevicePage(devices=[DeviceStateBody.of(s) for s in states], next_cursor=next_cursor)
    return jsonify(page.model_dump(mode="json"))


def _encode_cursor(kind: str, device_id: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{device_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        kind, _, device_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        kind, device_id = "", ""
    if kind not in ("meter", "vehicle") or not DEVICE_ID.fullmatch(device_id):
        raise ApiError(400, "invalid_parameter", "cursor is not one this service returned")
    return kind, device_id


# -- pairings ------------------------------------------------------------------------------------

@bp.get("/v1/pairings")
@require("read")
def list_pairings() -> Response:
    pairings = _pairings().current(fresh=True)  # the PUT may have gone to another worker
    body = PairingList(
        pairings=[PairingBody(vehicle_id=v, meter_id=m, source="registry")
                  for v, m in sorted(pairings.explicit.items())],
        rule_prefixes=[f"{v}:{m}" for v, m in pairings.rule.prefixes],
    )
    return jsonify(body.model_dump(mode="json"))


@bp.get("/v1/pairings/<vehicle_id>")
@require("read")
def get_pairing(vehicle_id: str) -> Response:
    pairings = _pairings().current(fresh=True)
    meter = pairings.meter_for(_device_id(vehicle_id))
    if meter is None:
        raise ApiError(404, "not_found", f"vehicle {vehicle_id} is not paired (no registry entry, and the "
                       "default rule gives no free meter)")
    body = PairingBody(vehicle_id=vehicle_id, meter_id=meter, source=pairings.source_of(vehicle_id))
    return jsonify(body.model_dump(mode="json"))


@bp.put("/v1/pairings/<vehicle_id>")
@require("write")
def put_pairing(vehicle_id: str) -> Response:
    require_content_type("application/json")
    request_body = PairingRequest.model_validate_json(_Posting.of_app().body())
    try:
        _store().save_pairings({_device_id(vehicle_id): request_body.meter_id})
        _pairings().invalidate()
    except PairingConflict as err:
        raise ApiError(409, "pairing_conflict", str(err)) from None
    body = PairingBody(vehicle_id=vehicle_id, meter_id=request_body.meter_id, source="registry")
    return jsonify(body.model_dump(mode="json"))


@bp.delete("/v1/pairings/<vehicle_id>")
@require("write")
def delete_pairing(vehicle_id: str) -> Response:
    if not _store().delete_pairing(_device_id(vehicle_id)):
        raise ApiError(404, "not_found", f"vehicle {vehicle_id} has no registry pairing")
    _pairings().invalidate()
    return Response(status=204)
