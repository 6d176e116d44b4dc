r"""InfluxDB line protocol: a strict decoder and a fast encoder.

The decoder accepts what InfluxDB 2.x accepts on ``POST /api/v2/write`` (its parser is
``models/points.go``) and refuses the rest line by line, so a gateway's good lines can be stored
while its bad ones are reported::

    measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]

Escaping follows InfluxDB's parser. Writers escape ``,`` and space in the measurement and ``,``,
``=`` and space in tag keys, tag values and field keys, with a backslash. Reading, ``\,``, ``\=``
and ``\ `` become the character in every name, and so does ``\"`` in the measurement and field
keys (InfluxDB's ``escape.Unescape``); any other backslash is literal. A delimiter directly
preceded by a backslash is escaped: ``a\\,b`` is one name, read as ``a\,b``. String field values
are double-quoted and unescape ``\"`` and ``\\`` only.
Field values: ``1``, ``-1.5``, ``1e3`` (float), ``5i`` (int), ``5u`` (unsigned),
``t``/``true``/``True``/``TRUE`` and the ``f`` forms (bool), ``"text"`` (str).
Lines are separated by ``\n`` (a ``\r\n`` ending is tolerated), so a string cannot span lines;
blank lines and lines starting with ``#`` are skipped.

Stricter than InfluxDB, because chargewatch never silently drops data: a field key given twice, a
field named ``time`` (InfluxDB drops it) and text after a closing string quote are errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, NoReturn

FieldValue = float | int | str | bool
EncodablePoint = tuple[str, Mapping[str, str | None], Mapping[str, FieldValue | None], int | None]
_Parsed = tuple[str, dict[str, str], dict[str, FieldValue], int | None]

PRECISION_TO_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
# InfluxDB keeps the two lowest and the highest int64 nanoseconds as internal sentinels.
_MIN_TIME_NS = _INT64_MIN + 2
_MAX_TIME_NS = _INT64_MAX - 1
_MAX_KEY_BYTES = 65535
_MAX_ERROR_TEXT = 200
_MAX_SHOWN_VALUE = 40

_RESERVED_TAG_KEYS = frozenset({"_field", "_measurement", "time"})
_BOOLEANS = {
    "t": True, "T": True, "true": True, "True": True, "TRUE": True,
    "f": False, "F": False, "false": False, "False": False, "FALSE": False,
}  # fmt: skip
_NON_FINITE = frozenset({"nan", "inf", "infinity"})
_DECIMAL_CHARS = "-.0123456789"

# Possessive quantifiers keep these linear on hostile input (a long digit run ending in junk).
_NUMBER = re.compile(r"(-?[0-9]++)([iu])|-?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?")
_INTEGER = re.compile(r"-?[0-9]++")
_MEASUREMENT_END = re.compile(r"(?<!\\)[, ]")
_NAME_END = re.compile(r"(?<!\\)[, =]")
_VALUE_END = re.compile(r"[, ]")
_STRING_REST = re.compile(r'(?:[^"\\]++|\\.)*+"', re.DOTALL)
_WHITESPACE = re.compile(r"[ \t\0]*+")


def _skip_whitespace(line: str, pos: int) -> int:
    """The position after the whitespace at ``pos`` (``_WHITESPACE`` matches the empty string too)."""
    match = _WHITESPACE.match(line, pos)
    assert match is not None
    return match.end()
_ESCAPED_IN_NAME = re.compile(r'\\([, ="])')
_ESCAPED_IN_TAG = re.compile(r"\\([, =])")
_ESCAPED_IN_STRING = re.compile(r'\\([\\"])')


class Line(NamedTuple):
    """One parsed line.

    ``timestamp_ns`` is nanoseconds since the Unix epoch, or None when the line has no timestamp
    (InfluxDB uses the receive time). ``text`` is the raw line without its line ending. A named
    tuple, not a frozen dataclass: one is built for every line, and a tuple costs a third as much.
    """

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    timestamp_ns: int | None
    line_number: int
    text: str


class LineProtocolError(ValueError):
    """A line InfluxDB would refuse; ``line_number`` is 1-based, ``text`` the raw line (cut to 200)."""

    def __init__(self, line_number: int, text: str, reason: str) -> None:
        self.line_number = line_number
        self.text = text[:_MAX_ERROR_TEXT]
        self.reason = reason
        super().__init__(f"line {line_number}: {reason}: {self.text}")


class TooManyLines(ValueError):
    """The body holds more lines than the caller accepts (checked before any line is parsed)."""


# A line that holds something: not blank, not a comment (what parse_lines skips).
_CONTENT_LINE = re.compile(r"^[ \t\0]*+[^ \t\0#\n]", re.MULTILINE)


class _Rejected(Exception):
    """Internal: why the line being parsed is invalid."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_lines(
    body: str, precision: str = "ns", max_lines: int | None = None
) -> tuple[list[Line], list[LineProtocolError]]:
    """Parse a line-protocol body; every line independently.

    Returns the good lines and one error per bad line, both in input order; never raises for any
    body. Timestamps are integers in ``precision`` (``ns``, ``us``, ``ms`` or ``s``), returned in
    nanoseconds. Raises ValueError for an unknown precision, and TooManyLines (before parsing
    anything) when more than ``max_lines`` lines hold something other than blanks or a comment.
    """
    multiplier = PRECISION_TO_NS.get(precision) if isinstance(precision, str) else None
    if multiplier is None:
        raise ValueError(f"unknown precision {precision!r}: expected one of ns, us, ms, s")
    if "\r" in body:
        body = body.replace("\r\n", "\n").removesuffix("\r")
    if max_lines is not None and body.count("\n") >= max_lines:
        # Blank lines cost nothing to skip here, in the regex engine; only lines with content count.
        for lines_with_content, _ in enumerate(_CONTENT_LINE.finditer(body), start=1):
            if lines_with_content > max_lines:
                raise TooManyLines(f"the body holds more than {max_lines} lines; at most {max_lines} "
                                   "are accepted per request")
    # Gateways rarely escape anything: one scan of the body spares a scan of every line.
    all_plain = "\\" not in body and '"' not in body
    lines: list[Line] = []
    errors: list[LineProtocolError] = []
    for number, text in enumerate(body.split("\n"), 1):
        if not text:
            continue
        line = text
        if line[0] in " \t\0#":
            line = line.lstrip(" \t\0")
            if not line or line[0] == "#":
                continue
        try:
            if all_plain or not ("\\" in line or '"' in line):
                measurement, tags, fields, timestamp_ns = _parse_plain(line, multiplier)
            else:
                measurement, tags, fields, timestamp_ns = _parse_escaped(line, multiplier)
        except _Rejected as rejected:
            errors.append(LineProtocolError(number, text, rejected.reason))
        else:
            lines.append(Line(measurement, tags, fields, timestamp_ns, number, text))
    return lines, errors


