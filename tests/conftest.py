"""Fixtures every test folder shares: builders of validated readings, all on one fixed clock.

Builders are fixtures (not imports from this file) so every folder can use them as arguments::

    def test_x(make_meter, paired, reading_time):
        reading = make_meter(meter_id="METER_002", timestamp=reading_time + timedelta(minutes=1))
        store.write([paired(reading, vehicle_id="VEHICLE_002")])

Every test in ``tests/e2e`` and ``tests/live`` runs real processes or engines and is marked
``slow`` here, as are tests marked so in their module; ``pytest -m "not slow"`` is the quick target.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from chargewatch.readings import READING, MeterReading, ReadingRules, VehicleReading
from chargewatch.stores import PairedReading
from tests.fluxcheck import flux_checker as flux_checker  # the Flux type check, a fixture for every folder

TESTS = Path(__file__).resolve().parent
SLOW_FOLDERS = {"e2e", "live"}
SLOW_TIMEOUT_SECONDS = 600  # a cold engine start, a wheel build; the others keep pyproject's timeout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(TESTS).parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_SECONDS))


pytest_plugins = ["tests.console_browser"]  # the browser and page fixtures of the console tests

READING_TIME = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
RULES = ReadingRules(now=READING_TIME + timedelta(minutes=1))

_METER_DEFAULTS = {"meter_id": "METER_001", "kwh_consumed_ac": 1.25, "voltage": 400.0}
_VEHICLE_DEFAULTS = {"vehicle_id": "VEHICLE_001", "soc": 55.0, "kwh_delivered_dc": 1.1, "battery_temp": 28.5}


def _validated(defaults: dict[str, Any], overrides: dict[str, Any]) -> Any:
    # Validation runs for real (as ingest does), so a builder can never produce an impossible reading.
    payload = {**defaults, "timestamp": READING_TIME, **overrides}
    if isinstance(payload["timestamp"], datetime):
        payload["timestamp"] = payload["timestamp"].isoformat()
    return READING.validate_python(payload, context=RULES.context())


def build_meter(**overrides: Any) -> MeterReading:
    """A validated MeterReading at READING_TIME; override any field by its Python name."""
    return _validated(_METER_DEFAULTS, overrides)


def build_vehicle(**overrides: Any) -> VehicleReading:
    """A validated VehicleReading at READING_TIME; override any field by its Python name."""
    return _validated(_VEHICLE_DEFAULTS, overrides)


def build_paired(
    reading: MeterReading | VehicleReading,
    *,
    vehicle_id: str | None = None,
    meter_id: str | None = None,
    received_ms: int = 0,
) -> PairedReading:
    """The reading as ingest writes it: its own id on its side, the partner (None: unpaired) on the other."""
    if isinstance(reading, MeterReading):
        meter_id = meter_id or reading.meter_id
    else:
        vehicle_id = vehicle_id or reading.vehicle_id
    return PairedReading(reading, vehicle_id=vehicle_id, meter_id=meter_id, received_ms=received_ms)


@pytest.fixture
def reading_time() -> datetime:
    """The builders' default timestamp (aware UTC); validation's ``now`` is one minute later."""
    return READING_TIME


@pytest.fixture
def make_meter() -> Callable[..., MeterReading]:
    return build_meter


@pytest.fixture
def make_vehicle() -> Callable[..., VehicleReading]:
    return build_vehicle


@pytest.fixture
def paired() -> Callable[..., PairedReading]:
    return build_paired
