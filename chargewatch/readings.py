"""Reading models: the wire contract devices post, and every rule a reading must satisfy.

Field names on the wire are camelCase (as the existing fleet sends them); Python attributes are
snake_case. Rules that depend on the moment of arrival (future skew, retention, the energy ceiling)
read a :class:`ReadingRules` from the validation context, so the same model validates API input,
line protocol and simulator output::

    rules = ReadingRules(now=received_at)
    reading = READING.validate_python(payload, context=rules.context())
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import from_json

DEVICE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
# For Python checks of ids outside pydantic (URL paths, cursors): always ``fullmatch``, since Python's
# ``$`` also matches before a trailing newline ("VEHICLE_606\n" would pass ``match``).
DEVICE_ID = re.compile(DEVICE_ID_PATTERN.removeprefix("^").removesuffix("$"))

# RFC 3339 date-time with a mandatory offset (section 5.6; the "T" may be lower case or, as 5.6
# notes, a space). pydantic alone would also take bare epoch numbers ("1796148133") and offsets
# without a colon ("+0000"), which the contract refuses. The offset is optional here only so that
# pydantic's own "should have timezone info" names what a naive timestamp lacks.
RFC3339_PATTERN = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
                   r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?")
_RFC3339 = re.compile(RFC3339_PATTERN)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class ReadingRules:
    """Arrival-dependent bounds; ``now`` is the receive time (aware UTC)."""

    now: datetime
    max_energy_kwh: float = 10.0
    max_future_skew: timedelta = timedelta(minutes=5)
    retention: timedelta = timedelta(days=30)
    _context: dict[str, Any] = field(init=False, repr=False, compare=False)
    # now in UTC, and the latest and earliest timestamps accepted (UTC, so that comparing a reading's
    # timestamp with them is a comparison of fields, not a subtraction per reading)
    _now_utc: datetime = field(init=False, repr=False, compare=False)
    _latest: datetime = field(init=False, repr=False, compare=False)
    _earliest: datetime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("ReadingRules.now must be timezone-aware")
        now_utc = self.now.astimezone(timezone.utc)
        try:
            latest = now_utc + self.max_future_skew
        except OverflowError:
            latest = datetime.max.replace(tzinfo=timezone.utc)
        try:
            earliest = now_utc - self.retention
        except OverflowError:
            earliest = datetime.min.replace(tzinfo=timezone.utc)
        for name, value in (("_context", {"rules": self}), ("_now_utc", now_utc), ("_latest", latest),
                            ("_earliest", earliest)):
            object.__setattr__(self, name, value)

    def context(self) -> dict[str, Any]:
        return self._context


def _rules(info: ValidationInfo) -> ReadingRules:
    context = info.context
    if context and "rules" in context:
        rules: ReadingRules = context["rules"]
        return rules
    return ReadingRules(now=datetime.now(timezone.utc))


def _within_energy_ceiling(value: float, info: ValidationInfo) -> float:
    ceiling = _rules(info).max_energy_kwh
    if value > ceiling:
        raise ValueError(f"{value} kWh in one reading exceeds the plausible ceiling of {ceiling} kWh")
    return value


def _is_rfc3339_text(value: Any) -> bool:
    # Python callers (simulator, tests) may pass datetimes; on the wire only text is a timestamp,
    # since a bare number could be seconds or milliseconds.
    return isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value) is not None)


_RFC3339_MESSAGE = "must be an RFC 3339 string with a UTC offset, e.g. 2026-11-23T06:00:00Z"


def to_utc(value: datetime) -> datetime:
    """An aware datetime as UTC; ValueError (not OverflowError) when the instant is outside the
    calendar (year 1 with a positive offset, year 9999 with a negative one)."""
    if value.tzinfo is timezone.utc:
        return value
    try:
        # Same instant as astimezone(utc), at a third of the cost for pydantic's parsed offsets.
        return value.replace(tzinfo=timezone.utc) - (value.utcoffset() or timedelta(0))
    except OverflowError:
        raise ValueError("is outside the range of representable times (years 1-9999 in UTC)") from None


_AWARE_DATETIME = TypeAdapter(AwareDatetime)


def parse_timestamp(text: str) -> datetime:
    """RFC 3339 text with an offset as an aware UTC datetime (the rule readings follow, for query
    parameters); ValueError with the reason otherwise."""
    if not _is_rfc3339_text(text):
        raise ValueError(_RFC3339_MESSAGE)
    try:
        return to_utc(_AWARE_DATETIME.validate_python(text))
    except ValidationError as err:
        raise ValueError(describe_errors(err)[0].message) from None


def _parse_aware(value: Any, parse: ValidatorFunctionWrapHandler) -> datetime:
    """RFC 3339 text (already matched) or a datetime as an aware UTC datetime.

    Text goes to ``datetime.fromisoformat`` first: on the RFC 3339 forms the pattern admits it gives
    the same instant as pydantic's parser (fractions past microseconds cut off alike) at a fraction
    of the cost, and a "Z" comes back as ``timezone.utc`` (no conversion). What it refuses or reads
    differently (lower-case t or z, an impossible date, no offset, offset minutes past 59) and
    datetimes from Python callers go to pydantic's parser, whose error is the one reported;
    tests/unit/test_readings.py holds the two parsers to the same answers."""
    if isinstance(value, datetime) and value.tzinfo is timezone.utc:
        return value  # line protocol's timestamps, and Python callers' in UTC
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # It also reads an offset's minutes past 59 (+00:60 as +01:00), which pydantic refuses.
            if moment.tzinfo is not None and (value[-1] == "Z" or value[-2:] < "60"):
                return to_utc(moment)
    return to_utc(parse(value))


def _timestamp(value: Any, parse: ValidatorFunctionWrapHandler, info: ValidationInfo) -> datetime:
    """The timestamp rule in one call per reading: omitted (or null) means the receive time;
    otherwise RFC 3339 text with an offset (or a datetime), parsed by pydantic, as UTC, within the
    future skew and the retention period of the arrival."""
    rules = _rules(info)
    if value is None:
        return rules._now_utc
    if not _is_rfc3339_text(value):
        raise ValueError(_RFC3339_MESSAGE)
    moment = _parse_aware(value, parse)
    if moment > rules._latest:
        raise ValueError(
            f"is {int((moment - rules.now).total_seconds())} s in the future; "
            f"at most {int(rules.max_future_skew.total_seconds())} s of clock skew is accepted"
        )
    if moment < rules._earliest:
        raise ValueError(f"is older than the retention period of {rules.retention.days} days")
    return moment


# Strict: a JSON number (or a Python int/float), never a string or a boolean; NaN and Infinity
# are refused in any spelling. All of it runs in pydantic's core, which matters at 100k readings/s.
Number = Annotated[float, Strict(), AllowInfNan(False)]
Energy = Annotated[Number, Field(ge=0), AfterValidator(_within_energy_ceiling)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="1-64 chars of [A-Za-z0-9._:-]")]
Timestamp = Annotated[
    AwareDatetime | None,
    WrapValidator(_timestamp),
    Field(description="RFC 3339 with offset; omitted means the time the reading was received."),
]


class _Reading(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    kind: ClassVar[str]
    timestamp: Timestamp = Field(None, validate_default=True)  # the validator puts in the receive time

    @property
    def device_id(self) -> str:
        raise NotImplementedError

    @property
    def time_ms(self) -> int:
        """Device timestamp as integer milliseconds since the Unix epoch (the storage precision),
        rounded down. Computed on each use: a third of the cost of functools.cached_property's
        first use (it takes a lock on Python 3.11), and it is used about twice per reading."""
        assert self.timestamp is not None  # the timestamp validator sets it
        return (self.timestamp - _EPOCH) // _ONE_MS


class MeterReading(_Reading):
    """Grid-side energy a charger drew since the meter's previous reading."""

    kind: ClassVar[Literal["meter"]] = "meter"
    meter_id: DeviceId = Field(alias="meterId")
    kwh_consumed_ac: Energy = Field(alias="kwhConsumedAc", description="kWh since the previous reading")
    voltage: Annotated[Number, Field(ge=0, le=1000, description="V")]

    @property
    def device_id(self) -> str:
        return self.meter_id


