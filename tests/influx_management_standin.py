"""The InfluxDB 2.7 management endpoints `chargewatch influx setup` uses, as routes on the
write-API stand-in (tests/influx_standin.py): organizations, buckets and tasks, with OSS 2.7's
status codes and JSON bodies (../shared/reference/influx-grafana-facts.md, section 2):

- ``GET /api/v2/orgs?org=NAME``: 200 ``{"orgs": [...]}``; an unknown name is 404
  ``organization name "X" not found`` (the client library itself treats 404 as "no such org").
- ``GET /api/v2/buckets?name=&orgID=``: 200 ``{"buckets": [...]}``; with both name and orgID an
  unknown name is 404 ``bucket "X" not found`` (name only: 200 and an empty list).
- ``POST /api/v2/buckets``: 201 and the bucket; a taken name is 422 ``{"code": "conflict",
  "message": "bucket with name X already exists"}``.
- ``GET /api/v2/tasks?name=&orgID=``: 200 ``{"tasks": [...]}`` (names are not unique).
- ``POST /api/v2/tasks``: 201; name, every and offset come from the script's ``option task``
  (400 ``invalid`` without one). ``PATCH /api/v2/tasks/{id}``: 200, or 404 ``task not found``.

Every route answers 401 without the stand-in's token. ``requests`` records what was asked.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from chargewatch.influx.flux import task_options
from tests.influx_standin import InfluxStandin, StandinRequest, StandinResponse

USER_ID = "0000000000000aaa"


@dataclass(frozen=True)
class ManagementRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class InfluxManagementApi:
    """Install with ``InfluxManagementApi(standin)``; it shares the stand-in's org, token and buckets,
    so a bucket created here takes writes at once."""

    def __init__(self, standin: InfluxStandin) -> None:
        self.standin = standin
        self.tasks: dict[str, dict[str, Any]] = {}
        self.requests: list[ManagementRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(0x100)
        for method, path, handler in [
            ("GET", "/api/v2/orgs", self._get_orgs),
            ("GET", "/api/v2/buckets", self._get_buckets),
            ("POST", "/api/v2/buckets", self._post_bucket),
            ("GET", "/api/v2/tasks", self._get_tasks),
            ("POST", "/api/v2/tasks", self._post_task),
            ("PATCH", "/api/v2/tasks/{task_id}", self._patch_task),
        ]:
            standin.add_route(method, path, self._recorded(handler))

    def add_task(self, flux: str, status: str = "active") -> dict[str, Any]:
        """A task as if created earlier (through the UI or an older setup); not recorded as a request."""
        with self._lock:
            response = self._create_task({"orgID": self.standin.org_id, "flux": flux, "status": status})
        assert response.status == 201, response.body
        return self.tasks[max(self.tasks)]

    def requests_of(self, method: str) -> list[ManagementRequest]:
        return [r for r in self.requests if r.method == method]

    # -- plumbing ------------------------------------------------------------------------------

    def _recorded(self, handler):
        def handle(request: StandinRequest) -> StandinResponse:
            try:
                body = request.json() if request.raw_body else None
            except ValueError:
                body = request.raw_body
            with self._lock:
                self.requests.append(ManagementRequest(request.method, request.path, dict(request.query), body))
            denied = self.standin.unauthorized(request)
            if denied:
                return denied
            with self._lock:
                return handler(request)
        return handle

    def _new_id(self) -> str:
        return f"{next(self._ids):016x}"

    @staticmethod
    def _now() -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _org(self) -> dict[str, Any]:
        return {"id": self.standin.org_id, "name": self.standin.org, "description": "",
                "createdAt": "2026-11-01T00:00:00Z", "updatedAt": "2026-11-01T00:00:00Z",
                "links": {"self": f"/api/v2/orgs/{self.standin.org_id}"}}

    def _bucket_json(self, bucket: dict[str, Any]) -> dict[str, Any]:
        return {"id": bucket["id"], "orgID": bucket["orgID"], "type": "user", "name": bucket["name"],
                "description": bucket.get("description", ""), "retentionRules": bucket.get("retentionRules", []),
                "createdAt": bucket.get("createdAt", "2026-11-01T00:00:00Z"),
                "updatedAt": bucket.get("updatedAt", "2026-11-01T00:00:00Z"), "labels": [],
                "links": {"self": f"/api/v2/buckets/{bucket['id']}", "org": f"/api/v2/orgs/{bucket['orgID']}"}}

    # -- organizations -------------------------------------------------------------------------

    def _get_orgs(self, request: StandinRequest) -> StandinResponse:
        name = request.query.get("org")
        if name is not None and name != self.standin.org:
            return StandinResponse.error(404, "not found", f'organization name "{name}" not found')
        return StandinResponse.json(200, {"links": {"self": "/api/v2/orgs"}, "orgs": [self._org()]})

    # -- buckets -------------------------------------------------------------------------------

    def _get_buckets(self, request: StandinRequest) -> StandinResponse:
        name, org_id = request.query.get("name"), request.query.get("orgID")
        if org_id is not None and org_id != self.standin.org_id:
            return StandinResponse.error(404, "not found", "organization not found")
        found = [b for b in self.standin.buckets.values() if name is None or b["name"] == name]
        if name is not None and org_id is not None and not found:
            return StandinResponse.error(404, "not found", f'bucket "{name}" not found')
        return StandinResponse.json(200, {"links": {"self": "/api/v2/buckets"},
                                          "buckets": [self._bucket_json(b) for b in found]})

    def _post_bucket(self, request: StandinRequest) -> StandinResponse:
        body = request.json() or {}
        name, org_id = body.get("name"), body.get("orgID")
        if not name:
            return StandinResponse.error(400, "invalid", "bucket name is required")
        if org_id != self.standin.org_id:
            return StandinResponse.error(404, "not found", "organization not found")
        if name in self.standin.buckets:
            return StandinResponse.error(422, "conflict", f"bucket with name {name} already exists")
        now = self._now()
        bucket = {"id": self._new_id(), "name": name, "orgID": org_id, "description": body.get("description", ""),
                  "retentionRules": [{"type": r.get("type", "expire"), "everySeconds": r.get("everySeconds", 0),
                                      "shardGroupDurationSeconds": 604800}
                                     for r in body.get("retentionRules") or []],
                  "createdAt": now, "updatedAt": now}
        with self.standin.lock:
            self.standin.buckets[name] = bucket
        return StandinResponse.json(201, self._bucket_json(bucket))

    # -- tasks ---------------------------------------------------------------------------------

    def _get_tasks(self, request: StandinRequest) -> StandinResponse:
        name, org_id = request.query.get("name"), request.query.get("orgID")
        found = [t for t in self.tasks.values()
                 if (name is None or t["name"] == name) and (org_id is None or t["orgID"] == org_id)]
        return StandinResponse.json(200, {"links": {"self": "/api/v2/tasks"}, "tasks": found})

    def _post_task(self, request: StandinRequest) -> StandinResponse:
        return self._create_task(request.json() or {})

    def _create_task(self, body: dict[str, Any]) -> StandinResponse:
        if body.get("orgID") not in (self.standin.org_id, None) or (body.get("org") not in (None, self.standin.org)):
            return StandinResponse.error(404, "not found", "organization not found")
        try:
            options = task_options(body.get("flux") or "")
        except ValueError:
            return StandinResponse.error(400, "invalid", "invalid options: missing required option: 'task'")
        now = self._now()
        task_id = self._new_id()
        task = {"id": task_id, "orgID": self.standin.org_id, "org": self.standin.org, "ownerID": USER_ID,
                "name": options.get("name", ""), "status": body.get("status", "active"), "flux": body["flux"],
                "every": options.get("every"), "offset": options.get("offset"), "description": body.get("description"),
                "createdAt": now, "updatedAt": now, "labels": [],
                "links": {"self": f"/api/v2/tasks/{task_id}", "runs": f"/api/v2/tasks/{task_id}/runs"}}
        self.tasks[task_id] = task
        return StandinResponse.json(201, task)

    def _patch_task(self, request: StandinRequest) -> StandinResponse:
        task = self.tasks.get(request.params["task_id"])
        if task is None:
            return StandinResponse.error(404, "not found", "task not found")
        body = request.json() or {}
        if "flux" in body:
            try:
                options = task_options(body["flux"])
            except ValueError:
                return StandinResponse.error(400, "invalid", "invalid options: missing required option: 'task'")
            task.update(flux=body["flux"], name=options.get("name", task["name"]), every=options.get("every"),
                        offset=options.get("offset"))
        if "status" in body:
            task["status"] = body["status"]
        task["updatedAt"] = self._now()
        return StandinResponse.json(200, task)
