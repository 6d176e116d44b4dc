"""The console in a real headless browser (``tests/console_browser.py``: Debian's chromium driven by
Playwright, screenshots outside the repository), against real gunicorn services holding a simulated
fleet (backfilled through ingest, windows computed by the task runner). Every page is compared with
what the API answers for the same period."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.console_browser import sign_in, stat, wait_for_charts
from tests.e2e.harness import READ_TOKEN, IngestServer, free_port, simulate_backfill, wait_for_task_runner

pytestmark = [pytest.mark.slow, pytest.mark.browser]

def _api(fleet: dict, path: str, **params) -> dict:
    response = requests.get(fleet["analytics"].url + path, params=params,
                            headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[dict]:
    """12 simulated pairs, 4 h of backfilled history, a quarter of the chargers faulty."""
    data_dir = tmp_path_factory.mktemp("console")
    ingest = IngestServer(data_dir, free_port())
    analytics = IngestServer(data_dir, free_port(), service="analytics")
    tasks = IngestServer(data_dir, 0, service="tasks")
    truth_path = data_dir / "truth.json"
    try:
        ingest.start()
        analytics.start()
        truth = simulate_backfill(ingest, truth_path, hours=4, pairs=12, seed=3, faulty_share=0.25)
        tasks.start()
        wait_for_task_runner(analytics, tasks)
        yield {"ingest": ingest, "analytics": analytics, "truth": truth}
    finally:
        for process in (tasks, analytics, ingest):
            process.stop()


def test_the_root_leads_to_a_sign_in_form_and_a_wrong_token_is_refused(page, fleet) -> None:
    page.goto(fleet["analytics"].url + "/")
    assert page.url.endswith("/console/sign-in?next=/console/fleet")
    page.get_by_label("Read token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("That is not a read token")
    assert page.get_by_label("Read token").get_attribute("aria-invalid") == "true"


def test_signing_in_sets_an_httponly_samesite_cookie_that_the_api_ignores(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url)
    assert page.get_by_role("heading", level=1).inner_text() == "Fleet"
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "chargewatch_console"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert READ_TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    # The API keeps header auth: the browser's cookie opens no API route.
    api = page.request.get(fleet["analytics"].url + "/v1/analytics/fleet/summary")
    assert api.status == 401
    page.get_by_role("button", name="Sign out").click()
    assert "/console/sign-in" in page.url
    page.goto(fleet["analytics"].url + "/console/alerts")
    assert "/console/sign-in" in page.url


def test_the_overview_shows_the_api_numbers_with_a_faulty_vehicle_first(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url)
    wait_for_charts(page)
    summary = _api(fleet, "/v1/analytics/fleet/summary", worst=100)
    assert int(stat(page, "vehicles")) == summary["vehicles"]
    assert int(stat(page, "below-threshold")) == len(summary["belowThreshold"])
    assert int(stat(page, "active-alerts")) == summary["activeAlerts"]
    assert stat(page, "efficiency") == f"{summary['efficiencyRatio'] * 100:.1f} %"
    rows = page.locator("#fleet-table tbody tr")
    assert rows.count() == summary["vehicles"]
    first = rows.nth(0).get_attribute("data-vehicle")
    faulty = {v["vehicleId"] for v in fleet["truth"]["vehicles"] if v["faulty"]}
    assert summary["belowThreshold"], "the simulated fleet should have a vehicle below the threshold"
    assert first == summary["worst"][0]["vehicleId"] and first in faulty
    first_cells = rows.nth(0).locator("td")
    assert first_cells.nth(0).inner_text() == f"{summary['worst'][0]['efficiencyRatio'] * 100:.1f} %"
    assert first_cells.nth(1).inner_text() == "below threshold"
    # every vehicle below the threshold is listed before every vehicle that is not
    listed = [rows.nth(i).get_attribute("data-vehicle") for i in range(rows.count())]
    assert set(listed[:len(summary["belowThreshold"])]) == set(summary["belowThreshold"])
    assert page.locator("#fleet-timeline .main-svg").count() > 0  # plotly drew the fleet chart


def test_the_overview_filters_by_id_and_status(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url)
    page.get_by_label("Status").select_option("low")
    page.get_by_role("button", name="Filter").click()
    summary = _api(fleet, "/v1/analytics/fleet/summary", worst=100)
    rows = page.locator("#fleet-table tbody tr")
    assert sorted(rows.nth(i).get_attribute("data-vehicle") for i in range(rows.count())) == \
        sorted(summary["belowThreshold"])
    page.get_by_label("Status").select_option("")
    page.get_by_label("Vehicle id contains").fill("vehicle_012")
    page.get_by_role("button", name="Filter").click()
    assert [rows.nth(i).get_attribute("data-vehicle") for i in range(rows.count())] == ["VEHICLE_012"]
    assert "q=vehicle_012" in page.url  # the filtered view is a link


def test_a_faulty_vehicles_page_shows_its_report_meter_and_charts(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url)
    first = page.locator("#fleet-table tbody tr").nth(0)
    vehicle_id = first.get_attribute("data-vehicle")
    first.get_by_role("link", name=vehicle_id).click()
    page.wait_for_url(re.compile(f"/console/vehicles/{vehicle_id}$"))
    wait_for_charts(page)
    report = _api(fleet, f"/v1/analytics/performance/{vehicle_id}")
    assert page.get_by_role("heading", level=1).inner_text() == vehicle_id
    assert stat(page, "efficiency") == f"{report['efficiencyRatio'] * 100:.1f} %"
    assert stat(page, "ac") == f"{report['totalEnergyConsumedAc']:,.2f} kWh"
    assert stat(page, "dc") == f"{report['totalEnergyDeliveredDc']:,.2f} kWh"
    lost = report["totalEnergyConsumedAc"] - report["totalEnergyDeliveredDc"]
    assert stat(page, "lost") == f"{lost:,.2f} kWh"
    assert stat(page, "status") == "below threshold"
    assert report["meterId"] in stat(page, "meter")
    assert page.locator("#meter-history tbody tr").first.locator("td").first.inner_text() == report["meterId"]
    for chart in ("vehicle-efficiency", "vehicle-energy", "vehicle-battery"):
        assert page.locator(f"#{chart} .main-svg").count() > 0, chart
        assert page.locator(f"#{chart}").get_attribute("role") == "img"
        assert page.locator(f"#{chart}").get_attribute("aria-label")
    # the 85 % line is drawn on the efficiency chart
    assert page.locator("#vehicle-efficiency .shapelayer path").count() >= 1


def test_a_chosen_period_is_a_link_that_reopens_the_same_numbers(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url, "/console/vehicles/VEHICLE_001")
    now = datetime.now(timezone.utc)
    start = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    stop = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    page.get_by_label("From (UTC)").fill(start)
    page.get_by_label("To (UTC)").fill(stop)
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    url = page.url
    assert "start=" in url and "stop=" in url
    report = _api(fleet, "/v1/analytics/performance/VEHICLE_001", start=start + ":00Z", stop=stop + ":00Z")
    assert stat(page, "ac") == f"{report['totalEnergyConsumedAc']:,.2f} kWh"
    page.goto("about:blank")
    page.goto(url)
    assert stat(page, "ac") == f"{report['totalEnergyConsumedAc']:,.2f} kWh"


def test_the_alerts_page_lists_what_the_api_lists(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url, "/console/alerts")
    firing = _api(fleet, "/v1/analytics/alerts", state="active")["alerts"]
    rows = page.locator("#firing tbody tr[data-vehicle]")
    assert sorted(rows.nth(i).get_attribute("data-vehicle") for i in range(rows.count())) == \
        sorted(a["vehicleId"] for a in firing)
    if firing:
        rows.first.get_by_role("link").click()
        assert "/console/vehicles/" in page.url


def test_ingest_health_shows_the_runner_and_the_ingest_counters(page, fleet) -> None:
    sign_in(page, fleet["analytics"].url, "/console/health")
    wait_for_charts(page)
    assert stat(page, "runner-status") == "ok"
    metrics = requests.get(fleet["ingest"].url + "/metrics", timeout=10).text
    accepted = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^chargewatch_readings_accepted_total\{kind="(\w+)"\} (\S+)$', metrics, re.M)}
    assert accepted, metrics[:500]
    for kind, count in accepted.items():
        assert page.locator(f'[data-counter="accepted-{kind}"]').inner_text() == f"{count:.0f}"
    counter = re.search(r"^chargewatch_readings_duplicate_total (\S+)$", metrics, re.M)
    assert counter is not None, metrics
    duplicates = float(counter.group(1))
    assert page.locator('[data-counter="duplicates"]').inner_text() == f"{duplicates:.0f}"


def test_the_console_can_be_used_with_the_keyboard_alone(page, fleet) -> None:
    page.goto(fleet["analytics"].url + "/console/sign-in")
    assert page.evaluate("document.activeElement.id") == "token"  # the form takes the focus
    page.keyboard.type(READ_TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("/console/fleet"))
    page.keyboard.press("Tab")  # the skip link comes first and moves the focus to the content
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.reload()
    for _ in range(10):  # tab through the header to the Alerts link and follow it
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Alerts":
            break
    else:
        raise AssertionError("the Alerts link cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("/console/alerts"))
    assert page.get_by_role("heading", level=1).inner_text() == "Alerts"
    # every form control on every page has an accessible label
    for path in ("/console/fleet", "/console/alerts", "/console/vehicles/VEHICLE_001"):
        page.goto(fleet["analytics"].url + path)
        unlabelled = page.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.name)""")
        assert unlabelled == [], (path, unlabelled)
