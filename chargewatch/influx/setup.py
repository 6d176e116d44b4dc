"""``chargewatch influx setup``: make an InfluxDB 2.x ready for chargewatch, safe to run on every deploy.

1. Looks the organization up (``CHARGEWATCH_INFLUX__ORG``).
2. Creates the buckets ``telemetry`` and ``efficiency`` (names from the settings) with their
   retention when they are missing; an existing bucket is left as it is (its retention may have
   been changed on purpose). A 422 "already exists" from a concurrent setup counts as existing.
3. Creates or updates every task in ``chargewatch/influx/tasks`` by name, with its options filled in from the
   settings: task names are not unique in InfluxDB, so it looks them up
   (``GET /api/v2/tasks?name=&orgID=``) and updates the Flux of every task of that name, or creates
   one (active). A task whose Flux is already the same is left alone.

Talks to InfluxDB with influxdb-client (the ``influx`` extra), imported only here. Failures come
out as :class:`SetupError` with a message naming the setting to fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chargewatch.influx import flux
from chargewatch.settings import Settings

if TYPE_CHECKING:
    from influxdb_client import InfluxDBClient

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400


class SetupError(RuntimeError):
    """InfluxDB could not be set up; the message says what to check."""


@dataclass(frozen=True)
class SetupStep:
    """What setup did to one bucket or task: ``created``, ``updated``, ``unchanged`` or ``exists``."""

    kind: str  # bucket | task
    name: str
    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")


def bucket_retention_days(settings: Settings) -> dict[str, int]:
    """Retention in days (0 = forever) of each bucket setup creates."""
    influx = settings.influx
    telemetry = influx.telemetry_retention_days
    return {
        influx.telemetry_bucket: settings.retention_days if telemetry is None else telemetry,
        influx.efficiency_bucket: influx.efficiency_retention_days,
    }


def describe_plan(settings: Settings) -> str:
    """What ``setup`` would install, for ``--dry-run``: buckets, then each task's Flux."""
    lines = [f"InfluxDB {settings.influx.url}, organization {settings.influx.org!r}"]
    for name, days in bucket_retention_days(settings).items():
        lines.append(f"bucket {name}: create if missing, retention {_retention_text(days)}")
    for name, source in flux.rendered_tasks(settings).items():
        lines += [f"task {name}: create or update with this Flux:", source.rstrip(), ""]
    return "\n".join(lines)


def setup_influx(settings: Settings, client: InfluxDBClient | None = None) -> list[SetupStep]:
    """Ensure buckets and tasks exist as the settings say; returns one step per bucket and task."""
    tasks = flux.rendered_tasks(settings)  # fail on a bad template before touching InfluxDB
    if client is None:
        client = open_client(settings)
        owned = True
    else:
        owned = False
    try:
        org = find_org(settings, client)
        steps = ensure_buckets(settings, client, org)
        for name, source in tasks.items():
            steps += _ensure_task(settings, client, org, name, source)
        return steps
    finally:
        if owned:
            client.close()


def open_client(settings: Settings, timeout_seconds: float | None = None) -> InfluxDBClient:
    """A client for ``CHARGEWATCH_INFLUX__*``; ``timeout_seconds`` overrides the request timeout."""
    try:
        from influxdb_client import InfluxDBClient
    except ImportError:
        raise SetupError("influxdb-client is not installed: pip install 'chargewatch[influx]'") from None
    token = settings.influx.token.get_secret_value()
    if not token:
        raise SetupError("no InfluxDB token: set CHARGEWATCH_INFLUX__TOKEN (an all-access or operator token)")
    timeout_ms = int((timeout_seconds or settings.influx.request_timeout_seconds) * 1000)
    return InfluxDBClient(url=settings.influx.url, token=token, org=settings.influx.org, timeout=timeout_ms)


def find_org(settings: Settings, client: InfluxDBClient) -> Any:
    """The ``Organization`` named by the settings; SetupError if there is none."""
    from influxdb_client.rest import ApiException

    name = settings.influx.org

    def find() -> list[Any]:
        try:
            found: list[Any] = client.organizations_api().find_organizations(org=name)
            return found
        except ApiException as err:
            if err.status != 404:  # OSS answers 404 for an unknown name
                raise
            return []

    orgs = _call(settings, "look up the organization", find)
    if not orgs:
        raise SetupError(f"InfluxDB has no organization {name!r}: check CHARGEWATCH_INFLUX__ORG")
    return orgs[0]


def ensure_buckets(settings: Settings, client: InfluxDBClient, org: Any) -> list[SetupStep]:
    """Create the telemetry and efficiency buckets unless they exist."""
    return [_ensure_bucket(settings, client, org, name, days) for name, days in bucket_retention_days(settings).items()]


