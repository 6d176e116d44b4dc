"""The console in influx mode, in a real headless browser: the pages read InfluxDB's windows.

A simulated fleet (12 pairs, 4 h, a quarter of the chargers faulty) goes through the real ingest
service in influx mode and the real ``chargewatch forward`` into a real influxd; the real
``chargewatch influx backfill`` computes its windows with the efficiency task's Flux; the task
runner in influx mode judges the alerts. The analytics service in influx mode then serves the
console, whose overview, vehicle page and ingest health must show what its API answers, with the
outbox and forwarder state that only influx mode has.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.console_browser import sign_in, stat, wait_for_charts
from tests.e2e.harness import READ_TOKEN, IngestServer, free_port, simulate_backfill, wait_for_task_runner
from tests.e2e.influx_mode import ForwarderProcess, wait_until
from tests.live.conftest import ScratchOrg, chargewatch_env, run_chargewatch

pytestmark = [pytest.mark.influx, pytest.mark.slow, pytest.mark.browser]


def api(server: IngestServer, path: str, **params: str) -> dict:
    response = requests.get(server.url + path, params=params, headers={"Authorization": f"Token {READ_TOKEN}"},
                            timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def fleet(module_org: ScratchOrg, tmp_path_factory) -> Iterator[dict]:
    data_dir = tmp_path_factory.mktemp("console-influx")
    env = {k: v for k, v in chargewatch_env(module_org, module_org.org).items() if k.startswith("CHARGEWATCH_")}
    setup = run_chargewatch({**chargewatch_env(module_org, module_org.org), "CHARGEWATCH_DATA_DIR": str(data_dir)},
                            "influx", "setup")
    assert setup.returncode == 0, setup.stderr
    ingest = IngestServer(data_dir, free_port(), extra_env=env)
    analytics = IngestServer(data_dir, free_port(), service="analytics", extra_env=env)
    tasks = IngestServer(data_dir, 0, service="tasks", extra_env=env)
    forwarder = ForwarderProcess(ingest)
    truth_path = data_dir / "truth.json"
    started = []
    try:
        for process in (ingest, forwarder, analytics):
            process.start()
            started.append(process)
        truth = simulate_backfill(ingest, truth_path, hours=4, pairs=12, seed=3, faulty_share=0.25)
        wait_until(lambda: ingest.query("SELECT count(*) FROM outbox")[0][0] == 0, 120, "the outbox draining")
        since = (datetime.now(timezone.utc) - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        backfill = run_chargewatch(ingest.env(), "influx", "backfill", "--start", since, timeout_seconds=300)
        assert backfill.returncode == 0, backfill.stderr
        tasks.start()
        started.append(tasks)
        wait_for_task_runner(analytics, tasks)
        yield {"analytics": analytics, "ingest": ingest, "truth": truth}
    finally:
        for process in reversed(started):
            process.stop()


def test_the_overview_shows_influxdbs_windows_with_a_faulty_vehicle_first(page, fleet) -> None:
    analytics = fleet["analytics"]
    sign_in(page, analytics.url)
    wait_for_charts(page)
    summary = api(analytics, "/v1/analytics/fleet/summary", worst="100")
    assert summary["vehicles"] == 12
    assert int(stat(page, "vehicles")) == summary["vehicles"]
    assert int(stat(page, "below-threshold")) == len(summary["belowThreshold"])
    assert int(stat(page, "active-alerts")) == summary["activeAlerts"]
    assert stat(page, "efficiency") == f"{summary['efficiencyRatio'] * 100:.1f} %"
    rows = page.locator("#fleet-table tbody tr")
    faulty = {v["vehicleId"] for v in fleet["truth"]["vehicles"] if v["faulty"]}
    first = rows.nth(0).get_attribute("data-vehicle")
    assert summary["belowThreshold"] and first == summary["worst"][0]["vehicleId"] and first in faulty
    assert rows.nth(0).locator("td").nth(0).inner_text() == f"{summary['worst'][0]['efficiencyRatio'] * 100:.1f} %"


def test_a_faulty_vehicles_page_shows_influxdbs_report_and_charts(page, fleet) -> None:
    analytics = fleet["analytics"]
    sign_in(page, analytics.url)
    first = page.locator("#fleet-table tbody tr").nth(0)
    vehicle_id = first.get_attribute("data-vehicle")
    first.get_by_role("link", name=vehicle_id).click()
    page.wait_for_url(re.compile(f"/console/vehicles/{vehicle_id}$"))
    wait_for_charts(page)
    report = api(analytics, f"/v1/analytics/performance/{vehicle_id}")
    assert stat(page, "efficiency") == f"{report['efficiencyRatio'] * 100:.1f} %"
    assert stat(page, "ac") == f"{report['totalEnergyConsumedAc']:,.2f} kWh"
    assert stat(page, "dc") == f"{report['totalEnergyDeliveredDc']:,.2f} kWh"
    assert stat(page, "status") == "below threshold"
    for chart in ("vehicle-efficiency", "vehicle-energy", "vehicle-battery"):
        assert page.locator(f"#{chart} .main-svg").count() > 0, chart


def test_ingest_health_shows_the_outbox_and_the_forwarder(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url, "/console/health")
    wait_for_charts(page)
    assert stat(page, "runner-status") == "ok"
    assert stat(page, "forwarder-state") == "shipping"
    depth = fleet["ingest"].query("SELECT count(*) FROM outbox")[0][0]
    assert re.fullmatch(rf"{depth} of \d+", stat(page, "outbox-depth")), stat(page, "outbox-depth")
    assert stat(page, "dead-letters") == "0"
    shipped = fleet["ingest"].query("SELECT value FROM forwarder_state WHERE key = 'shipped_total'")[0][0]
    assert int(stat(page, "shipped")) == int(shipped) > 0  # what the forwarder recorded
