"""The window definition (pure), checked against the shared fixture and edge cases."""

from __future__ import annotations

import pytest

from chargewatch.efficiency import (
    EfficiencyWindow,
    MeterEnergy,
    VehicleEnergy,
    efficiency_of,
    span_totals,
    window_stop_ms,
    windows_from_readings,
)
from tests.efficiency_fixture import FIXTURE, energies, expected_windows

W = 300_000


def test_the_reference_implementation_reproduces_the_shared_fixture() -> None:
    meters, vehicles = energies()
    windows = windows_from_readings(meters, vehicles, FIXTURE["windowSeconds"] * 1000, FIXTURE["minEnergyKwh"])
    assert windows == expected_windows()


def test_windows_are_half_open_and_labelled_by_their_stop() -> None:
    assert window_stop_ms(0, W) == W
    assert window_stop_ms(W - 1, W) == W
    assert window_stop_ms(W, W) == 2 * W


def test_a_window_below_the_minimum_energy_has_no_efficiency() -> None:
    assert efficiency_of(0.05, 0.04, 0.1) is None
    assert efficiency_of(0.0, 0.0, 0.0) is None
    assert efficiency_of(1.0, 0.9, 0.1) == 0.9


def test_unpaired_meter_readings_make_no_window() -> None:
    assert windows_from_readings([MeterEnergy(None, "GRID", 10, 1.0)], []) == []


def test_a_window_sum_is_correctly_rounded() -> None:
    meters = [MeterEnergy("V", "M", i, 0.1) for i in range(10)]
    (window,) = windows_from_readings(meters, [], W)
    assert window.ac_kwh == 1.0  # naive summation gives 0.9999999999999999


def test_span_efficiency_is_a_ratio_of_sums_not_a_mean_of_ratios() -> None:
    windows = [
        EfficiencyWindow("V", "M", W, 10.0, 9.0, 5, 5, 20.0, 0.9),
        EfficiencyWindow("V", "M", 2 * W, 1.0, 0.5, 5, 5, 30.0, 0.5),
    ]
    totals = span_totals(windows)
    assert totals.efficiency == pytest.approx(9.5 / 11.0, rel=1e-9)
    assert totals.avg_battery_temp == 25.0
    assert totals.windows == 2


def test_drift_across_a_window_edge_cancels_over_a_span() -> None:
    # Minute m's readings: the meter's clock is 30 s ahead, the vehicle's 30 s behind, so the
    # meter's reading of minute 5 lands in the next window.
    meters = [MeterEnergy("V", "M", m * 60_000 + 30_000, 1.0) for m in range(1, 11)]
    vehicles = [VehicleEnergy("V", "M", m * 60_000 - 30_000, 0.9, 20.0) for m in range(1, 11)]
    windows = windows_from_readings(meters, vehicles, W)
    assert {w.efficiency for w in windows} != {0.9}  # single windows are off ...
    assert span_totals(windows).efficiency == pytest.approx(0.9, rel=1e-9)  # ... the span is exact