def _ensure_bucket(settings: Settings, client: InfluxDBClient, org: Any, name: str, days: int) -> SetupStep:
    from influxdb_client import BucketRetentionRules
    from influxdb_client.rest import ApiException

    buckets = client.buckets_api()

    def find() -> Any:
        try:
            found = buckets.find_buckets(name=name, org_id=org.id).buckets
        except ApiException as err:
            if err.status != 404:  # OSS answers 404 for a name it does not know in the org
                raise
            return None
        return found[0] if found else None

    existing = _call(settings, f"look up bucket {name!r}", find)
    if existing is not None:
        return SetupStep("bucket", name, "exists", _retention_of(existing))
    rules = [BucketRetentionRules(type="expire", every_seconds=days * SECONDS_PER_DAY)] if days else []

    def create() -> SetupStep:
        try:
            buckets.create_bucket(bucket_name=name, org=org, retention_rules=rules,
                                  description="chargewatch: created by `chargewatch influx setup`")
        except ApiException as err:
            if err.status == 422:  # created meanwhile by a concurrent setup
                return SetupStep("bucket", name, "exists", "created concurrently")
            raise
        return SetupStep("bucket", name, "created", f"retention {_retention_text(days)}")

    step: SetupStep = _call(settings, f"create bucket {name!r}", create)
    return step


def _ensure_task(settings: Settings, client: InfluxDBClient, org: Any, name: str, source: str) -> list[SetupStep]:
    from influxdb_client import TaskCreateRequest, TaskUpdateRequest

    tasks_api = client.tasks_api()
    existing = _call(settings, f"look up task {name!r}",
                     lambda: [t for t in tasks_api.find_tasks(name=name, org_id=org.id) if t.name == name])
    if not existing:
        _call(settings, f"create task {name!r}", lambda: tasks_api.create_task(
            task_create_request=TaskCreateRequest(flux=source, org_id=org.id, status="active")))
        return [SetupStep("task", name, "created")]
    if len(existing) > 1:
        logger.warning("%d tasks are named %r in %s; updating all of them alike", len(existing), name,
                       settings.influx.org)
    steps = []
    for task in existing:
        detail = f"id {task.id}" + ("" if task.status == "active" else f", status {task.status}: left as it is")
        if task.flux == source:
            steps.append(SetupStep("task", name, "unchanged", detail))
            continue
        _call(settings, f"update task {name!r}", lambda task_id=task.id: tasks_api.update_task_request(
            task_id, TaskUpdateRequest(flux=source)))
        steps.append(SetupStep("task", name, "updated", detail))
    return steps


def _call(settings: Settings, action: str, fn: Any, *args: Any) -> Any:
    """Run one API call, translating the client's failures into SetupError with a useful message."""
    from influxdb_client.rest import ApiException
    from urllib3.exceptions import HTTPError

    url = settings.influx.url
    try:
        return fn(*args)
    except ApiException as err:
        message = _api_message(err)
        # InfluxDB 2.7 answers 401 both for an unknown token ("unauthorized access") and for a
        # valid token without the permission ("write:orgs/<id>/buckets is unauthorized").
        if err.status == 401 and not message.endswith("is unauthorized"):
            raise SetupError(f"InfluxDB at {url} refused the token (401) while trying to {action}: "
                             "check CHARGEWATCH_INFLUX__TOKEN") from None
        if err.status in (401, 403):
            raise SetupError(f"the token may not {action} ({err.status}: {message}): setup needs an all-access "
                             f"or operator token for organization {settings.influx.org!r}") from None
        if err.status == 404:
            raise SetupError(f"InfluxDB at {url} answered 404 while trying to {action}: {message}; "
                             "check CHARGEWATCH_INFLUX__URL and CHARGEWATCH_INFLUX__ORG") from None
        raise SetupError(f"InfluxDB at {url} answered {err.status} while trying to {action}: {message}") from None
    except HTTPError as err:  # connection refused, DNS, timeouts (urllib3 wraps them all)
        reason = getattr(err, "reason", None) or err
        raise SetupError(f"cannot reach InfluxDB at {url} to {action}: {reason}; is it running, and is "
                         "CHARGEWATCH_INFLUX__URL right?") from None


def _api_message(err: Any) -> str:
    import json

    try:
        return str(json.loads(err.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.reason or err.body or "")


def _retention_of(bucket: Any) -> str:
    seconds = [rule.every_seconds for rule in (bucket.retention_rules or []) if rule.every_seconds]
    if not seconds:
        return "retention forever"
    shortest = min(seconds)
    if shortest % SECONDS_PER_DAY == 0:
        return f"retention {shortest // SECONDS_PER_DAY} d"
    return f"retention {shortest} s"


def _retention_text(days: int) -> str:
    return f"{days} d" if days else "forever"