class VehicleReading(_Reading):
    """Energy that reached a vehicle's battery since its previous reading, plus battery state."""

    kind: ClassVar[Literal["vehicle"]] = "vehicle"
    vehicle_id: DeviceId = Field(alias="vehicleId")
    soc: Annotated[Number, Field(ge=0, le=100, description="state of charge, %")]
    kwh_delivered_dc: Energy = Field(alias="kwhDeliveredDc", description="kWh since the previous reading")
    battery_temp: Annotated[Number, Field(ge=-40, le=120, description="deg C")] = Field(alias="batteryTemp")

    @property
    def device_id(self) -> str:
        return self.vehicle_id


AnyReading = MeterReading | VehicleReading
READING_KINDS: dict[str, type[_Reading]] = {"meter": MeterReading, "vehicle": VehicleReading}


def _reading_kind(value: Any) -> str | None:
    # Called for every item of a list: a plain dict, what JSON and line protocol give, is tested
    # first (isinstance of BaseModel costs as much as the rest of the call).
    if type(value) is not dict:
        if isinstance(value, BaseModel):
            return getattr(value, "kind", None)
        if not isinstance(value, dict):
            return None
    has_meter = "meterId" in value or "meter_id" in value
    if has_meter == ("vehicleId" in value or "vehicle_id" in value):
        return None
    return "meter" if has_meter else "vehicle"


