"""The Flux scripts shipped in this package: read them, fill a task's options in from the settings,
and run the efficiency task's pipeline as a query.

- ``chargewatch/influx/tasks/<name>.flux``: InfluxDB tasks. Each starts with
  ``option task = {name: "<name>", every: ..., offset: ...}`` and its tunables as whole
  ``option x = <literal>`` lines, which :func:`render_options` replaces (a task cannot take
  parameters, so settings go in as literals).
- ``chargewatch/influx/queries/<name>.flux``: analytics queries. Their inputs are bare names declared in a
  header line ``// params: _start: time, _vehicle_id: string``, sent with
  ``query_api.query(source, params={...})``, which influxdb-client turns into ``extern`` option
  statements (honoured by OSS 2.x and Cloud): values never become Flux text.

The scripts are package data (``pyproject.toml``), read through :mod:`importlib.resources`, so an
installed wheel has them as an editable install does. No I/O beyond reading them; nothing here
imports influxdb-client.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources

from chargewatch.settings import Settings

_SCRIPTS = resources.files(__package__)
TASKS = "tasks"
QUERIES = "queries"
EFFICIENCY_TASK = "efficiency"

_PARAMS_HEADER = re.compile(r"^\s*//\s*params:(.*)$", re.MULTILINE)
_PARAM_ITEM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$")
_PARAM_TYPES = {
    "time": (datetime,), "duration": (timedelta,), "string": (str,), "int": (int,), "float": (float, int),
    "bool": (bool,),
}  # fmt: skip
_TASK_RECORD_ITEM = re.compile(r"(\w+)\s*:\s*(\"(?:[^\"\\]|\\.)*\"|[^,}]+)")
_DURATION = re.compile(r"^(?:\d+(?:ns|us|µs|ms|s|m|h|d|w|mo|y))+$")
_WRITE_STEP = re.compile(r"^(\s*)\|> to\($", re.MULTILINE)
_TASK_OPTION = re.compile(r"^option task = .*$", re.MULTILINE)


@dataclass(frozen=True)
class FluxQuery:
    """An analytics query: its source and the parameters it declares (name -> Flux type)."""

    name: str
    source: str
    params: dict[str, str]

    def check_params(self, values: Mapping[str, object]) -> None:
        """Raise ValueError unless ``values`` has exactly the declared names, with fitting types."""
        missing, extra = self.params.keys() - values.keys(), values.keys() - self.params.keys()
        if missing or extra:
            raise ValueError(f"query {self.name}: missing params {sorted(missing)}, unexpected {sorted(extra)}")
        for name, flux_type in self.params.items():
            value = values[name]
            allowed = _PARAM_TYPES.get(flux_type, ())
            if isinstance(value, bool) and flux_type != "bool" or not isinstance(value, allowed):
                raise ValueError(f"query {self.name}: param {name} must be a Flux {flux_type}, not {value!r}")
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError(f"query {self.name}: param {name} must be timezone-aware")


def task_names() -> list[str]:
    """Names of the shipped tasks (file name = task name)."""
    return sorted(entry.name.removesuffix(".flux") for entry in _SCRIPTS.joinpath(TASKS).iterdir()
                  if entry.name.endswith(".flux"))


def read_task(name: str) -> str:
    return _SCRIPTS.joinpath(TASKS, f"{name}.flux").read_text()


def read_query(name: str) -> FluxQuery:
    """The shipped query ``name`` with its declared params."""
    source = _SCRIPTS.joinpath(QUERIES, f"{name}.flux").read_text()
    return FluxQuery(name, source, declared_params(source))


def declared_params(source: str) -> dict[str, str]:
    """The ``// params: name: type, ...`` header lines of a script, as {name: type}."""
    params: dict[str, str] = {}
    for header in _PARAMS_HEADER.finditer(source):
        for item in re.split(r",(?![^\[]*\])", header.group(1)):
            if not item.strip():
                continue
            match = _PARAM_ITEM.match(item)
            if match is None:
                raise ValueError(f"bad params header item {item.strip()!r}: expected 'name: type'")
            params[match.group(1)] = match.group(2)
    return params


