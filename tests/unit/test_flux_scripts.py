"""Every Flux script in the repository passes the Flux compiler's semantic check, and the checker
really rejects broken Flux (a checker that accepts everything would prove nothing)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from chargewatch.influx import flux
from chargewatch.settings import Settings
from tests.fluxcheck import REPO

FLUX = REPO / "chargewatch" / "influx"
SKIPPED_DIRS = {"node_modules", ".git", ".venv", "venv", "build", "dist"}
NOW = datetime(2026, 11, 23, 6, 30, tzinfo=timezone.utc)


def repo_flux_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.flux") if not SKIPPED_DIRS & set(p.relative_to(REPO).parts))


def test_the_repository_has_the_efficiency_task_and_the_analytics_queries():
    names = {str(p.relative_to(REPO)) for p in repo_flux_files()}
    assert {"chargewatch/influx/tasks/efficiency.flux", "chargewatch/influx/queries/vehicle_windows.flux",
            "chargewatch/influx/queries/windows.flux", "chargewatch/influx/queries/vehicle_totals.flux"} <= names


def test_every_flux_file_in_the_repository_type_checks(flux_checker):
    results = flux_checker.check_files(repo_flux_files())
    assert results
    invalid = [r.describe() for r in results if not r.valid]
    assert not invalid, "\n".join(invalid)


def test_the_tasks_as_installed_and_as_queries_type_check(flux_checker):
    settings = Settings(efficiency={"window_seconds": 600, "min_energy_kwh": 0.25, "recompute_windows": 3},
                        influx={"telemetry_bucket": 'raw "data" ${x}', "efficiency_bucket": "eff\\bucket"})
    task = flux.efficiency_task(settings)
    results = flux_checker.check(
        {"name": "installed", "source": task},
        {"name": "as query", "source": flux.task_as_query(task, NOW)},
        {"name": "as writing query", "source": flux.task_as_query(task, NOW, write=True)},
    )
    assert all(r.valid for r in results), "\n".join(r.describe() for r in results)


BROKEN = {
    "undefined identifier": ('from(bucket: "b")\n    |> range(start: -1h)\n    |> filter(fn: (r) => r.x == nope)\n',
                             3, "undefined identifier nope"),
    "string added to int": ('x = 1\ny = x + "kWh"\n', 2, "expected int but found string"),
    "missing parenthesis": ('from(bucket: "b"\n    |> range(start: -1h)\n', 1, "expected RPAREN"),
    "unknown function argument": ('from(bucket: "b") |> range(start: -1h, until: now())\n', 1, "until"),
    "unknown package member": ('import "date"\nx = date.nosuchthing(t: now())\n', 2, "nosuchthing"),
    "option shadowing window()": (
        'option window = 5m\nfrom(bucket: "b") |> range(start: -1h) |> window(every: window)\n', 2,
        "expected duration"),
    "undeclared query parameter": ('// params: _start: time\nfrom(bucket: "b") |> range(start: _start, stop: _stop)\n',
                                   2, "undefined identifier _stop"),
    "parameter of the wrong type": ('// params: _n: string\nfrom(bucket: "b") |> range(start: -1h) |> limit(n: _n)\n',
                                    2, "expected int but found string"),
    "unknown Grafana macro": ('from(bucket: v.defaultBucket) |> range(start: v.timeRangeBegin)\n', 1,
                              "missing label timeRangeBegin"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_the_checker_rejects_broken_flux_with_a_located_message(flux_checker, name):
    source, line, message = BROKEN[name]
    [result] = flux_checker.check({"name": name, "source": source})
    assert not result.valid
    assert any(message in e["message"] and e["line"] == line for e in result.errors), result.describe()


def test_the_checker_accepts_valid_flux_with_declared_inputs(flux_checker):
    results = flux_checker.check(
        {"name": "params", "source": '// params: _start: time, _ids: [string], _n: int\nimport "date"\n'
                                     'from(bucket: "b") |> range(start: _start) '
                                     '|> filter(fn: (r) => contains(value: r.id, set: _ids)) |> limit(n: _n)\n'},
        {"name": "grafana", "source": 'from(bucket: v.defaultBucket) |> range(start: v.timeRangeStart, '
                                      'stop: v.timeRangeStop) |> aggregateWindow(every: v.windowPeriod, fn: mean)\n'},
        {"name": "declarations", "source": 'x = vehicle + "!"\n', "declarations": {"vehicle": "string"}},
    )
    assert all(r.valid for r in results), "\n".join(r.describe() for r in results)


def test_a_checker_exit_status_reports_any_invalid_script(flux_checker):
    results = flux_checker.check({"name": "good", "source": "x = 1\n"}, {"name": "bad", "source": "x = y\n"})
    assert [r.valid for r in results] == [True, False]


@pytest.mark.parametrize("path", sorted((FLUX / "tasks").glob("*.flux")), ids=lambda p: p.name)
def test_a_task_header_names_the_file_and_has_duration_every_and_offset(path):
    options = flux.task_options(path.read_text())
    assert options["name"] == path.stem
    assert flux.is_duration(options["every"]) and "cron" not in options
    assert flux.is_duration(options["offset"])


@pytest.mark.parametrize("path", sorted((FLUX / "queries").glob("*.flux")), ids=lambda p: p.name)
def test_an_analytics_query_declares_its_params(path):
    params = flux.declared_params(path.read_text())
    assert {"_bucket", "_start", "_stop"} <= params.keys()
    assert "params." not in path.read_text()  # influxdb-client sends bare names, never a params record


def test_the_efficiency_task_takes_its_options_from_the_settings():
    settings = Settings(efficiency={"window_seconds": 900, "offset_seconds": 45, "recompute_windows": 4,
                                    "min_energy_kwh": 0.2},
                        influx={"telemetry_bucket": "raw", "efficiency_bucket": "windows"})
    task = flux.efficiency_task(settings)
    assert flux.task_options(task) == {"name": "efficiency", "every": "15m", "offset": "45s"}
    for line in ["option window_length = 15m", "option recompute_windows = 4", "option min_energy_kwh = 0.2",
                 'option telemetry_bucket = "raw"', 'option efficiency_bucket = "windows"']:
        assert f"\n{line}\n" in task


def test_render_options_replaces_only_whole_option_lines():
    source = 'option a = 1\nx = "option a = 1"\n// option b = 2\noption ab = 3\n'
    rendered = flux.render_options(source, {"a": "5"})
    assert rendered == 'option a = 5\nx = "option a = 1"\n// option b = 2\noption ab = 3\n'


@pytest.mark.parametrize("values", [{"b": "1"}, {"a": "1\nx = 2"}])
def test_render_options_refuses_a_missing_option_or_a_multiline_value(values):
    with pytest.raises(ValueError):
        flux.render_options("option a = 1\n", values)


def test_render_options_refuses_an_option_defined_twice():
    with pytest.raises(ValueError, match="found 2"):
        flux.render_options("option a = 1\noption a = 2\n", {"a": "3"})


@pytest.mark.parametrize(("value", "literal"), [
    ('say "hi" ${x} \\', '"say \\"hi\\" \\${x} \\\\"'),
    (True, "true"), (6, "6"), (0.1, "0.1"), (1e-07, "1e-07"), (2.0, "2.0"),
    (timedelta(minutes=5), "5m"), (timedelta(seconds=90), "90s"), (timedelta(hours=2), "2h"),
    (timedelta(milliseconds=1500), "1500ms"),
    (datetime(2026, 11, 23, 7, 0, tzinfo=timezone(timedelta(hours=1))), "2026-11-23T06:00:00Z"),
    (datetime(2026, 11, 23, 6, 0, 0, 250000, tzinfo=timezone.utc), "2026-11-23T06:00:00.250000Z"),
])
def test_flux_literal_writes_values_flux_reads_back_unchanged(value, literal):
    assert flux.flux_literal(value) == literal


@pytest.mark.parametrize("value", [float("nan"), float("inf"), datetime(2026, 1, 1), timedelta(0), object()])
def test_flux_literal_refuses_values_without_a_faithful_literal(value):
    with pytest.raises((ValueError, TypeError)):
        flux.flux_literal(value)


def test_the_task_as_query_yields_the_windows_instead_of_writing_them():
    query = flux.task_as_query(flux.read_task("efficiency"), NOW)
    assert "option task" not in query and "to(" not in query
    assert "option now = () => 2026-11-23T06:30:00Z\n" in query
    assert query.rstrip().endswith('|> yield(name: "efficiency")')


def test_the_task_as_query_refuses_a_task_with_statements_after_its_write():
    with pytest.raises(ValueError, match="last statement"):
        flux.task_as_query(flux.read_task("efficiency") + '\nx = 1\ny = 2\n', NOW)


def test_query_params_are_checked_against_the_declaration():
    query = flux.read_query("vehicle_windows")
    good = {"_bucket": "efficiency", "_start": NOW - timedelta(hours=1), "_stop": NOW, "_vehicle_id": "EV-101"}
    query.check_params(good)
    for bad in [{k: v for k, v in good.items() if k != "_vehicle_id"}, {**good, "_extra": 1},
                {**good, "_start": "2026-11-23"}, {**good, "_stop": NOW.replace(tzinfo=None)}]:
        with pytest.raises(ValueError):
            query.check_params(bad)