def _parse_plain(line: str, multiplier: int) -> _Parsed:
    """Parse a line without backslashes or quotes: every delimiter is literal, so split() suffices."""
    parts = line.split(" ")
    count = len(parts)
    if not (count == 2 or count == 3 and parts[2] and parts[2][0] not in "\t\0"):
        # Runs of whitespace or text after the timestamp: let the general scanner judge.
        return _parse_escaped(line, multiplier)
    field_set = parts[1]
    if not field_set or field_set[0] in "\t\0":
        return _parse_escaped(line, multiplier)

    key = parts[0]
    names = key.split(",")
    measurement = names[0]
    if not measurement:
        raise _Rejected("missing measurement")
    tags: dict[str, str] = {}
    if len(names) > 1:
        for item in names[1:]:
            tag_key, _, tag_value = item.partition("=")
            if not tag_key or not tag_value or tag_value.find("=", 1) != -1:
                _reject_tag(tag_key, tag_value)
            if tag_key in tags or tag_key in _RESERVED_TAG_KEYS:
                _reject_tag_key(tag_key)
            tags[tag_key] = tag_value

    fields: dict[str, FieldValue] = {}
    for item in field_set.split(","):
        field_key, equals, text = item.partition("=")
        if not field_key or not text:
            _reject_field(field_key, equals)
        if field_key in fields or field_key == "time":
            _reject_field_key(field_key)
        if text.strip(_DECIMAL_CHARS):
            fields[field_key] = _scalar(field_key, text)
        else:
            # Only digits, '.' and '-': float() accepts exactly the forms InfluxDB does, or fails.
            try:
                number = float(text)
            except ValueError:
                raise _Rejected(_bad_value_reason(field_key, text)) from None
            if number - number != 0.0:
                raise _Rejected(f"float out of range in field {_shown(field_key)}: {_shown(text)}")
            fields[field_key] = number

    timestamp_ns = _timestamp_ns(parts[2], multiplier) if count == 3 else None
    if len(line) > _MAX_KEY_BYTES // 4:
        _check_key_length(key, fields)
    return measurement, tags, fields, timestamp_ns


