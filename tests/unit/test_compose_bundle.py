"""The bundle's docker files as Docker Compose would read them: docker-compose.yml (and the email
override) validate against the Compose Specification's JSON schema after interpolating .env.example,
and hold together (dependencies, mounts, ports, healthchecks, variables, commands the CLI accepts);
the Dockerfile and Telegraf's config fit them. No Docker engine runs here, so this is the proof."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.fluxcheck import REPO

COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "docker-compose.email.yml"]
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
ENV_EXAMPLE = REPO / ".env.example"
PYTHON_SERVICES = {"setup", "ingest", "forwarder", "analytics", "tasks", "simulator", "locust"}

# Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
# ${VAR?error}, ${VAR:+alt}, ${VAR+alt}.
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f".env.example: bad line {line!r}"
            assert name not in values, f".env.example: {name} twice"
            values[name] = value
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` (a loaded compose file) with every string interpolated as Compose does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg, current = match.group("op"), match.group("arg"), env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else current or ""
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return current or ""
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return VARIABLE.sub(replace, value)


def raw(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return yaml.safe_load(handle)


def compose(path: Path = COMPOSE_FILES[0]) -> dict[str, Any]:
    return interpolate(raw(path), env_example())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def used_variables(value: Any) -> set[str]:
    """Variables interpolated in a loaded compose file's values (comments are not interpolated)."""
    if isinstance(value, dict):
        return set().union(set(), *(used_variables(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(used_variables(item) for item in value))
    if isinstance(value, str):
        return {m.group("braced") or m.group("plain") for m in VARIABLE.finditer(value) if not m.group("escaped")}
    return set()


def is_long_running(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") != "no"


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


# -- schema --------------------------------------------------------------------------------------

def test_the_vendored_schema_is_the_compose_specification_with_its_license():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    notice = (SCHEMA.parent / "compose-spec.NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and "compose-spec" in notice
    assert "Apache License" in (SCHEMA.parent / "compose-spec.LICENSE").read_text()


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_the_compose_file_validates_against_the_compose_spec_schema(path):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose(path))]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("mutate", [
    lambda doc: doc["services"]["ingest"].update(healthchek={"test": ["CMD", "true"]}),
    lambda doc: doc["services"]["ingest"].update(ports="127.0.0.1:8080:8080"),
    lambda doc: doc["services"]["setup"]["depends_on"]["influxdb"].update(condition="service_ready"),
], ids=["unknown key", "ports not a list", "unknown depends_on condition"])
def test_the_schema_check_refuses_a_broken_compose_file(mutate):
    document = copy.deepcopy(compose())
    mutate(document)
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(document))


# -- variables -----------------------------------------------------------------------------------

def test_every_variable_the_compose_files_use_has_an_entry_in_env_example_and_none_is_unused():
    used = set().union(*(used_variables(raw(path)) for path in COMPOSE_FILES))
    documented = set(env_example())
    assert used - documented == set(), f"missing from .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f"unused in .env.example: {sorted(documented - used)}"


@pytest.mark.parametrize("name", ["INFLUX_ADMIN_TOKEN", "INFLUX_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD"])
def test_a_missing_secret_stops_compose_with_a_message_naming_it(name):
    env = {key: value for key, value in env_example().items() if key != name}
    with pytest.raises(MissingVariable, match=f"set {name} in .env"):
        interpolate(raw(COMPOSE_FILES[0]), env)


def test_env_example_holds_no_secret_and_compose_no_literal_secret():
    for name, value in env_example().items():
        if re.search(r"PASSWORD|TOKEN", name):
            assert value == "" or value.startswith("change-me"), f".env.example: {name} looks like a real secret"
        assert "$" not in value, f".env.example: {name}: Grafana and Telegraf would expand the $"
    for path in COMPOSE_FILES:
        for name, service in raw(path)["services"].items():
            environment = service.get("environment", {})
            for key, value in (environment.items() if isinstance(environment, dict) else []):
                if re.search(r"PASSWORD|TOKEN", key):
                    assert str(value).startswith("${"), f"{path.name}: {name}.{key} is not taken from .env"


# -- structure -----------------------------------------------------------------------------------

def test_every_depends_on_target_exists_and_its_condition_can_be_met():
    all_services = services()
    for name, service in all_services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in all_services, f"{name} depends on unknown {target}"
            target_service = all_services[target]
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in target_service, f"{name} waits for {target} to be healthy; it has none"
            if spec["condition"] == "service_completed_successfully":
                assert not is_long_running(target_service), f"{target} restarts, so it never completes"


def test_the_setup_job_runs_once_influxdb_is_healthy_and_the_services_start_after_it():
    all_services = services()
    assert command_of(all_services["setup"]) == ["chargewatch", "influx", "setup"]
    assert all_services["setup"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    for name in ("ingest", "forwarder", "analytics", "grafana"):
        assert all_services[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully", name


def test_every_mounted_host_path_exists_and_every_named_volume_is_declared():
    for path in COMPOSE_FILES:
        document = compose(path)
        declared = set(compose().get("volumes") or {})
        for name, service in document["services"].items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith((".", "/")):
                    assert (REPO / source).resolve().exists(), f"{path.name}: {name} mounts missing {source}"
                    assert (REPO / source).resolve().is_relative_to(REPO), f"{name} mounts {source} outside the repo"
                    assert volume.endswith(":ro"), f"{name} mounts {source} writable"
                else:
                    assert source in declared, f"{name} uses undeclared volume {source}"


def test_published_ports_are_unique_and_bound_to_loopback():
    published = []
    for name, service in services().items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this machine"
            published.append(host_port)
    assert len(published) == len(set(published)) == 5  # influxdb, ingest, analytics, alertmanager, grafana


def test_every_long_running_service_has_a_healthcheck():
    for name, service in services().items():
        if is_long_running(service):
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert service["healthcheck"].get("disable") is not True
    assert {name for name, s in services().items() if not is_long_running(s)} == {"setup", "simulator", "locust"}


def test_the_python_services_bind_every_interface_inside_and_their_healthcheck_asks_that_port():
    all_services = services()
    for name in ("ingest", "analytics"):
        command = command_of(all_services[name])
        port = command[command.index("--port") + 1]
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert [published.split(":")[-1] for published in all_services[name]["ports"]] == [port]
        check = " ".join(all_services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/health" in check


@pytest.mark.parametrize("name", ["forwarder", "tasks"])
def test_the_process_healthchecks_are_valid_python(name):
    test = services()[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], f"{name}-healthcheck", "exec")


def test_every_python_service_runs_the_one_image_with_the_influx_store_and_the_shared_data_volume():
    all_services = services()
    assert {name for name, s in all_services.items() if "build" in s} == PYTHON_SERVICES
    for name in PYTHON_SERVICES:
        service = all_services[name]
        assert service["image"] == "chargewatch:local"
        assert service["environment"]["CHARGEWATCH_STORE"] == "influx"
        assert service["environment"]["CHARGEWATCH_INFLUX__URL"] == "http://influxdb:8086"
        assert f"chargewatch-data:{service['environment']['CHARGEWATCH_DATA_DIR']}" in service["volumes"]


def test_every_chargewatch_command_is_one_the_cli_accepts():
    from chargewatch.cli import build_parser
    from loadtests.run import build_parser as loadtest_parser

    for name, service in services().items():
        if "command" not in service or name not in PYTHON_SERVICES:
            continue
        command = command_of(service)
        if command[0] == "chargewatch":
            build_parser().parse_args(command[1:])
        else:
            assert command[:3] == ["python", "-m", "loadtests.run"], name
            loadtest_parser().parse_args(command[3:])


def test_the_optional_tools_sit_behind_profiles():
    all_services = services()
    assert all_services["simulator"]["profiles"] == ["simulator"]
    assert all_services["locust"]["profiles"] == ["loadtest"]
    # loadtests/run.py accepts loopback targets only: locust shares ingest's network namespace.
    assert all_services["locust"]["network_mode"] == "service:ingest"
    assert all(not s.get("profiles") for n, s in all_services.items() if n not in {"simulator", "locust"})


def test_the_images_are_pinned_to_the_versions_the_files_were_written_for():
    images = {name: s["image"] for name, s in services().items() if name not in PYTHON_SERVICES}
    assert images["influxdb"] == "influxdb:2.7"
    assert images["grafana"].startswith("grafana/grafana:11.")
    assert re.fullmatch(r"telegraf:1\.\d+", images["telegraf"])
    # The version tests/live/test_alertmanager_live.py runs (Debian's prometheus-alertmanager 0.25).
    assert images["alertmanager"] == "prom/alertmanager:v0.25.0"


# -- Alertmanager --------------------------------------------------------------------------------

def test_the_tasks_service_sends_its_alerts_to_the_bundled_alertmanager():
    from chargewatch.settings import Settings

    all_services = services()
    alertmanager = all_services["alertmanager"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in command_of(alertmanager))
    port = flags["web.listen-address"].rsplit(":", 1)[1]
    assert flags["cluster.listen-address"] == ""  # one instance, no gossip
    tasks = all_services["tasks"]
    settings = Settings(alerts={"alertmanager_urls": tasks["environment"]["CHARGEWATCH_ALERTS__ALERTMANAGER_URLS"]})
    assert settings.alerts.alertmanager_urls == [f"http://alertmanager:{port}"]
    without = interpolate(raw(COMPOSE_FILES[0]), {**env_example(), "CHARGEWATCH_ALERTS__ALERTMANAGER_URLS": ""})
    assert without["services"]["tasks"]["environment"]["CHARGEWATCH_ALERTS__ALERTMANAGER_URLS"] == ""  # none
    assert tasks["depends_on"]["alertmanager"]["condition"] == "service_started"
    assert [p.split(":")[-1] for p in alertmanager["ports"]] == [port]
    assert f"http://127.0.0.1:{port}/-/ready" in alertmanager["healthcheck"]["test"]
    assert f"alertmanager-data:{flags['storage.path']}" in alertmanager["volumes"]


def test_the_alertmanager_config_is_mounted_read_only_and_groups_by_rule():
    alertmanager = services()["alertmanager"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in command_of(alertmanager))
    [mount] = [v for v in alertmanager["volumes"] if v.startswith("./")]
    source, target, mode = mount.split(":")
    assert target == flags["config.file"] and mode == "ro"
    config = yaml.safe_load((REPO / source).read_text())
    assert config["route"]["group_by"] == ["alertname"]
    assert config["route"]["receiver"] in {receiver["name"] for receiver in config["receivers"]}


def test_the_email_override_mounts_its_contact_points_over_the_webhook_only_file():
    grafana = compose(COMPOSE_FILES[1])["services"]["grafana"]
    [mount] = grafana["volumes"]
    source, target, mode = mount.split(":")
    base_mounts = dict(v.split(":")[:2] for v in services()["grafana"]["volumes"] if v.startswith("./"))
    directory = base_mounts["./grafana/provisioning/alerting"]
    assert target == f"{directory}/contact-points.yaml" and mode == "ro"
    assert (REPO / "grafana" / "provisioning" / "alerting" / "contact-points.yaml").exists()
    assert grafana["environment"]["GF_SMTP_ENABLED"] == "true"


# -- Dockerfile ------------------------------------------------------------------------------------

def dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_builds_one_non_root_python_311_image_with_the_influx_extra():
    instructions = dockerfile()
    assert instructions[0] == "FROM python:3.11-slim"
    [user] = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert user not in {"root", "0"}
    assert instructions.index(f"USER {user}") > max(i for i, line in enumerate(instructions) if line.startswith("RUN "))
    [extras] = [line for line in instructions if line.startswith("ARG EXTRAS=")]
    assert "influx" in extras.split("=", 1)[1].split(",")
    [install] = [line for line in instructions if line.startswith("RUN pip install")]
    assert "[${EXTRAS}]" in install
    assert " -e " not in install and "--editable" not in install  # the image runs what the wheel ships


def test_the_image_data_directory_is_the_one_compose_mounts():
    [data_dir] = re.findall(r"CHARGEWATCH_DATA_DIR=(\S+)", " ".join(dockerfile()))
    for name in PYTHON_SERVICES:
        assert services()[name]["environment"]["CHARGEWATCH_DATA_DIR"] == data_dir, name


def test_the_docker_build_context_keeps_what_the_image_needs_and_leaves_secrets_out():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert ".env" in patterns and ".git" in patterns
    for needed in ("pyproject.toml", "README.md", "chargewatch", "ingest", "analytics", "webapi", "simulator",
                   "loadtests"):
        assert needed not in patterns and f"{needed}/" not in patterns, needed
        assert (REPO / needed).exists(), needed


# -- Telegraf ------------------------------------------------------------------------------------

def telegraf_config(environment: dict[str, str]) -> dict[str, Any]:
    """telegraf/telegraf.conf as Telegraf reads it with ``environment``: ``${NAME}``,
    ``${NAME:-default}`` and ``${NAME:?error}`` replaced before the TOML is parsed."""
    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group("braced"), match.group("op"), match.group("arg")
        value = environment.get(name, "")
        if op == ":-" and not value:
            return arg
        if op == ":?" and not value:
            raise MissingVariable(f"telegraf.conf: {name}: {arg}")
        assert op in (None, ":-", ":?"), f"telegraf.conf: unexpected ${{{name}{op}...}}"
        return value

    text = "\n".join(line for line in (REPO / "telegraf" / "telegraf.conf").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    return tomllib.loads(VARIABLE.sub(replace, text))


def test_telegraf_scrapes_the_services_metrics_into_the_monitoring_bucket():
    from grafana import queries

    all_services = services()
    telegraf = all_services["telegraf"]
    environment = {name: str(value) for name, value in telegraf["environment"].items()}
    config = telegraf_config(environment)
    [prometheus] = config["inputs"]["prometheus"]
    assert prometheus["metric_version"] == 2
    ports = {name: command_of(all_services[name])[command_of(all_services[name]).index("--port") + 1]
             for name in ("ingest", "analytics")}
    assert sorted(prometheus["urls"]) == sorted(f"http://{name}:{port}/metrics" for name, port in ports.items())
    [output] = config["outputs"]["influxdb_v2"]
    assert output["urls"] == ["http://influxdb:8086"] and output["bucket"] == queries.MONITORING_BUCKET
    assert all_services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"] == queries.MONITORING_BUCKET
    [health] = config["outputs"]["health"]
    assert health["service_address"] == "http://127.0.0.1:8888"
    assert "http://127.0.0.1:8888/" in telegraf["healthcheck"]["test"]


def test_telegraf_runs_natively_with_loopback_defaults_and_refuses_to_start_without_token_or_org():
    config = telegraf_config({"INFLUX_TOKEN": "t", "INFLUX_ORG": "o"})
    [prometheus] = config["inputs"]["prometheus"]
    assert prometheus["urls"] == ["http://127.0.0.1:8080/metrics", "http://127.0.0.1:8081/metrics"]
    [output] = config["outputs"]["influxdb_v2"]
    assert (output["urls"], output["token"], output["organization"]) == (["http://127.0.0.1:8086"], "t", "o")
    [health] = config["outputs"]["health"]
    assert health["service_address"] == "http://127.0.0.1:8888"  # never on every interface
    for missing in ("INFLUX_TOKEN", "INFLUX_ORG"):
        with pytest.raises(MissingVariable, match=missing):
            telegraf_config({name: "x" for name in ("INFLUX_TOKEN", "INFLUX_ORG") if name != missing})
