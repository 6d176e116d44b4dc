"""Grafana's provisioning as Grafana reads it: files parse, generated files are fresh, every data source
reference resolves, alert rules have the shape Grafana accepts and alert per vehicle, and every Flux
query (panels, the variable, alert rules) passes the Flux compiler's type check after Grafana's macro
substitution. Nothing of this can start here (no Grafana, no InfluxDB), so the files are proven
against what the engines' sources say they need (docs/influxdb-and-grafana.md "Grafana provisioning")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chargewatch.settings import AlertSettings, Settings
from grafana import alerting, generate, panels, queries
from tests.fluxcheck import REPO

GRAFANA = REPO / "grafana"
PROVISIONING = GRAFANA / "provisioning"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES_FILE = PROVISIONING / "alerting" / "rules.yaml"
COMPOSE_FILE = REPO / "docker-compose.yml"
EXPRESSION_UID = "__expr__"
BUILTIN_ANNOTATIONS = {"type": "grafana", "uid": "-- Grafana --"}

# Grafana's Flux macro pass (pkg/tsdb/influxdb/flux/macros.go): any `<word>.<name>` with one of these
# names is replaced as text, whatever <word> is.
GRAFANA_MACRO = re.compile(r"([a-zA-Z]+)\.([a-zA-Z]+)")
MACRO_SAMPLES = {
    "timeRangeStart": "2026-11-23T00:00:00.5Z",  # RFC 3339 with fractional seconds, as RFC3339Nano prints
    "timeRangeStop": "2026-11-23T06:00:00Z",
    "windowPeriod": "1m0s",  # Go's time.Duration.String()
    "bucket": '"telemetry"',
    "defaultBucket": '"telemetry"',
    "organization": '"chargewatch"',
}
TEMPLATE_VARIABLE_SAMPLES = {"vehicle_id": "EV-101:a.b_c"}  # every character class a vehicle id may use


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


def provisioning_files() -> list[Path]:
    return sorted(p for p in PROVISIONING.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def rule_group_file() -> dict[str, Any]:
    return load_yaml(RULES_FILE)


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_group_file()["groups"] for rule in group["rules"]]


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def flux_queries() -> list[tuple[str, str]]:
    """(where, Flux text) of every query Grafana sends to InfluxDB."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                found.append((f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}", target["query"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query  # a plain string is the legacy form
                found.append((f"{name} variable {variable['name']}", text))
    for rule in rules():
        for query in rule["data"]:
            if query["datasourceUid"] != EXPRESSION_UID:
                found.append((f"alert rule {rule['title']} {query['refId']}", query["model"]["query"]))
    return found


def grafana_interpolated(flux: str) -> str:
    """The text InfluxDB receives: Grafana's macros and the dashboard's variables replaced."""
    def replace(match: re.Match[str]) -> str:
        return MACRO_SAMPLES.get(match.group(2), match.group(0))

    text = GRAFANA_MACRO.sub(replace, flux)
    text = text.replace("$__interval_ms", "60000").replace("$__interval", "1m")
    for name, value in TEMPLATE_VARIABLE_SAMPLES.items():
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    return text


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"{text!r} is not a duration like 1m or 90s"
    return sum(int(value) * units[unit] for value, unit in zip(parts.groups(), "hms", strict=True) if value)


# -- files parse, generated files are fresh ------------------------------------------------------

def test_every_provisioning_file_parses_and_declares_api_version_1():
    files = provisioning_files()
    assert {p.relative_to(PROVISIONING).parts[0] for p in files} == {"datasources", "dashboards", "alerting"}
    for path in files:
        document = load_yaml(path)
        assert isinstance(document, dict) and document.get("apiVersion") == 1, path


def test_every_dashboard_file_is_json_with_a_unique_uid_and_title():
    boards = dashboards()
    assert set(boards) == {"fleet-overview.json", "vehicle-detail.json", "ingest-health.json"}
    uids = [board["uid"] for board in boards.values()]
    titles = [board["title"] for board in boards.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for board in boards.values():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])


def test_the_committed_dashboards_and_rules_are_what_the_generator_writes():
    stale = [str(path.relative_to(REPO)) for path in generate.stale_files()]
    assert not stale, f"regenerate with `python -m grafana.generate`: stale {stale}"