Reading = Annotated[
    Annotated[MeterReading, Tag("meter")] | Annotated[VehicleReading, Tag("vehicle")],
    Discriminator(
        _reading_kind,
        custom_error_type="reading_kind",
        custom_error_message="a reading is an object with exactly one of meterId or vehicleId",
    ),
]

READING: TypeAdapter[AnyReading] = TypeAdapter(Reading)


def to_wire(reading: AnyReading) -> dict[str, Any]:
    """The reading as devices send it (camelCase JSON-ready dict, timestamp in UTC)."""
    return reading.model_dump(mode="json", by_alias=True)


class InvalidBody(ValueError):
    """The request body is not a JSON reading or list of readings at all."""


@dataclass(frozen=True)
class FieldError:
    field: str  # wire name, e.g. "kwhConsumedAc"; "" for the reading as a whole
    message: str
    type: str


@dataclass(frozen=True)
class Rejection:
    """Why the reading at ``index`` (0-based position in the request) was not accepted."""

    index: int
    errors: tuple[FieldError, ...]


@dataclass(frozen=True)
class ValidatedBatch:
    readings: list[AnyReading]
    rejections: list[Rejection]
    is_list: bool


# JSON values (counted as commas and opening brackets, a cheap upper bound) a list body may hold
# per reading it may carry: room for about 25 fields per reading. The parser builds every value in
# memory before validation starts, so this bound is what keeps a small gzip body that inflates to
# millions of tiny items from costing seconds of CPU and gigabytes of memory.
JSON_VALUES_PER_ITEM = 32