def flux_literal(value: object) -> str:
    """A Flux literal for a Python value: str, bool, int, float (finite), timedelta, aware datetime."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no Flux literal")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        # Flux strings interpolate ${...}; escape it along with backslash and quote.
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'
    if isinstance(value, timedelta):
        return flux_duration(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetimes have no Flux literal: give a timezone")
        utc = value.astimezone(timezone.utc)
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{utc.microsecond:06d}" if utc.microsecond else "") + "Z"
    raise TypeError(f"no Flux literal for {type(value).__name__}")


def flux_duration(value: timedelta) -> str:
    """``5m``, ``30s``, ``1h``, ``1500ms``: the largest whole unit of a positive duration."""
    micros = value // timedelta(microseconds=1)
    if micros <= 0:
        raise ValueError(f"{value} is not a positive duration")
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1000)):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"


def render_options(source: str, values: Mapping[str, str]) -> str:
    """Replace the whole line ``option <name> = ...`` of each name with ``option <name> = <value>``.

    ``values`` are Flux literal texts (from :func:`flux_literal` or a record built from them). Each
    name must have exactly one such line, else ValueError: a template never silently keeps a default.
    """
    for name, value in values.items():
        if "\n" in value:
            raise ValueError(f"option {name}: the value must be one line")
        pattern = re.compile(rf"^option {re.escape(name)} = .*$", re.MULTILINE)
        found = len(pattern.findall(source))
        if found != 1:
            raise ValueError(f"expected one 'option {name} = ...' line, found {found}")
        source = pattern.sub(functools.partial(_replacement, f"option {name} = {value}"), source)
    return source


def _replacement(line: str, _: re.Match[str]) -> str:
    # A function, not a template: ``re.sub`` would read backslashes in ``line`` as escapes.
    return line


def task_options(source: str) -> dict[str, str]:
    """The fields of a script's ``option task = {...}`` line, as literal texts (strings unquoted)."""
    match = re.search(r"^option task = \{(.*)\}\s*$", source, re.MULTILINE)
    if match is None:
        raise ValueError("no 'option task = {...}' line")
    options = {}
    for key, value in _TASK_RECORD_ITEM.findall(match.group(1)):
        value = value.strip()
        options[key] = value[1:-1] if value.startswith('"') else value
    return options


def is_duration(text: str) -> bool:
    return bool(_DURATION.match(text))


def efficiency_task(settings: Settings, *, recompute_windows: int | None = None) -> str:
    """The efficiency task with its options set from the settings (window, recompute, buckets...).

    ``recompute_windows`` overrides the setting (a backfill recomputes a whole chunk per run).
    """
    eff = settings.efficiency
    window = flux_duration(timedelta(seconds=eff.window_seconds))
    offset = f"{eff.offset_seconds}s"
    return render_options(read_task(EFFICIENCY_TASK), {
        "task": f"{{name: {flux_literal(EFFICIENCY_TASK)}, every: {window}, offset: {offset}}}",
        "window_length": window,
        "recompute_windows": flux_literal(recompute_windows or eff.recompute_windows),
        "min_energy_kwh": flux_literal(float(eff.min_energy_kwh)),
        "telemetry_bucket": flux_literal(settings.influx.telemetry_bucket),
        "efficiency_bucket": flux_literal(settings.influx.efficiency_bucket),
    })


def rendered_tasks(settings: Settings) -> dict[str, str]:
    """Every shipped task, ready to install, by name."""
    renderers = {EFFICIENCY_TASK: efficiency_task}
    unknown = set(task_names()) - renderers.keys()
    if unknown:
        raise ValueError(f"no settings renderer for tasks {sorted(unknown)}")
    return {name: renderers[name](settings) for name in task_names()}


def task_as_query(task_source: str, now: datetime, *, write: bool = False, count_written: bool = False) -> str:
    """The task's pipeline as a query run as if scheduled at ``now``.

    ``option task`` becomes ``option now = () => <now>`` (a task run's now() is its scheduled
    time). Unless ``write``, the final ``|> to(...)`` step, which must be the script's last, is
    replaced by ``|> yield(name: "efficiency")`` so the windows come back instead of being written.
    With ``write`` and ``count_written``, the query answers one row whose ``ac_kwh`` column is the
    number of windows written, instead of every written window.
    """
    source, found = _TASK_OPTION.subn(lambda _: f"option now = () => {flux_literal(now)}", task_source)
    if found != 1:
        raise ValueError(f"expected one 'option task = ...' line, found {found}")
    if write:
        if count_written:
            source = source.rstrip() + '\n    |> group()\n    |> count(column: "ac_kwh")\n'
        return source
    steps = list(_WRITE_STEP.finditer(source))
    if len(steps) != 1:
        raise ValueError(f"expected one line '|> to(' ending the task, found {len(steps)}")
    step = steps[0]
    if any(line and not line[0].isspace() for line in source[step.end():].splitlines()[:-1]):
        raise ValueError("the '|> to(' step must be the task's last statement")
    return source[: step.start()] + f'{step.group(1)}|> yield(name: "efficiency")\n'