def test_the_staleness_check_notices_an_edited_file(tmp_path, monkeypatch):
    copy = tmp_path / "fleet-overview.json"
    copy.write_text(generate.dashboard_json("fleet-overview.json").replace("Fleet efficiency", "Fleet eff"))
    monkeypatch.setattr(generate, "DASHBOARDS_DIR", tmp_path)
    monkeypatch.setattr(generate, "RULES_FILE", tmp_path / "rules.yaml")
    assert copy in generate.stale_files()


def test_the_generated_files_name_their_generator():
    assert RULES_FILE.read_text().startswith("# Generated by `python -m grafana.generate`")


# -- data source ---------------------------------------------------------------------------------

def test_the_datasource_is_influxdb_flux_with_a_fixed_uid_and_secrets_from_the_environment():
    [datasource] = load_yaml(PROVISIONING / "datasources" / "influxdb.yaml")["datasources"]
    assert datasource["uid"] == panels.DATASOURCE_UID
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", datasource["uid"])
    assert datasource["type"] == "influxdb" and datasource["access"] == "proxy"
    assert datasource["url"] == "http://influxdb:8086"
    assert datasource["jsonData"]["version"] == "Flux"
    assert datasource["jsonData"]["defaultBucket"] == Settings().influx.telemetry_bucket == queries.TELEMETRY_BUCKET
    assert re.fullmatch(r"\$\{?[A-Z_]+\}?", datasource["jsonData"]["organization"])
    assert re.fullmatch(r"\$\{?[A-Z_]+\}?", datasource["secureJsonData"]["token"])


def test_every_environment_variable_a_provisioning_file_reads_is_set_on_the_grafana_service():
    # rules.yaml is left out: its annotations are Go templates ({{ $labels.x }}), checked below.
    environment = load_yaml(COMPOSE_FILE)["services"]["grafana"]["environment"]
    with_email = {**environment, **load_yaml(REPO / "docker-compose.email.yml")["services"]["grafana"]["environment"]}
    files = [(path, environment) for path in provisioning_files() if path != RULES_FILE]
    files += [(path, with_email) for path in sorted((GRAFANA / "email").glob("*.yaml"))]
    for path, variables in files:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", text.replace("$$", "")):
            assert name in variables, f"{path.name} reads ${name}, which the grafana service does not set"


def test_every_datasource_reference_in_dashboards_and_rules_resolves_to_the_provisioned_one():
    provisioned = {"type": "influxdb", "uid": panels.DATASOURCE_UID}
    for name, board in dashboards().items():
        for panel in all_panels(board):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"] == provisioned, (name, panel["title"])
            for target in panel["targets"]:
                assert target.get("datasource", provisioned) == provisioned, (name, panel["title"])
        for variable in board.get("templating", {}).get("list", []):
            assert variable["datasource"] == provisioned, (name, variable["name"])
        for annotation in board["annotations"]["list"]:
            assert annotation["datasource"] in (provisioned, BUILTIN_ANNOTATIONS), (name, annotation["name"])
    for rule in rules():
        for query in rule["data"]:
            assert query["datasourceUid"] in (panels.DATASOURCE_UID, EXPRESSION_UID), rule["title"]
            if query["datasourceUid"] == panels.DATASOURCE_UID:
                assert query["model"]["datasource"] == provisioned


def test_no_file_carries_export_placeholders_that_only_the_import_ui_resolves():
    for path in [*DASHBOARD_FILES, *provisioning_files()]:
        text = path.read_text()
        assert "__inputs" not in text and "${DS_" not in text and "__requires" not in text, path


# -- dashboards ----------------------------------------------------------------------------------

