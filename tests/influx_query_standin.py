"""The InfluxDB 2.7 query endpoint, ``POST /api/v2/query``, as a route on the write-API stand-in
(tests/influx_standin.py), answering the way OSS 2.7 does:

- Request (what influxdb-client 1.50 sends): ``?org=NAME`` and a JSON body ``{"query": <Flux text>,
  "dialect": {"header": true, "annotations": ["datatype", "group", "default"], ...}, "extern":
  {"type": "File", "body": [<OptionStatement>...]}}``; ``params=`` values arrive only in ``extern``,
  as ``option <name> = <literal>`` statements, never in the query text.
- 200 ``text/csv``: annotated CSV, one block per table: ``#datatype,string,long,<types>``,
  ``#group,false,false,<in group key>``, ``#default,_result,,...``, the header ``,result,table,<columns>``
  and rows ``,,<table>,<values>``; a blank line between blocks. ``annotated_csv`` writes it.
- An error found while the answer streams is an ``error,reference`` table in a 200 (``error_csv``).
- 401 ``unauthorized`` without the token; 404 ``organization name "X" not found``; 400
  ``compilation failed: ... undefined identifier <name>`` when the query uses a ``// params:`` name
  that ``extern`` does not define (as InfluxDB would fail to compile it).

What the answer holds is the test's: ``InfluxQueryApi(standin, answer)`` with ``answer(QueryRequest)
-> list[Table] | StandinResponse``. ``requests`` records every query as received.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from chargewatch.influx.flux import declared_params
from tests.influx_standin import InfluxStandin, StandinRequest, StandinResponse

CSV_TYPE = "text/csv; charset=utf-8"


@dataclass(frozen=True)
class QueryRequest:
    """One query as InfluxDB received it; ``params`` is ``extern`` decoded back to Python values."""

    org: str | None
    query: str
    params: dict[str, Any]
    extern: Any
    dialect: Any
    body: dict[str, Any]


@dataclass
class Table:
    """One table of an answer: ``columns`` as (name, Flux CSV datatype) pairs, rows by column name
    (a missing or None value is null), ``group_key`` the names in the table's group key."""

    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    group_key: tuple[str, ...] = ()


Answer = Callable[[QueryRequest], "list[Table] | StandinResponse"]


@dataclass
class InfluxQueryApi:
    """Install with ``InfluxQueryApi(standin, answer)``; shares the stand-in's org and token."""

    standin: InfluxStandin
    answer: Answer
    requests: list[QueryRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.standin.add_route("POST", "/api/v2/query", self._query)

    def _query(self, request: StandinRequest) -> StandinResponse:
        denied = self.standin.unauthorized(request)
        if denied:
            return denied
        org = request.query.get("org") or request.query.get("orgID")
        if org not in (self.standin.org, self.standin.org_id):
            return StandinResponse.error(404, "not found", f'organization name "{org}" not found')
        try:
            body = request.json() or {}
        except ValueError as err:
            return StandinResponse.error(400, "invalid", f"failed to decode request body: {err}")
        extern = body.get("extern")
        params = extern_params(extern)
        query = QueryRequest(org, body.get("query", ""), params, extern, body.get("dialect"), body)
        with self._lock:
            self.requests.append(query)
        undefined = [name for name in declared_params(query.query) if name not in params]
        if undefined:
            return StandinResponse.error(400, "invalid", f"compilation failed: error @1:1-1:1: undefined "
                                         f"identifier {undefined[0]}")
        answer = self.answer(query)
        if isinstance(answer, StandinResponse):
            return answer
        return StandinResponse(200, annotated_csv(answer).encode(), {"Content-Type": CSV_TYPE})


def extern_params(extern: Any) -> dict[str, Any]:
    """``{name: value}`` of the ``option name = <literal>`` statements in an ``extern`` File AST."""
    params: dict[str, Any] = {}
    for statement in (extern or {}).get("body") or []:
        assignment = statement.get("assignment") or {}
        name = (assignment.get("id") or {}).get("name")
        if statement.get("type") == "OptionStatement" and name:
            params[name] = _literal(assignment.get("init") or {})
    return params


def _literal(node: dict[str, Any]) -> Any:
    kind, value = node.get("type"), node.get("value")
    if kind == "StringLiteral":
        return value
    if kind == "IntegerLiteral":
        return int(value)
    if kind == "FloatLiteral":
        return float(value)
    if kind == "BooleanLiteral":
        return bool(value)
    if kind == "DateTimeLiteral":
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if kind == "ArrayExpression":
        return [_literal(element) for element in node.get("elements") or []]
    return node  # durations and the like: kept as the AST node


def annotated_csv(tables: list[Table]) -> str:
    """Tables as InfluxDB's annotated CSV (CRLF lines, a blank line between tables)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for index, table in enumerate(tables):
        if index:
            out.write("\r\n")
        names = [name for name, _ in table.columns]
        writer.writerow(["#datatype", "string", "long", *(kind for _, kind in table.columns)])
        writer.writerow(["#group", "false", "false", *(str(n in table.group_key).lower() for n in names)])
        writer.writerow(["#default", "_result", "", *("" for _ in names)])
        writer.writerow(["", "result", "table", *names])
        for row in table.rows:
            writer.writerow(["", "", str(index), *(_cell(row.get(name), kind) for name, kind in table.columns)])
    return out.getvalue()


def error_csv(message: str) -> StandinResponse:
    """A 200 whose body is InfluxDB's in-band error table (a runtime error after the answer began)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([["#datatype", "string", "string"], ["#group", "true", "true"], ["#default", "", ""],
                      ["", "error", "reference"], ["", message, ""]])
    return StandinResponse(200, out.getvalue().encode(), {"Content-Type": CSV_TYPE})


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind.startswith("dateTime"):
        text = value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
        return text + "Z"
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "double":
        return repr(float(value))  # shortest text that reads back as the same float
    return str(value)