def _parse_escaped(line: str, multiplier: int) -> _Parsed:
    """Parse any line, honouring backslash escapes and quoted strings."""
    length = len(line)
    match = _MEASUREMENT_END.search(line)
    if match is None:
        raise _Rejected("missing fields")
    pos = match.start()
    if pos == 0:
        raise _Rejected("missing measurement")
    measurement = _unescape(_ESCAPED_IN_NAME, line[:pos])

    tags: dict[str, str] = {}
    while line[pos] == ",":
        key_start = pos + 1
        if key_start >= length or line[key_start] in " ,=":
            raise _Rejected("missing tag key")
        match = _NAME_END.search(line, key_start + 1)
        if match is None or match.group() != "=":
            end = match.start() if match else length
            tag_key = _unescape(_ESCAPED_IN_TAG, line[key_start:end])
            raise _Rejected(f"missing tag value for tag {_shown(tag_key)}")
        tag_key = _unescape(_ESCAPED_IN_TAG, line[key_start : match.start()])
        value_start = match.end()
        if value_start >= length or line[value_start] in ", ":
            raise _Rejected(f"missing tag value for tag {_shown(tag_key)}")
        match = _NAME_END.search(line, value_start + 1)
        if match is None:
            raise _Rejected("missing fields")
        if match.group() == "=":
            raise _Rejected(f"invalid tag format (unescaped '=' in the value of tag {_shown(tag_key)})")
        pos = match.start()
        if tag_key in tags or tag_key in _RESERVED_TAG_KEYS:
            _reject_tag_key(tag_key)
        tags[tag_key] = _unescape(_ESCAPED_IN_TAG, line[value_start:pos])
    key_end = pos

    pos = _skip_whitespace(line, pos + 1)
    if pos >= length:
        raise _Rejected("missing fields")
    fields: dict[str, FieldValue] = {}
    while True:
        match = _NAME_END.search(line, pos)
        if match is None or match.group() != "=":
            raise _Rejected("invalid field format (expected key=value)")
        if match.start() == pos:
            raise _Rejected("missing field key")
        field_key = _unescape(_ESCAPED_IN_NAME, line[pos : match.start()])
        value_start = match.end()
        if value_start >= length or line[value_start] in ", ":
            raise _Rejected(f"missing value for field {_shown(field_key)}")
        if field_key in fields or field_key == "time":
            _reject_field_key(field_key)
        if line[value_start] == '"':
            match = _STRING_REST.match(line, value_start + 1)
            if match is None:
                raise _Rejected(f"unterminated string in field {_shown(field_key)}")
            pos = match.end()
            if pos < length and line[pos] not in ", ":
                raise _Rejected(f"unexpected text after the string in field {_shown(field_key)}")
            fields[field_key] = _unescape(_ESCAPED_IN_STRING, line[value_start + 1 : pos - 1])
        else:
            match = _VALUE_END.search(line, value_start)
            pos = match.start() if match else length
            fields[field_key] = _scalar(field_key, line[value_start:pos])
        if pos >= length or line[pos] == " ":
            break
        pos += 1

    timestamp_ns = None
    pos = _skip_whitespace(line, pos)
    if pos < length:
        end = line.find(" ", pos)
        if end == -1:
            end = length
        timestamp_ns = _timestamp_ns(line[pos:end], multiplier)
        if line[end:].strip(" "):
            raise _Rejected("unexpected text after the timestamp")
    if length > _MAX_KEY_BYTES // 4:
        _check_key_length(line[:key_end], fields)
    return measurement, tags, fields, timestamp_ns


def _unescape(pattern: re.Pattern[str], text: str) -> str:
    return pattern.sub(r"\1", text) if "\\" in text else text


def _reject_tag(key: str, value: str) -> NoReturn:
    if not key:
        raise _Rejected("missing tag key")
    if not value:
        raise _Rejected(f"missing tag value for tag {_shown(key)}")
    raise _Rejected(f"invalid tag format (unescaped '=' in the value of tag {_shown(key)})")


def _reject_tag_key(key: str) -> NoReturn:
    if key in _RESERVED_TAG_KEYS:
        raise _Rejected(f"tag key {_shown(key)} is reserved")
    raise _Rejected(f"duplicate tag {_shown(key)}")


def _reject_field(key: str, equals: str) -> NoReturn:
    if not equals:
        raise _Rejected("invalid field format (expected key=value)")
    if not key:
        raise _Rejected("missing field key")
    raise _Rejected(f"missing value for field {_shown(key)}")


def _reject_field_key(key: str) -> NoReturn:
    if key == "time":
        raise _Rejected("field key 'time' is reserved")
    raise _Rejected(f"duplicate field {_shown(key)}")