def test_the_dashboard_provider_serves_the_mounted_dashboards_directory():
    [provider] = load_yaml(PROVISIONING / "dashboards" / "chargewatch.yaml")["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).exists()


def test_panels_have_unique_ids_and_do_not_overlap_on_the_24_column_grid():
    for name, board in dashboards().items():
        cells: dict[tuple[int, int], int] = {}
        ids = [panel["id"] for panel in all_panels(board)]
        assert len(ids) == len(set(ids)), name
        for panel in all_panels(board):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, (name, panel["title"])
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']!r} overlaps panel {cells[(x, y)]}"
                    cells[(x, y)] = panel["id"]


def test_the_dashboards_have_the_panels_the_bundle_promises():
    titles = {name: {panel["title"] for panel in all_panels(board)} for name, board in dashboards().items()}
    assert {"Fleet efficiency", "Vehicles below 85%", "AC consumed vs DC delivered", "Worst vehicles",
            "State of charge now", "Ingest rate"} <= titles["fleet-overview.json"]
    assert {"Efficiency", "AC vs DC per window", "State of charge",
            "Battery temperature"} <= titles["vehicle-detail.json"]
    assert {"Readings accepted", "Readings rejected, by reason", "Outbox depth", "Forwarder lag",
            "Efficiency task lag"} <= titles["ingest-health.json"]


def test_the_vehicle_detail_dashboard_has_a_flux_vehicle_variable_and_an_85_percent_threshold_line():
    board = dashboards()["vehicle-detail.json"]
    [variable] = board["templating"]["list"]
    assert variable["name"] == queries.VEHICLE_VARIABLE and variable["type"] == "query"
    assert variable["query"]["refId"] == "InfluxVariableQueryEditor-VariableQuery"
    assert "schema.tagValues" in variable["query"]["query"] and 'tag: "vehicle_id"' in variable["query"]["query"]
    [efficiency] = [p for p in all_panels(board) if p["id"] == panels.VEHICLE_EFFICIENCY_PANEL_ID]
    defaults = efficiency["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "dashed", "line+area", "dashed+area"}
    assert [step["value"] for step in defaults["thresholds"]["steps"]] == [None, AlertSettings().threshold]
    for panel in all_panels(board):  # every panel follows the variable
        for target in panel["targets"]:
            assert "${vehicle_id}" in target["query"], panel["title"]


def test_every_dashboard_shows_alert_annotations():
    for name, board in dashboards().items():
        [builtin] = [a for a in board["annotations"]["list"] if a.get("builtIn") == 1]
        assert builtin["enable"] is True and builtin["type"] == "dashboard", name


def test_the_worst_vehicles_link_opens_the_vehicle_detail_dashboard_for_that_vehicle():
    board = dashboards()["fleet-overview.json"]
    [worst] = [p for p in all_panels(board) if p["title"] == "Worst vehicles"]
    links = [prop["value"] for override in worst["fieldConfig"]["overrides"] for prop in override["properties"]
             if prop["id"] == "links"]
    [[link]] = links
    assert link["url"].startswith(f"/d/{panels.VEHICLE_UID}/") and f"var-{queries.VEHICLE_VARIABLE}=" in link["url"]


# -- alert rules ---------------------------------------------------------------------------------

def test_the_rule_group_is_what_grafana_accepts():
    [group] = rule_group_file()["groups"]
    assert group["name"] and group["folder"] and "/" not in group["folder"]
    interval = duration_seconds(group["interval"])
    assert interval > 0 and interval % 10 == 0, "Grafana refuses to start unless the interval divides by 10 s"
    assert len({rule["uid"] for rule in group["rules"]}) == len({rule["title"] for rule in group["rules"]}) == 2
    for rule in group["rules"]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"])
        assert rule["noDataState"] in {"NoData", "Alerting", "OK"}
        assert rule["execErrState"] in {"Error", "Alerting", "OK"}
        ref_ids = [query["refId"] for query in rule["data"]]
        assert len(ref_ids) == len(set(ref_ids)) and rule["condition"] in ref_ids
        for query in rule["data"]:
            assert query["model"]["refId"] == query["refId"]
            if query["datasourceUid"] == EXPRESSION_UID:
                assert query["model"]["expression"] in ref_ids and query["model"]["expression"] != query["refId"]
            else:
                assert query["relativeTimeRange"]["from"] > query["relativeTimeRange"]["to"] == 0


def test_rule_values_grafana_interpolates_hold_no_dollar_and_annotations_no_braced_variables():
    for rule in rules():
        # Titles and labels go through $VAR expansion; annotations through ${VAR} expansion only.
        assert "$" not in rule["title"] and not any("$" in k + v for k, v in rule["labels"].items())
        assert not any("${" in value for value in rule["annotations"].values())


def assert_low_rule_follows(settings: AlertSettings, group_file: dict[str, Any]) -> None:
    """The low-efficiency rule in ``group_file`` has the threshold, span, pending and hysteresis of ``settings``."""
    [low] = [rule for group in group_file["groups"] for rule in group["rules"]
             if rule["labels"]["rule"] == "low_efficiency"]
    query, reduce, threshold = low["data"]
    assert query["relativeTimeRange"] == {"from": settings.span_minutes * 60, "to": 0}
    assert duration_seconds(low["for"]) == settings.pending_minutes * 60
    assert reduce["model"]["type"] == "reduce" and reduce["model"]["expression"] == "A"
    [condition] = threshold["model"]["conditions"]
    assert low["condition"] == "C" and threshold["model"]["type"] == "threshold"
    assert condition["evaluator"] == {"type": "lt", "params": [settings.threshold]}
    resolve = pytest.approx(settings.threshold + settings.hysteresis)
    assert condition["unloadEvaluator"] == {"type": "gt", "params": [resolve]}
    assert f">= {settings.min_span_energy_kwh} and" in query["model"]["query"]
    assert f"below {settings.threshold:.0%}" in low["annotations"]["summary"]


def test_the_low_efficiency_rule_has_the_designs_threshold_span_pending_and_hysteresis():
    assert_low_rule_follows(AlertSettings(), rule_group_file())


def test_the_alert_settings_of_the_environment_reach_the_rules_the_generator_writes(tmp_path):
    custom = {"threshold": 0.7, "hysteresis": 0.05, "span_minutes": 20, "pending_minutes": 10,
              "min_span_energy_kwh": 1.5, "above_one_threshold": 1.1}
    env = {**os.environ, **{f"CHARGEWATCH_ALERTS__{name.upper()}": str(value) for name, value in custom.items()}}
    target = tmp_path / "alerting" / "rules.yaml"
    subprocess.run([sys.executable, "-m", "grafana.generate", "--alerts-from-env", str(target)], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=120)

    written = load_yaml(target)
    assert_low_rule_follows(AlertSettings(**custom), written)
    [above] = [rule for group in written["groups"] for rule in group["rules"]
               if rule["labels"]["rule"] == "efficiency_above_one"]
    [condition] = above["data"][2]["model"]["conditions"]
    assert condition["evaluator"] == {"type": "gt", "params": [1.1]}
    assert condition["unloadEvaluator"]["params"] == [pytest.approx(1.05)]
    assert_low_rule_follows(AlertSettings(), rule_group_file())  # the committed file keeps the defaults


def test_the_data_quality_rule_fires_above_one():
    settings = AlertSettings()
    [above] = [rule for rule in rules() if rule["labels"]["rule"] == "efficiency_above_one"]
    [condition] = above["data"][2]["model"]["conditions"]
    assert condition["evaluator"] == {"type": "gt", "params": [settings.above_one_threshold]}
    assert condition["unloadEvaluator"]["type"] == "lt"
    assert condition["unloadEvaluator"]["params"] == [pytest.approx(settings.above_one_threshold - settings.hysteresis)]


def test_the_rules_use_chargewatchs_own_rule_and_alert_names():
    from chargewatch.alerts import ABOVE_ONE, ALERT_NAMES, LOW

    assert (alerting.LOW, alerting.ABOVE_ONE, alerting.ALERT_NAMES) == (LOW, ABOVE_ONE, ALERT_NAMES)
    expected = {(rule, ALERT_NAMES[rule]) for rule in (LOW, ABOVE_ONE)}
    assert {(rule["labels"]["rule"], rule["title"]) for rule in rules()} == expected


def test_the_rules_link_to_the_vehicle_detail_efficiency_panel():
    boards = {board["uid"]: board for board in dashboards().values()}
    for rule in rules():
        board = boards[rule["dashboardUid"]]
        assert rule["panelId"] in {panel["id"] for panel in all_panels(board)}


def _pipeline_after_last_group(flux: str) -> str:
    groups = list(re.finditer(r"\|> group\((.*?)\)", flux))
    assert groups, "the query never groups: one table per vehicle cannot be relied on"
    assert groups[-1].group(1) == 'columns: ["vehicle_id"]', f"last group() is {groups[-1].group(0)}"
    return flux[groups[-1].end():]


def test_every_alert_query_returns_one_value_series_per_vehicle():
    """Grafana makes one alert instance per label set (the group key): the query must end grouped by
    vehicle_id alone, with _time and _value columns (a table without _value cannot be alerted on)."""
    for rule in rules():
        [query] = [q for q in rule["data"] if q["datasourceUid"] == panels.DATASOURCE_UID]
        rest = _pipeline_after_last_group(query["model"]["query"])
        for step in ("group(", "pivot(", "keep(", "drop(", "rename(", "window(", "aggregateWindow("):
            assert step not in rest, f"{rule['title']}: {step} after the per-vehicle group() changes the series"
        final_map = rest[rest.rindex("|> map("):]
        record = re.search(r"=> \(\{(.*)\}\)\)", final_map).group(1)
        keys = {item.split(":")[0].strip() for item in record.split(", ")}
        assert keys == {"vehicle_id", "_time", "_value"}, f"{rule['title']}: map() yields {keys}"


@pytest.mark.parametrize("broken", [
    'group(columns: ["vehicle_id", "meter_id"])',  # one instance per vehicle *and* meter
    'group(columns: ["_field"])',
])
def test_the_per_vehicle_check_refuses_other_groupings(broken):
    flux = queries.TRAILING_EFFICIENCY_PER_VEHICLE.replace('group(columns: ["vehicle_id"])', broken)
    with pytest.raises(AssertionError):
        _pipeline_after_last_group(flux)


# -- Flux ----------------------------------------------------------------------------------------

def test_the_dashboards_and_rules_send_flux_queries_for_every_panel_variable_and_rule():
    found = flux_queries()
    assert len(found) >= 25
    assert sum(where.startswith("alert rule") for where, _ in found) == 2
    assert any("variable vehicle_id" in where for where, _ in found)


def test_grafanas_macro_pass_touches_only_the_v_record():
    """Grafana rewrites `<any word>.timeRangeStart` (and .bucket, .organization, ...) as text; a record
    field with such a name would be corrupted."""
    for where, flux in flux_queries():
        for match in GRAFANA_MACRO.finditer(flux):
            if match.group(2) in MACRO_SAMPLES:
                assert match.group(1) == "v", f"{where}: {match.group(0)} would be rewritten by Grafana"


def test_every_flux_query_type_checks_after_grafanas_substitutions(flux_checker):
    items = []
    for where, flux in flux_queries():
        text = grafana_interpolated(flux)
        assert "v." not in re.sub(r'"[^"]*"', "", text), f"{where}: a Grafana macro was left unreplaced"
        assert "$" not in text, f"{where}: an unknown dashboard variable was left in"
        items.append({"name": where, "source": text})
    results = flux_checker.check(*items)
    assert len(results) == len(items)
    invalid = [result.describe() for result in results if not result.valid]
    assert not invalid, "\n".join(invalid)
    assert not any(result.declared for result in results), "the checker had to declare names Grafana would not"


def test_the_type_check_of_the_substituted_queries_catches_a_broken_one(flux_checker):
    broken = queries.TRAILING_EFFICIENCY_PER_VEHICLE.replace("r.dc_kwh / r.ac_kwh", 'r.dc_kwh / "kWh"')
    [result] = flux_checker.check({"name": "broken", "source": grafana_interpolated(broken)})
    assert not result.valid


def test_the_queries_read_only_buckets_the_bundle_creates():
    settings = Settings()
    compose = load_yaml(COMPOSE_FILE)
    created = {settings.influx.telemetry_bucket, settings.influx.efficiency_bucket, "_tasks",
               compose["services"]["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"]}
    for where, flux in flux_queries():
        for bucket in re.findall(r'bucket: "([^"]+)"', flux):
            assert bucket in created, f"{where} reads bucket {bucket!r}"


def test_the_ingest_health_queries_name_metrics_the_services_expose():
    sources = "\n".join(path.read_text() for folder in ("webapi", "ingest", "analytics", "chargewatch")
                        for path in (REPO / folder).rglob("*.py"))
    for metric in queries.METRICS:
        base = metric.removesuffix("_total")
        assert f'"{base}"' in sources or f'"{metric}"' in sources, f"no service exposes {metric}"
    for where, flux in flux_queries():
        for field in re.findall(r'r\._field == "(chargewatch_[a-z_]+)"', flux):
            assert field in queries.METRICS, f"{where}: {field}"
