"""Reading models: every rule of docs/readings.md "Rules", with a fixed clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from chargewatch.readings import (
    READING,
    InvalidBody,
    MeterReading,
    ReadingRules,
    VehicleReading,
    _parse_aware,
    describe_errors,
    to_utc,
    validate_batch,
)

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
RULES = ReadingRules(now=NOW)
METER = {"meterId": "METER_001", "kwhConsumedAc": 1.25, "voltage": 230, "timestamp": "2026-11-23T05:59:00Z"}
VEHICLE = {"vehicleId": "VEHICLE_001", "soc": 50, "kwhDeliveredDc": 1.1, "batteryTemp": 25,
           "timestamp": "2026-11-23T05:59:00Z"}


def validate(payload: dict, rules: ReadingRules = RULES):
    return READING.validate_python(payload, context=rules.context())


def first_error(payload: dict, rules: ReadingRules = RULES) -> tuple[str, str]:
    with pytest.raises(ValidationError) as raised:
        validate(payload, rules)
    error = describe_errors(raised.value)[0]
    return error.field, error.message


def test_the_kind_is_told_by_which_id_is_present() -> None:
    assert isinstance(validate(METER), MeterReading)
    assert isinstance(validate(VEHICLE), VehicleReading)


def test_a_reading_with_both_ids_or_neither_is_rejected() -> None:
    assert first_error({**METER, "vehicleId": "VEHICLE_001"})[1].startswith("a reading is an object with exactly one")
    assert first_error({"voltage": 1})[0] == ""


def test_timestamps_are_normalised_to_utc_and_stored_at_millisecond_precision() -> None:
    reading = validate({**METER, "timestamp": "2026-11-23T07:59:00.123456+02:00"})
    assert reading.timestamp == datetime(2026, 11, 23, 5, 59, 0, 123456, tzinfo=timezone.utc)
    assert reading.time_ms == int(datetime(2026, 11, 23, 5, 59, tzinfo=timezone.utc).timestamp()) * 1000 + 123


def test_an_omitted_timestamp_means_the_receive_time() -> None:
    reading = validate({k: v for k, v in METER.items() if k != "timestamp"})
    assert reading.timestamp == NOW


@pytest.mark.parametrize("timestamp,message", [
    ("2026-11-23T06:00:00", "Input should have timezone info"),
    ("2026-11-23T06:05:01Z", "is 301 s in the future"),
    ("2026-10-24T05:59:59Z", "older than the retention period of 30 days"),
    (1795413600, "must be an RFC 3339 string"),
    ("yesterday", "must be an RFC 3339 string"),
    # The contract is RFC 3339 with an offset; pydantic alone would take these as valid datetimes.
    ("1796148133", "must be an RFC 3339 string"),
    ("1796148133000", "must be an RFC 3339 string"),
    ("2026-11-23T06:00:00+0000", "must be an RFC 3339 string"),
    ("2026-11-23T06:00:00 +00:00", "must be an RFC 3339 string"),
    ("2026-11-23", "must be an RFC 3339 string"),
    # Offsets that push the instant off the calendar: a rejection, never an OverflowError.
    ("0001-01-01T00:00:00+01:00", "outside the range of representable times"),
    ("9999-12-31T23:59:59-01:00", "outside the range of representable times"),
    ("0001-01-01T00:00:00Z", "older than the retention period"),
    ("9999-12-31T23:59:59Z", "in the future"),
])
def test_timestamps_outside_the_rules_are_rejected(timestamp, message) -> None:
    field, text = first_error({**METER, "timestamp": timestamp})
    assert field == "timestamp"
    assert message in text


def test_the_future_skew_and_retention_are_configurable() -> None:
    rules = ReadingRules(now=NOW, max_future_skew=timedelta(hours=1), retention=timedelta(days=400))
    assert validate({**METER, "timestamp": "2026-11-23T06:59:00Z"}, rules)
    assert validate({**METER, "timestamp": "2025-11-23T06:59:00Z"}, rules)


def test_a_timestamp_exactly_at_the_skew_limit_is_accepted() -> None:
    assert validate({**METER, "timestamp": "2026-11-23T06:05:00Z"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(value) -> None:
    assert first_error({**METER, "kwhConsumedAc": value}) == ("kwhConsumedAc", "Input should be a finite number")


@pytest.mark.parametrize("value", ["NaN", "nan", "Infinity", "-inf", "1e999"])
def test_non_finite_numbers_are_rejected_as_strings_too(value) -> None:
    assert first_error({**METER, "kwhConsumedAc": value})[0] == "kwhConsumedAc"


@pytest.mark.parametrize("value", ["1.5", True, None, [1.0], {"kwh": 1.0}])
def test_numbers_must_be_numbers_not_strings_or_booleans(value) -> None:
    assert first_error({**METER, "kwhConsumedAc": value}) == ("kwhConsumedAc", "Input should be a valid number")


def test_integers_are_taken_as_floats() -> None:
    assert validate({**METER, "kwhConsumedAc": 2}).kwh_consumed_ac == 2.0


@pytest.mark.parametrize("payload,field", [
    ({**METER, "kwhConsumedAc": -0.001}, "kwhConsumedAc"),
    ({**METER, "kwhConsumedAc": 10.5}, "kwhConsumedAc"),
    ({**METER, "voltage": 1000.1}, "voltage"),
    ({**METER, "voltage": -1}, "voltage"),
    ({**VEHICLE, "soc": 150}, "soc"),
    ({**VEHICLE, "soc": -1}, "soc"),
    ({**VEHICLE, "batteryTemp": -41}, "batteryTemp"),
    ({**VEHICLE, "batteryTemp": 121}, "batteryTemp"),
    ({**VEHICLE, "kwhDeliveredDc": -1}, "kwhDeliveredDc"),
])
def test_values_outside_their_ranges_are_rejected(payload, field) -> None:
    assert first_error(payload)[0] == field


def test_the_energy_ceiling_is_configurable_and_named_in_the_message() -> None:
    assert "plausible ceiling of 10.0 kWh" in first_error({**METER, "kwhConsumedAc": 11})[1]
    assert validate({**METER, "kwhConsumedAc": 11}, ReadingRules(now=NOW, max_energy_kwh=20)).kwh_consumed_ac == 11


@pytest.mark.parametrize("device_id", [
    "METER 1", "METER,1", 'METER"1', "METER=1", "METER_1\n", "METER\\1", "M\u00e9TER", "", "M" * 65, "a;DROP TABLE x",
    "x'y", "a|b", "a/b", "a\tb",
])
def test_ids_that_could_inject_into_line_protocol_sql_or_flux_are_rejected(device_id) -> None:
    assert first_error({**METER, "meterId": device_id})[0] == "meterId"


@pytest.mark.parametrize("device_id", ["M", "METER_001", "EV-101", "depot1:bay.7", "M" * 64])
def test_ids_of_the_allowed_alphabet_are_accepted(device_id) -> None:
    assert validate({**METER, "meterId": device_id}).meter_id == device_id


def test_snake_case_names_are_accepted_beside_camel_case() -> None:
    reading = validate({"meter_id": "M1", "kwh_consumed_ac": 1, "voltage": 2, "timestamp": "2026-11-23T05:59:00Z"})
    assert reading.meter_id == "M1"


def test_unknown_fields_are_ignored() -> None:
    assert validate({**METER, "firmware": "1.2.3"}).meter_id == "METER_001"


def test_a_list_keeps_good_items_and_reports_each_bad_one_by_index() -> None:
    body = (b'[' + b','.join([
        b'{"meterId":"M1","kwhConsumedAc":1,"voltage":2}',
        b'{"meterId":"M 2","kwhConsumedAc":1,"voltage":2}',
        b'{"vehicleId":"V1","soc":1,"kwhDeliveredDc":1,"batteryTemp":3}',
        b'{"vehicleId":"V2","soc":NaN,"kwhDeliveredDc":1,"batteryTemp":3}',
    ]) + b']')
    batch = validate_batch(body, RULES)
    assert [r.device_id for r in batch.readings] == ["M1", "V1"]
    assert [(r.index, r.errors[0].field) for r in batch.rejections] == [(1, "meterId"), (3, "soc")]


def test_a_typed_batch_rejects_the_other_kind() -> None:
    batch = validate_batch(b'{"vehicleId":"V1","soc":1,"kwhDeliveredDc":1,"batteryTemp":3}', RULES, kind="meter")
    assert batch.readings == []
    assert {e.field for e in batch.rejections[0].errors} == {"meterId", "kwhConsumedAc", "voltage"}


@pytest.mark.parametrize("body,message", [
    (b"", "JSON object"),
    (b"{", "not valid JSON"),
    (b"[1,", "not valid JSON"),
    (b"[]", "holds no readings"),
    (b"42", "JSON object"),
    (b"null", "JSON object"),
])
def test_bodies_that_are_not_readings_raise_invalid_body(body, message) -> None:
    with pytest.raises(InvalidBody, match=message):
        validate_batch(body, RULES)


def test_a_list_over_the_item_limit_is_refused_whole() -> None:
    body = b"[" + b",".join([b'{"meterId":"M1","kwhConsumedAc":1,"voltage":2}'] * 3) + b"]"
    with pytest.raises(InvalidBody, match="at most 2"):
        validate_batch(body, RULES, max_items=2)


def test_rules_need_an_aware_now() -> None:
    with pytest.raises(ValueError):
        ReadingRules(now=datetime(2026, 1, 1))


# -- the timestamp parser's fast path -------------------------------------------------------------

_PYDANTIC_AWARE = TypeAdapter(AwareDatetime)


def _two(low: int, high: int):
    return st.integers(low, high).map(lambda n: f"{n:02d}")


_RFC3339_LIKE = st.builds(
    lambda y, mo, d, sep, h, mi, s, frac, off: f"{y:04d}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{off}",
    st.integers(0, 9999), _two(0, 13), _two(0, 32), st.sampled_from("Tt "), _two(0, 25), _two(0, 61), _two(0, 61),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12).map(lambda f: "." + f)),
    st.one_of(st.sampled_from(["Z", "z", ""]),
              st.builds(lambda sign, hh, mm: f"{sign}{hh}:{mm}", st.sampled_from("+-"), _two(0, 25), _two(0, 61))),
)


@settings(max_examples=4000, deadline=None)
@given(_RFC3339_LIKE)
def test_the_fast_timestamp_parser_gives_what_pydantic_gives_for_every_rfc3339_form(text: str) -> None:
    # datetime.fromisoformat reads the text first; what it accepts must be exactly pydantic's instant,
    # and what pydantic refuses it must not accept (the error then comes from pydantic).
    try:
        expected: datetime | None = to_utc(_PYDANTIC_AWARE.validate_python(text))
    except (ValidationError, ValueError):
        expected = None
    try:
        got: datetime | None = _parse_aware(text, lambda value, *_: _PYDANTIC_AWARE.validate_python(value))
    except (ValidationError, ValueError):
        got = None
    assert got == expected
    if got is not None:
        assert got.utcoffset() == timedelta(0)
