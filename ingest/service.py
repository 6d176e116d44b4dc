"""Ingest use cases: pair validated readings and store them. No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from pydantic import TypeAdapter, ValidationError

from chargewatch import lineprotocol
from chargewatch.pairing import Pairings
from chargewatch.readings import (
    AnyReading,
    FieldError,
    MeterReading,
    Reading,
    ReadingRules,
    VehicleReading,
    describe_errors,
)
from chargewatch.stores import PairedReading, ReadingStore


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    stored: int
    duplicates: int
    conflicts: int
    unpaired: int
    accepted_by_kind: dict[str, int]
    unpaired_by_kind: dict[str, int]


def ingest_readings(
    readings: Sequence[AnyReading], store: ReadingStore, pairings: Pairings, received_ms: int
) -> IngestResult:
    """Attach to each reading the vehicle and meter ids paired at its own timestamp (None where
    unpaired) and durably store them; returns once they are durable."""
    paired = []
    meters = unpaired_meters = unpaired_vehicles = 0
    partner_at = pairings.partner_at
    for reading in readings:  # one pass: this runs for every reading of a 10,000-reading body
        if isinstance(reading, MeterReading):
            meters += 1
            vehicle = partner_at("meter", reading.meter_id, reading.time_ms)
            unpaired_meters += vehicle is None
            paired.append(PairedReading(reading, vehicle, reading.meter_id, received_ms))
        else:
            meter = partner_at("vehicle", reading.vehicle_id, reading.time_ms)
            unpaired_vehicles += meter is None
            paired.append(PairedReading(reading, reading.vehicle_id, meter, received_ms))
    written = store.write(paired)
    counts = {"meter": (meters, unpaired_meters), "vehicle": (len(paired) - meters, unpaired_vehicles)}
    return IngestResult(
        accepted=len(paired), stored=written.stored, duplicates=written.duplicates, conflicts=written.conflicts,
        unpaired=unpaired_meters + unpaired_vehicles,
        accepted_by_kind={kind: n for kind, (n, _) in counts.items() if n},
        unpaired_by_kind={kind: n for kind, (_, n) in counts.items() if n},
    )


# -- line protocol -----------------------------------------------------------------------------

class _LineSchema(NamedTuple):
    """How a measurement's lines become readings: line protocol names its tags and fields as the
    models name their attributes (docs/readings.md, "Storage schema"), and the models take those
    names as well as the wire's camelCase, so a line's fields go to pydantic as they are, with the
    id from its tag."""

    id_tag: str
    value_fields: frozenset[str]  # what a line's fields may carry; any other field is ignored
    line_names: dict[str, str]  # wire name -> line protocol name, for naming failures


def _line_schema(model: type[MeterReading | VehicleReading], id_tag: str) -> _LineSchema:
    names = {field.alias or name: name for name, field in model.model_fields.items()}
    return _LineSchema(id_tag, frozenset(names.values()) - {id_tag, "timestamp"}, names)


_LINE_SCHEMA = {"meter": _line_schema(MeterReading, "meter_id"), "vehicle": _line_schema(VehicleReading, "vehicle_id")}
_LINE_ADAPTERS: dict[str, TypeAdapter[MeterReading] | TypeAdapter[VehicleReading]] = {
    "meter": TypeAdapter(MeterReading), "vehicle": TypeAdapter(VehicleReading)}
_LINES_ADAPTER: TypeAdapter[list[AnyReading]] = TypeAdapter(list[Reading])
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class LineRejection:
    line: int  # 1-based line number in the body
    text: str
    errors: tuple[FieldError, ...]


def readings_from_line_protocol(
    body: str, precision: str, rules: ReadingRules, max_lines: int | None = None
) -> tuple[list[AnyReading], list[LineRejection]]:
    """Parse ``meter``/``vehicle`` lines into validated readings; every bad line is reported.

    Raises lineprotocol.TooManyLines past ``max_lines`` lines, before any is parsed.

    Tags besides the id tag (a gateway's ``host``, say) and unknown fields are ignored; pairing
    tags are ignored too, since chargewatch resolves pairing itself.
    """
    lines, syntax_errors = lineprotocol.parse_lines(body, precision, max_lines)
    rejections = [
        LineRejection(e.line_number, e.text, (FieldError("", e.reason, "line_protocol_syntax"),))
        for e in syntax_errors
    ]
    items: list[dict[str, object]] = []
    known: list[lineprotocol.Line] = []
    moments: dict[int, datetime] = {}  # a gateway's batch shares a few timestamps
    for line in lines:
        schema = _LINE_SCHEMA.get(line.measurement)
        if schema is None:
            rejections.append(LineRejection(line.line_number, line.text, (FieldError(
                "measurement", f"unknown measurement {line.measurement!r}; expected meter or vehicle",
                "unknown_measurement"),)))
            continue
        id_tag, value_fields = schema.id_tag, schema.value_fields
        fields = line.fields
        # Fields the models do not take are ignored; a field named like the id tag or "timestamp" too.
        item: dict[str, object] = (
            {**fields} if value_fields.issuperset(fields) else {k: v for k, v in fields.items() if k in value_fields})
        item[id_tag] = line.tags.get(id_tag)
        if (timestamp_ns := line.timestamp_ns) is not None:
            # A datetime, not text: the rules take one from Python callers, and it is already UTC.
            moment = moments.get(timestamp_ns)
            if moment is None:
                moment = moments[timestamp_ns] = _EPOCH + timedelta(microseconds=timestamp_ns // 1000)
            item["timestamp"] = moment
        items.append(item)
        known.append(line)
    context = rules.context()
    try:
        # Every line in one call into pydantic's core, as for a JSON list; line by line only when
        # some line fails, to keep the good ones and name each failure.
        readings: list[AnyReading] = _LINES_ADAPTER.validate_python(items, context=context)
    except ValidationError:
        readings = []
        for line, item in zip(known, items, strict=True):
            try:
                readings.append(_LINE_ADAPTERS[line.measurement].validate_python(item, context=context))
            except ValidationError as err:
                wire_to_lp = _LINE_SCHEMA[line.measurement].line_names
                errors = tuple(
                    FieldError(wire_to_lp.get(e.field, e.field), e.message, e.type) for e in describe_errors(err)
                )
                rejections.append(LineRejection(line.line_number, line.text, errors))
    rejections.sort(key=lambda r: r.line)
    return readings, rejections