def validate_batch(
    body: bytes, rules: ReadingRules, kind: str | None = None, max_items: int = 10_000
) -> ValidatedBatch:
    """Validate a JSON body holding one reading or a list of them.

    ``kind`` ("meter"/"vehicle") restricts the body to that kind (the typed routes). Good items of a
    list are returned even when others fail; each failure is reported with its index. Raises
    InvalidBody when the body is not JSON, not an object or array, empty, longer than max_items,
    or holds more than ``JSON_VALUES_PER_ITEM * max_items`` JSON values. Both limits are checked
    before any item is validated.
    """
    single = _ADAPTERS[kind]
    many = _list_adapter(kind, max_items)
    context = rules.context()
    start = body.lstrip()[:1]
    if start == b"{":
        _check_value_count(body, max_items)
        try:
            return ValidatedBatch([single.validate_json(body, context=context)], [], False)
        except ValidationError as err:
            if _is_json_error(err):
                raise InvalidBody(_json_error_message(err)) from None
            return ValidatedBatch([], [Rejection(0, describe_errors(err))], False)
    if start != b"[":
        raise InvalidBody("the body must be a JSON object (one reading) or array (a list of readings)")
    _check_value_count(body, max_items)
    try:
        readings = many.validate_json(body, context=context)
    except ValidationError as err:
        if _is_json_error(err):
            raise InvalidBody(_json_error_message(err)) from None
        if _is_too_long(err):
            raise InvalidBody(_too_many_items(max_items)) from None
        # Slow path, only for lists with bad items: validate item by item to keep the good ones.
        items = from_json(body)  # the parser validate_json used, so both read the body alike
        _check_size(items, max_items)
        readings, rejections = [], []
        for index, item in enumerate(items):
            try:
                readings.append(single.validate_python(item, context=context))
            except ValidationError as item_err:
                rejections.append(Rejection(index, describe_errors(item_err)))
        return ValidatedBatch(readings, rejections, True)
    _check_size(readings, max_items)
    return ValidatedBatch(readings, [], True)


def _check_value_count(body: bytes, max_items: int) -> None:
    # Every JSON value but the first follows a comma or opens with a bracket, so this count (which
    # also counts commas and brackets inside strings) is never below the number of values.
    values = body.count(b",") + body.count(b"{") + body.count(b"[")
    if values > JSON_VALUES_PER_ITEM * max_items:
        raise InvalidBody(
            f"the body holds more than {JSON_VALUES_PER_ITEM * max_items} JSON values; at most {max_items} "
            f"readings of at most {JSON_VALUES_PER_ITEM} values each are accepted per request"
        )


def _too_many_items(max_items: int) -> str:
    return f"the list holds more than {max_items} readings; at most {max_items} are accepted per request"


def _check_size(items: list[Any], max_items: int) -> None:
    if not items:
        raise InvalidBody("the list holds no readings")
    if len(items) > max_items:
        raise InvalidBody(_too_many_items(max_items))


def _is_too_long(err: ValidationError) -> bool:
    return any(item["type"] == "too_long" and not item["loc"] for item in err.errors(include_url=False))


def _is_json_error(err: ValidationError) -> bool:
    return any(item["type"] == "json_invalid" for item in err.errors(include_url=False))


def _json_error_message(err: ValidationError) -> str:
    item = err.errors(include_url=False, include_context=True)[0]
    return f"the body is not valid JSON: {item.get('ctx', {}).get('error', item['msg'])}"


def describe_errors(err: ValidationError) -> tuple[FieldError, ...]:
    """Flatten pydantic errors into wire field names and messages, without the union tag."""
    errors = []
    for item in err.errors(include_url=False, include_context=False, include_input=False):
        loc = item["loc"]
        # A tagged-union member's location starts with its tag ("meter"/"vehicle"), no field name.
        path = loc[1:] if loc and loc[0] in READING_KINDS else loc
        errors.append(
            FieldError(".".join(str(p) for p in path), item["msg"].removeprefix("Value error, "), item["type"])
        )
    return tuple(errors)


@lru_cache(maxsize=16)
def _list_adapter(kind: str | None, max_items: int) -> TypeAdapter[list[AnyReading]]:
    """A list of readings that pydantic refuses past ``max_items`` before validating any item."""
    item: Any = {None: Reading, "meter": MeterReading, "vehicle": VehicleReading}[kind]
    adapter: TypeAdapter[list[AnyReading]] = TypeAdapter(Annotated[list[item], Field(max_length=max_items)])
    return adapter


_ADAPTERS: dict[str | None, TypeAdapter[Any]] = {
    None: READING,
    "meter": TypeAdapter(MeterReading),
    "vehicle": TypeAdapter(VehicleReading),
}
