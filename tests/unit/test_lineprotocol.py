"""Line protocol: decoding as InfluxDB 2.x does, encoding that decodes back, and their edges."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chargewatch import lineprotocol
from chargewatch.lineprotocol import (
    PRECISION_TO_NS,
    Line,
    LineProtocolError,
    encode_lines,
    encode_point,
    escape_field_key,
    escape_measurement,
    escape_tag,
    parse_lines,
)

METER_LINE = "meter,meter_id=METER_001 kwh_consumed_ac=1.25,voltage=230 1795413600000"
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_one(line: str, precision: str = "ns") -> Line:
    lines, errors = parse_lines(line, precision)
    assert errors == []
    assert len(lines) == 1
    return lines[0]


def rejection(line: str) -> LineProtocolError:
    lines, errors = parse_lines(line)
    assert lines == []
    assert len(errors) == 1
    return errors[0]


# Decoding ---------------------------------------------------------------------------------------


def test_a_meter_line_parses_into_measurement_tags_fields_and_timestamp() -> None:
    line = parse_one(METER_LINE, "ms")
    assert line == Line(
        measurement="meter",
        tags={"meter_id": "METER_001"},
        fields={"kwh_consumed_ac": 1.25, "voltage": 230.0},
        timestamp_ns=1_795_413_600_000_000_000,
        line_number=1,
        text=METER_LINE,
    )
    assert type(line.fields["voltage"]) is float


@pytest.mark.parametrize("precision,timestamp,expected_ns", [
    ("ns", "1795413600000000000", 1_795_413_600_000_000_000),
    ("us", "1795413600000000", 1_795_413_600_000_000_000),
    ("ms", "1795413600000", 1_795_413_600_000_000_000),
    ("s", "1795413600", 1_795_413_600_000_000_000),
    ("s", "-1", -1_000_000_000),
])
def test_the_timestamp_is_scaled_to_nanoseconds_by_the_precision(precision, timestamp, expected_ns) -> None:
    assert parse_one(f"m f=1 {timestamp}", precision).timestamp_ns == expected_ns


def test_a_line_without_timestamp_has_none() -> None:
    assert parse_one("m f=1").timestamp_ns is None
    assert parse_one("m f=1   ").timestamp_ns is None


@pytest.mark.parametrize("precision", ["n", "m", "h", "", "NS", "u", None])
def test_an_unknown_precision_raises_value_error(precision) -> None:
    with pytest.raises(ValueError, match="precision"):
        parse_lines(METER_LINE, precision)


def test_the_precision_table_is_in_nanoseconds() -> None:
    assert PRECISION_TO_NS == {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


@pytest.mark.parametrize("text,expected", [
    ("1", 1.0), ("1.5", 1.5), ("-1e3", -1000.0), ("1E+3", 1000.0), ("2.5e-3", 0.0025), (".5", 0.5),
    ("5.", 5.0), ("-0.5", -0.5), ("007", 7.0), ("-.5", -0.5),
])
def test_bare_numbers_are_floats(text, expected) -> None:
    value = parse_one(f"m f={text}").fields["f"]
    assert type(value) is float
    assert value == expected


@pytest.mark.parametrize("text,expected", [
    ("5i", 5), ("-5i", -5), ("0i", 0),
    ("9223372036854775807i", 2**63 - 1), ("-9223372036854775808i", -(2**63)),
    ("5u", 5), ("18446744073709551615u", 2**64 - 1),
])
def test_suffixed_numbers_are_integers(text, expected) -> None:
    value = parse_one(f"m f={text}").fields["f"]
    assert type(value) is int
    assert value == expected


@pytest.mark.parametrize("text,expected", [
    ("t", True), ("T", True), ("true", True), ("True", True), ("TRUE", True),
    ("f", False), ("F", False), ("false", False), ("False", False), ("FALSE", False),
])
def test_every_boolean_spelling_is_accepted(text, expected) -> None:
    assert parse_one(f"m f={text}").fields["f"] is expected


def test_a_line_can_mix_every_field_type() -> None:
    line = parse_one('m a=1.5,b=2i,c=3u,d=t,e="text"')
    assert line.fields == {"a": 1.5, "b": 2, "c": 3, "d": True, "e": "text"}


def test_comment_and_blank_lines_are_skipped_but_still_counted() -> None:
    body = "# a comment\n\n   \n  # indented comment\nm f=1\n\t\nm f=2\n"
    lines, errors = parse_lines(body)
    assert errors == []
    assert [(line.line_number, line.fields["f"]) for line in lines] == [(5, 1.0), (7, 2.0)]


def test_crlf_line_endings_are_tolerated() -> None:
    lines, errors = parse_lines("m f=1 1\r\nm f=2 2\r\nm f=3 3\r")
    assert errors == []
    assert [line.timestamp_ns for line in lines] == [1, 2, 3]
    assert lines[0].text == "m f=1 1"


def test_leading_whitespace_and_runs_of_spaces_between_sections_are_tolerated() -> None:
    line = parse_one("  \tm,t=v  \t f=1   5   ")
    assert (line.measurement, line.tags, line.fields, line.timestamp_ns) == ("m", {"t": "v"}, {"f": 1.0}, 5)


def test_tags_keep_their_values_whatever_order_they_come_in() -> None:
    assert parse_one("m,z=1,a=2 f=1").tags == {"z": "1", "a": "2"}


def test_a_tag_value_may_start_with_an_equals_sign_as_in_influxdb() -> None:
    assert parse_one("m,t==v f=1").tags == {"t": "=v"}


@pytest.mark.parametrize("line,measurement", [
    (r"my\,meter f=1", "my,meter"),
    (r"my\ meter f=1", "my meter"),
    ("my=meter f=1", "my=meter"),
    (r"my\=meter f=1", "my=meter"),
    (r'my\"meter f=1', 'my"meter'),
    (r"my\meter f=1", r"my\meter"),
    ('my"meter f=1', 'my"meter'),
    (r"\ meter f=1", " meter"),
])
def test_measurement_unescapes_comma_space_equals_and_quote_as_influxdb_does(line, measurement) -> None:
    assert parse_one(line).measurement == measurement


@pytest.mark.parametrize("line,tags", [
    (r"m,my\,key=v f=1", {"my,key": "v"}),
    (r"m,my\=key=v f=1", {"my=key": "v"}),
    (r"m,my\ key=v f=1", {"my key": "v"}),
    (r"m,k=my\,value f=1", {"k": "my,value"}),
    (r"m,k=my\=value f=1", {"k": "my=value"}),
    (r"m,k=my\ value f=1", {"k": "my value"}),
    (r"m,k=my\value f=1", {"k": r"my\value"}),
    (r'm,k=my\"value f=1', {"k": r'my\"value'}),
    (r"m,k=a\\,b f=1", {"k": r"a\,b"}),
    ('m,k="quoted" f=1', {"k": '"quoted"'}),
])
def test_tag_keys_and_values_unescape_comma_equals_and_space(line, tags) -> None:
    assert parse_one(line).tags == tags


@pytest.mark.parametrize("line,key", [
    (r"m my\,field=1", "my,field"),
    (r"m my\=field=1", "my=field"),
    (r"m my\ field=1", "my field"),
    (r'm my\"field=1', 'my"field'),
    (r"m my\field=1", r"my\field"),
])
def test_field_keys_unescape_comma_equals_space_and_quote(line, key) -> None:
    assert parse_one(line).fields == {key: 1.0}


@pytest.mark.parametrize("raw,value", [
    (r'"say \"hi\""', 'say "hi"'),
    (r'"back\\slash"', "back\\slash"),
    (r'"literal\n"', r"literal\n"),
    (r'"a,b c=d"', "a,b c=d"),
    (r'"ends with \\"', "ends with \\"),
    (r'"\\\""', '\\"'),
    ('""', ""),
    ('"5i"', "5i"),
])
def test_string_fields_unescape_quotes_and_backslashes_only(raw, value) -> None:
    assert parse_one(f"m s={raw},n=1").fields == {"s": value, "n": 1.0}


@pytest.mark.parametrize("line,reason", [
    ("m", "missing fields"),
    ("m,t=v", "missing fields"),
    ("m,t=v ", "missing fields"),
    (",t=v f=1", "missing measurement"),
    ("m,=v f=1", "missing tag key"),
    ("m,t=v, f=1", "missing tag key"),
    ("m,t= f=1", "missing tag value"),
    ("m,t f=1", "missing tag value"),
    ("m,t=a=b f=1", "invalid tag format"),
    ("m,_field=x f=1", "tag key '_field' is reserved"),
    ("m,_measurement=x f=1", "tag key '_measurement' is reserved"),
    ("m,time=x f=1", "tag key 'time' is reserved"),
    ("m,t=a,t=b f=1", "duplicate tag 't'"),
    (r"m,t\ x=a,t\ x=b f=1", "duplicate tag 't x'"),
    ("m f", "invalid field format"),
    ("m f=1,", "invalid field format"),
    ("m f=1,,g=2", "invalid field format"),
    ("m =1", "missing field key"),
    ("m f=", "missing value for field 'f'"),
    ("m f=,g=1", "missing value for field 'f'"),
    ("m f=1,f=2", "duplicate field 'f'"),
    ("m time=1", "field key 'time' is reserved"),
    ("m f=1.5i", "invalid number"),
    ("m f=1.2.3", "invalid number"),
    ("m f=1e", "invalid number"),
    ("m f=+1", "invalid number"),
    ("m f=1_000", "invalid number"),
    ("m f=0x10", "invalid number"),
    ("m f=1-2", "invalid number"),
    ("m f=-", "invalid number"),
    ("m f=\u0661", "invalid field value"),
    ("m f=yes", "invalid field value"),
    ("m f=tru", "invalid field value"),
    ("m f=NaN", "NaN and infinity are not allowed"),
    ("m f=nan", "NaN and infinity are not allowed"),
    ("m f=-Inf", "NaN and infinity are not allowed"),
    ("m f=+inf", "NaN and infinity are not allowed"),
    ("m f=Infinity", "NaN and infinity are not allowed"),
    ("m f=1e400", "float out of range"),
    ("m f=9223372036854775808i", "integer out of range"),
    ("m f=18446744073709551616u", "unsigned integer out of range"),
    ("m f=-1u", "negative unsigned integer"),
    ('m f="abc', "unterminated string"),
    ('m f="abc\\"', "unterminated string"),
    ('m f="a"b', "unexpected text after the string"),
    ("m f=1 1.5", "timestamp is not an integer"),
    ("m f=1 12a", "timestamp is not an integer"),
    ("m f=1 -", "timestamp is not an integer"),
    ("m f=1 \u0661", "timestamp is not an integer"),
    ("m f=1 1 2", "unexpected text after the timestamp"),
    ("m f=1 1\t", "timestamp is not an integer"),
    ("m f=1 9223372036854775807", "timestamp out of range"),
    ("m f=1 -9223372036854775807", "timestamp out of range"),
    ("m f=1 99999999999999999999", "timestamp out of range"),
])
def test_each_invalid_line_is_rejected_with_its_reason(line, reason) -> None:
    error = rejection(line)
    assert reason in error.reason
    assert error.line_number == 1
    assert error.text == line


def test_the_timestamp_range_is_influxdbs_which_reserves_the_int64_extremes() -> None:
    assert parse_one("m f=1 9223372036854775806").timestamp_ns == 2**63 - 2
    assert parse_one("m f=1 -9223372036854775806").timestamp_ns == -(2**63) + 2
    assert "out of range" in parse_lines("m f=1 9223372037", "s")[1][0].reason


def test_a_series_key_longer_than_64_kib_is_rejected() -> None:
    assert "series key too long" in rejection("m" * 70_000 + " f=1").reason
    assert "series key too long" in rejection("m," + "t\\ =" + "v" * 70_000 + " f=1").reason
    assert "series key too long" in rejection("m\udc80" * 30_000 + " f=1").reason


def test_bad_lines_are_reported_with_their_line_numbers_while_good_lines_are_kept() -> None:
    body = "m f=1\nm f=NaN\n# note\nm,t=v f=2\nm f=1 x\n"
    lines, errors = parse_lines(body)
    assert [line.line_number for line in lines] == [1, 4]
    assert [(error.line_number, error.text) for error in errors] == [(2, "m f=NaN"), (5, "m f=1 x")]


def test_the_error_reads_line_number_reason_and_text_and_is_a_value_error() -> None:
    error = parse_lines("m f=1\nm f=yes")[1][0]
    assert isinstance(error, ValueError)
    assert str(error) == "line 2: invalid field value in field 'f': 'yes': m f=yes"


def test_the_error_text_is_cut_to_200_characters() -> None:
    error = rejection("m f=" + "x" * 500)
    assert len(error.text) == 200
    assert len(error.reason) < 120


def test_numbers_past_pythons_digit_limit_are_rejected_not_raised() -> None:
    digits = "9" * 5000
    assert "integer out of range" in rejection(f"m f={digits}i").reason
    assert "timestamp out of range" in rejection(f"m f=1 {digits}").reason
    assert "float out of range" in rejection(f"m f={digits}").reason


def test_leading_zeros_are_legal_even_in_long_numbers() -> None:
    assert parse_one(f"m f={'0' * 5000}5i {'0' * 5000}7").fields == {"f": 5}
    assert parse_one(f"m f=1 {'0' * 5000}7").timestamp_ns == 7


def test_hostile_numbers_are_rejected_in_linear_time() -> None:
    started = time.perf_counter()
    errors = parse_lines(f"m f={'1' * 200_000}x\nm f=1 {'1' * 200_000}x\nm f=\"{'a' * 200_000}")[1]
    assert len(errors) == 3
    assert time.perf_counter() - started < 1.0


# Encoding ---------------------------------------------------------------------------------------


def test_a_meter_point_is_encoded_with_sorted_tags_and_float_fields() -> None:
    line = encode_point(
        "meter",
        {"vehicle_id": "VEHICLE_001", "meter_id": "METER_001"},
        {"kwh_consumed_ac": 1.25, "voltage": 230.0},
        1_795_413_600_000,
    )
    assert line == (
        "meter,meter_id=METER_001,vehicle_id=VEHICLE_001 kwh_consumed_ac=1.25,voltage=230.0 1795413600000"
    )


def test_tags_that_are_none_or_empty_and_fields_that_are_none_are_omitted() -> None:
    line = encode_point("m", {"a": None, "b": "", "c": "x"}, {"f": None, "g": 1.0}, None)
    assert line == "m,c=x g=1.0"


def test_a_point_without_tags_or_timestamp_is_just_measurement_and_fields() -> None:
    assert encode_point("m", {}, {"f": 0.5}) == "m f=0.5"


@pytest.mark.parametrize("value,text", [
    (1.0, "1.0"), (-0.0, "-0.0"), (1e16, "1e+16"), (2.5e-07, "2.5e-07"), (0.1, "0.1"),
    (5, "5i"), (-(2**63), "-9223372036854775808i"), (True, "true"), (False, "false"),
    ("plain", '"plain"'), ('say "hi" \\o/', r'"say \"hi\" \\o/"'), ("", '""'),
])
def test_each_field_type_is_written_as_influxdb_reads_it(value, text) -> None:
    line = encode_point("m", {}, {"f": value})
    assert line == f"m f={text}"
    parsed = parse_one(line).fields["f"]
    assert type(parsed) is type(value)
    assert parsed == value


def test_tag_order_in_the_mapping_does_not_change_the_line() -> None:
    first = encode_point("m", {"b": "2", "a": "1"}, {"f": 1.0}, 1)
    second = encode_point("m", {"a": "1", "b": "2"}, {"f": 1.0}, 1)
    assert first == second == "m,a=1,b=2 f=1.0 1"


def test_different_tag_sets_of_one_measurement_give_different_lines() -> None:
    lines = {encode_point("m", {"t": value}, {"f": 1.0}) for value in ("x", "y", "x y")}
    assert lines == {"m,t=x f=1.0", "m,t=y f=1.0", r"m,t=x\ y f=1.0"}


@pytest.mark.parametrize("function,text,escaped", [
    (escape_measurement, "a,b c=d\"e", r'a\,b\ c=d"e'),
    (escape_tag, "a,b c=d\"e", r'a\,b\ c\=d"e'),
    (escape_field_key, "a,b c=d\"e", r'a\,b\ c\=d"e'),
    (escape_tag, r"back\slash", r"back\slash"),
])
def test_escape_functions_escape_exactly_their_delimiters(function, text, escaped) -> None:
    assert function(text) == escaped


@pytest.mark.parametrize("measurement,tags,fields", [
    ("a,b c", {"k,1 2": "v,1 2=3"}, {"f,1 2=3": 1.0}),
    ("m", {"k=": "=v"}, {"=f": 1.0}),
    (" m", {" k": " v"}, {" f": 1.0}),
    ("m", {"k": "a\\b"}, {"f": "a\\b"}),
])
def test_escaped_names_in_every_position_round_trip(measurement, tags, fields) -> None:
    line = parse_one(encode_point(measurement, tags, fields, 7))
    assert (line.measurement, line.tags, line.fields, line.timestamp_ns) == (measurement, tags, fields, 7)


def test_escaped_comma_in_tag_value_round_trips() -> None:
    assert parse_one(encode_point("m", {"t": "a,b"}, {"f": 1.0})).tags == {"t": "a,b"}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value) -> None:
    with pytest.raises(ValueError, match="finite"):
        encode_point("m", {}, {"f": value})


@pytest.mark.parametrize("fields", [{}, {"f": None}])
def test_a_point_without_fields_is_refused(fields) -> None:
    with pytest.raises(ValueError, match="no fields"):
        encode_point("m", {"t": "v"}, fields)


@pytest.mark.parametrize("measurement,tags,fields", [
    ("m\n", {}, {"f": 1.0}),
    ("m", {"k\n": "v"}, {"f": 1.0}),
    ("m", {"k": "v\r"}, {"f": 1.0}),
    ("m", {}, {"f\n": 1.0}),
    ("m", {}, {"f": "two\nlines"}),
    ("m", {}, {"f": "carriage\rreturn"}),
], ids=["measurement", "tag-key", "tag-value", "field-key", "string-lf", "string-cr"])
def test_line_breaks_are_refused_everywhere(measurement, tags, fields) -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_point(measurement, tags, fields)


@pytest.mark.parametrize("measurement,tags,fields", [
    ("m\\", {}, {"f": 1.0}),
    ("m", {"k\\": "v"}, {"f": 1.0}),
    ("m", {"k": "v\\"}, {"f": 1.0}),
    ("m", {}, {"f\\": 1.0}),
    ("m\\ x", {}, {"f": 1.0}),
    ("m", {"k": "a\\,b"}, {"f": 1.0}),
    ("m", {}, {'f\\"': 1.0}),
])
def test_a_backslash_that_would_be_read_as_an_escape_is_refused(measurement, tags, fields) -> None:
    with pytest.raises(ValueError, match="backslash"):
        encode_point(measurement, tags, fields)


@pytest.mark.parametrize("measurement,tags,fields,message", [
    ("", {}, {"f": 1.0}, "must not be empty"),
    ("#m", {}, {"f": 1.0}, "starts with '#'"),
    ("\tm", {}, {"f": 1.0}, "starts with"),
    ("m", {"": "v"}, {"f": 1.0}, "must not be empty"),
    ("m", {"time": "v"}, {"f": 1.0}, "reserved"),
    ("m", {"_field": "v"}, {"f": 1.0}, "reserved"),
    ("m", {"_measurement": "v"}, {"f": 1.0}, "reserved"),
    ("m", {}, {"": 1.0}, "must not be empty"),
    ("m", {}, {"\tf": 1.0}, "starts with"),
    ("m", {}, {"time": 1.0}, "reserved"),
    ("m", {}, {"f": 2**63}, "int64"),
])
def test_names_and_values_influxdb_would_refuse_are_refused(measurement, tags, fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        encode_point(measurement, tags, fields)


@pytest.mark.parametrize("tags,fields,timestamp", [
    ({"t": 5}, {"f": 1.0}, None),
    ({}, {"f": [1]}, None),
    ({}, {"f": 1.0}, True),
    ({}, {"f": 1.0}, 1.5),
])
def test_unsupported_types_raise_type_error(tags, fields, timestamp) -> None:
    with pytest.raises(TypeError):
        encode_point("m", tags, fields, timestamp)


def test_a_timestamp_outside_int64_is_refused() -> None:
    with pytest.raises(ValueError, match="int64"):
        encode_point("m", {}, {"f": 1.0}, 2**63)


def test_encode_lines_joins_points_with_newlines() -> None:
    body = encode_lines([("m", {"t": "a"}, {"f": 1.0}, 1), ("m", {"t": "b"}, {"f": 2.0}, 2)])
    assert body == "m,t=a f=1.0 1\nm,t=b f=2.0 2"
    assert [line.tags["t"] for line in parse_lines(body)[0]] == ["a", "b"]


# Properties -------------------------------------------------------------------------------------

_SPECIAL = list(',= "\\#\t\0')
_name_chars = st.one_of(
    st.sampled_from(_SPECIAL),
    st.characters(exclude_categories=["Cs"], exclude_characters="\n\r"),
)
_names = st.text(_name_chars, min_size=1, max_size=10)
_field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(_name_chars, max_size=10),
)
_points = st.tuples(
    _names,
    st.dictionaries(_names, st.one_of(_names, st.just(""), st.none()), max_size=4),
    st.dictionaries(_names, st.one_of(_field_values, st.none()), min_size=1, max_size=4),
)


def _encoded_or_none(measurement, tags, fields, timestamp) -> str | None:
    try:
        return encode_point(measurement, tags, fields, timestamp)
    except ValueError:
        return None


@PROPERTY_SETTINGS
@given(point=_points, precision=st.sampled_from(sorted(PRECISION_TO_NS)), data=st.data())
def test_every_encodable_point_parses_back_to_the_same_data(point, precision, data) -> None:
    measurement, tags, fields = point
    multiplier = PRECISION_TO_NS[precision]
    limit = (2**63 - 2) // multiplier  # InfluxDB's time range, in this precision
    timestamp = data.draw(st.none() | st.integers(-limit, limit))
    line = _encoded_or_none(measurement, tags, fields, timestamp)
    assume(line is not None)
    assert line is not None

    parsed = parse_one(line, precision)
    expected_fields = {key: value for key, value in fields.items() if value is not None}
    assert parsed.measurement == measurement
    assert parsed.tags == {key: value for key, value in tags.items() if value}
    assert parsed.fields == expected_fields
    assert {key: type(value) for key, value in parsed.fields.items()} == {
        key: type(value) for key, value in expected_fields.items()
    }
    assert parsed.timestamp_ns == (None if timestamp is None else timestamp * multiplier)


@PROPERTY_SETTINGS
@given(body=st.text(st.characters(exclude_categories=())))
def test_arbitrary_text_never_raises(body) -> None:
    lines, errors = parse_lines(body)
    assert all(isinstance(error, LineProtocolError) for error in errors)
    assert all(isinstance(line, Line) for line in lines)


_line_protocol_alphabet = st.sampled_from(list('m,= "\\#\t\0\r\n-.0123456789eEiutfTFxN'))


@PROPERTY_SETTINGS
@given(body=st.text(_line_protocol_alphabet, max_size=80), precision=st.sampled_from(sorted(PRECISION_TO_NS)))
def test_line_protocol_like_text_never_raises_and_numbers_every_line(body, precision) -> None:
    lines, errors = parse_lines(body, precision)
    count = body.replace("\r\n", "\n").count("\n") + 1
    numbers = [line.line_number for line in lines] + [error.line_number for error in errors]
    assert len(numbers) == len(set(numbers))
    assert all(1 <= number <= count for number in numbers)


def _outcome(parse, line: str):
    try:
        return parse(line, 1)
    except lineprotocol._Rejected as rejected:
        return rejected.reason


@PROPERTY_SETTINGS
@given(line=st.text(st.sampled_from(list("m,= \t\0-.0123456789eEiutfTFx")), min_size=1, max_size=40))
def test_the_fast_and_the_general_scanner_agree_on_lines_without_escapes(line) -> None:
    # parse_lines hands the fast path only lines without backslashes or quotes, stripped of leading
    # whitespace; it must then judge them exactly as the escape-aware scanner would.
    assume(line[0] not in " \t\0")
    assert _outcome(lineprotocol._parse_plain, line) == _outcome(lineprotocol._parse_escaped, line)


# Cross-check with the official client ----------------------------------------------------------

_point_name_chars = st.one_of(
    st.sampled_from(list(',= "\\')),
    st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\t"),
)
_point_names = st.text(_point_name_chars, min_size=1, max_size=10)


@PROPERTY_SETTINGS
@given(
    measurement=_point_names,
    tags=st.dictionaries(_point_names, _point_names, max_size=3),
    fields=st.dictionaries(_point_names, _field_values, min_size=1, max_size=3),
    timestamp=st.none() | st.integers(0, 2**62),
)
def test_influxdb_client_point_output_parses_to_the_same_data(measurement, tags, fields, timestamp) -> None:
    client = pytest.importorskip("influxdb_client")
    # The client quietly alters what line protocol cannot carry (it pads a trailing backslash);
    # compare only points our encoder accepts, which are exactly those.
    ours = _encoded_or_none(measurement, tags, fields, timestamp)
    assume(ours is not None)
    assert ours is not None
    point = client.Point(measurement)
    for key, value in tags.items():
        point.tag(key, value)
    for key, value in fields.items():
        point.field(key, value)
    if timestamp is not None:
        point.time(timestamp, client.WritePrecision.NS)

    theirs = parse_one(point.to_line_protocol())
    assert (theirs.measurement, theirs.tags, theirs.fields, theirs.timestamp_ns) == (
        measurement, tags, fields, timestamp,
    )
    mine = parse_one(ours)
    assert (mine.measurement, mine.tags, mine.fields, mine.timestamp_ns) == (
        theirs.measurement, theirs.tags, theirs.fields, theirs.timestamp_ns,
    )


def test_a_meter_point_from_the_official_client_parses_like_ours() -> None:
    client = pytest.importorskip("influxdb_client")
    point = (
        client.Point("meter")
        .tag("meter_id", "METER_001")
        .tag("vehicle_id", "VEHICLE_001")
        .field("kwh_consumed_ac", 3.0)
        .field("voltage", 230.5)
        .time(1_795_413_600_000, client.WritePrecision.MS)
    )
    theirs = parse_one(point.to_line_protocol(), "ms")
    ours = parse_one(
        encode_point("meter", {"meter_id": "METER_001", "vehicle_id": "VEHICLE_001"},
                     {"kwh_consumed_ac": 3.0, "voltage": 230.5}, 1_795_413_600_000),
        "ms",
    )
    assert (theirs.measurement, theirs.tags, theirs.fields, theirs.timestamp_ns) == (
        ours.measurement, ours.tags, ours.fields, ours.timestamp_ns,
    )
    assert type(theirs.fields["kwh_consumed_ac"]) is float