def _check_key_length(key: str, fields: dict[str, FieldValue]) -> None:
    # InfluxDB measures the escaped series key plus each field key (+4 separator bytes), in UTF-8
    # bytes; surrogatepass, because a body decoded with surrogateescape may hold lone surrogates.
    size = len(key.encode("utf-8", "surrogatepass")) + 4 + max(
        len(field_key.encode("utf-8", "surrogatepass")) for field_key in fields
    )
    if size > _MAX_KEY_BYTES:
        raise _Rejected(f"series key too long: {size} > {_MAX_KEY_BYTES} bytes")


def _scalar(key: str, text: str) -> FieldValue:
    """Parse an unquoted field value: float, ``i`` int, ``u`` unsigned or boolean."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        boolean = _BOOLEANS.get(text)
        if boolean is None:
            raise _Rejected(_bad_value_reason(key, text))
        return boolean
    if match.lastindex is None:
        number = float(text)
        if number - number != 0.0:
            raise _Rejected(f"float out of range in field {_shown(key)}: {_shown(text)}")
        return number
    digits, suffix = match.groups()
    integer = _decimal(digits)
    if suffix == "i":
        if not _INT64_MIN <= integer <= _INT64_MAX:
            raise _Rejected(f"integer out of range in field {_shown(key)}: {_shown(text)}")
    elif digits[0] == "-":
        raise _Rejected(f"negative unsigned integer in field {_shown(key)}: {_shown(text)}")
    elif integer > _UINT64_MAX:
        raise _Rejected(f"unsigned integer out of range in field {_shown(key)}: {_shown(text)}")
    return integer


def _decimal(digits: str) -> int:
    """Value of ``-?[0-9]+``; anything past 20 significant digits maps to just beyond uint64."""
    if len(digits) <= 20:
        return int(digits)
    # Leading zeros are legal, and int() refuses strings over 4300 digits.
    significant = digits.lstrip("-").lstrip("0")
    magnitude = int(significant or "0") if len(significant) <= 20 else _UINT64_MAX + 1
    return -magnitude if digits[0] == "-" else magnitude


def _bad_value_reason(key: str, text: str) -> str:
    if text.lstrip("+-").lower() in _NON_FINITE:
        return f"NaN and infinity are not allowed in field {_shown(key)}: {_shown(text)}"
    if text[0] in "+-.0123456789":
        return f"invalid number in field {_shown(key)}: {_shown(text)}"
    return f"invalid field value in field {_shown(key)}: {_shown(text)}"


def _timestamp_ns(text: str, multiplier: int) -> int:
    if len(text) <= 19 and text.isdigit() and text.isascii():
        timestamp_ns = int(text) * multiplier
        if timestamp_ns <= _MAX_TIME_NS:
            return timestamp_ns
    elif _INTEGER.fullmatch(text) is None:
        raise _Rejected(f"timestamp is not an integer: {_shown(text)}")
    timestamp = _decimal(text)
    if not (_INT64_MIN <= timestamp <= _INT64_MAX and _MIN_TIME_NS <= timestamp * multiplier <= _MAX_TIME_NS):
        raise _Rejected(f"timestamp out of range: {_shown(text)}")
    return timestamp * multiplier


def _shown(text: str) -> str:
    if len(text) > _MAX_SHOWN_VALUE:
        text = text[:_MAX_SHOWN_VALUE] + "..."
    return repr(text)


# Encoder ---------------------------------------------------------------------------------------

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_NAME_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\"})
# A backslash before a delimiter (or at the end, where a delimiter follows) is read back as an
# escape, and InfluxDB's field-key and measurement unescaping also eats \" and \=: refuse them
# rather than write a name that would come back different.
_UNCARRIABLE_NAME = re.compile(r'[\n\r]|\\(?:[, ="]|\Z)')
_CACHE_LIMIT = 10_000

_heads: dict[tuple[Any, ...], str] = {}
_field_prefixes: dict[str, str] = {}


def escape_measurement(name: str) -> str:
    """Escape a measurement name (``,`` and space). Raises ValueError if it cannot be carried."""
    _check_name(name, "measurement")
    if name[0] in "#\t\0":
        raise ValueError(f"measurement {name!r} starts with {name[0]!r}: InfluxDB would skip or strip it")
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """Escape a tag key or value (``,``, ``=`` and space). Raises ValueError if it cannot be carried."""
    _check_name(text, "tag")
    return text.translate(_NAME_ESCAPES)


def escape_field_key(key: str) -> str:
    """Escape a field key (``,``, ``=`` and space). Raises ValueError if it cannot be carried."""
    _check_name(key, "field key")
    if key[0] in "\t\0":
        raise ValueError(f"field key {key!r} starts with {key[0]!r}: InfluxDB would strip it")
    return key.translate(_NAME_ESCAPES)


def _check_name(name: str, role: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{role} must be a str, not {type(name).__name__}")
    if not name and role != "tag":
        raise ValueError(f"{role} must not be empty")
    if _UNCARRIABLE_NAME.search(name):
        raise ValueError(
            f"{role} {name!r} has a line break, or a backslash that InfluxDB would read as an escape "
            "(before , = space \" or at the end): line protocol cannot carry it"
        )


def _escape_string_value(key: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"string field {key!r} has a line break: line protocol cannot carry it")
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def _remember(cache: dict[Any, str], key: Any, value: str) -> str:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _encode_head(measurement: str, tags: Mapping[str, str | None]) -> str:
    """``measurement[,tag=value...]``, validated, tags sorted by escaped key."""
    pairs = []
    for key, value in tags.items():
        if value is None or value == "":
            continue
        escaped_key = escape_tag(key)
        if not key:
            raise ValueError("tag key must not be empty")
        if key in _RESERVED_TAG_KEYS:
            raise ValueError(f"tag key {key!r} is reserved by InfluxDB")
        pairs.append((escaped_key, escape_tag(value)))
    pairs.sort()
    return ",".join([escape_measurement(measurement), *[f"{key}={value}" for key, value in pairs]])


def _field_prefix(key: str) -> str:
    """``key=`` for a field key, validated and cached."""
    escaped = escape_field_key(key)
    if key == "time":
        raise ValueError("field key 'time' is reserved: InfluxDB drops it")
    return _remember(_field_prefixes, key, escaped + "=")


def encode_point(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, FieldValue | None],
    timestamp: int | None = None,
) -> str:
    """Encode one point as a line (no trailing newline).

    Tags are written sorted by escaped key (InfluxDB's order); tags whose value is None or "" and
    fields whose value is None are omitted. Floats are written as floats (``repr``), ints with
    ``i``, bools as ``true``/``false``, strings quoted. ``timestamp`` is an integer in the precision
    the batch is sent with. Raises ValueError for a point without fields, NaN or infinite floats,
    ints outside int64, empty or reserved names, and text line protocol cannot carry (line breaks,
    a backslash before a delimiter or at a name's end); TypeError for unsupported value types.
    """
    # A fleet has few distinct (measurement, tag set) pairs: caching the validated, sorted and
    # escaped head makes the common point cost one tuple hash instead of a sort and four escapes.
    head_key: tuple[Any, ...] = (measurement, *tags, *tags.values())
    head = _heads.get(head_key) or _remember(_heads, head_key, _encode_head(measurement, tags))
    parts = []
    for key, value in fields.items():
        if type(value) is float:
            if value - value != 0.0:
                raise ValueError(f"field {key!r} is {value!r}: InfluxDB accepts only finite floats")
            parts.append(f"{_field_prefixes.get(key) or _field_prefix(key)}{value!r}")
        elif value is not None:
            parts.append((_field_prefixes.get(key) or _field_prefix(key)) + _encode_value(key, value))
    if not parts:
        raise ValueError(f"point {measurement!r} has no fields: InfluxDB requires at least one")
    if timestamp is None:
        return f"{head} {','.join(parts)}"
    if type(timestamp) is not int:
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise TypeError(f"timestamp must be an int, not {type(timestamp).__name__}")
        timestamp = int(timestamp)
    if not _INT64_MIN <= timestamp <= _INT64_MAX:
        raise ValueError(f"timestamp {timestamp} is outside int64")
    return f"{head} {','.join(parts)} {timestamp}"


def _encode_value(key: str, value: object) -> str:
    """Encode a non-``float`` field value (float subclasses included)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"field {key!r} is {value}: outside int64")
        return f"{int(value)}i"
    if isinstance(value, float):
        if value - value != 0.0:
            raise ValueError(f"field {key!r} is {value!r}: InfluxDB accepts only finite floats")
        return repr(float(value))
    if isinstance(value, str):
        return _escape_string_value(key, value)
    raise TypeError(f"field {key!r} has unsupported type {type(value).__name__}")


def encode_lines(points: Iterable[EncodablePoint]) -> str:
    """Encode ``(measurement, tags, fields, timestamp)`` tuples as one body, lines joined by ``\\n``."""
    return "\n".join([encode_point(*point) for point in points])
