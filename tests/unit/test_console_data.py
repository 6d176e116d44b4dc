"""What the console's vehicle page draws, on the in-memory efficiency stores: the efficiency line
is the one the alert rules judge, not a plain trailing ratio."""

from __future__ import annotations

from analytics import queries
from analytics.console.data import judged_efficiency
from chargewatch.alerts import AlertPolicy, span_verdict
from chargewatch.efficiency import EfficiencyWindow, MeterEnergy, VehicleEnergy, windows_from_readings
from chargewatch.stores.memory_efficiency import InMemoryWindowStore, in_memory_efficiency_stores

W = 300_000
T0 = 1_795_392_000_000  # a window stop
POLICY = AlertPolicy()


def session_windows(efficiency: float) -> list[EfficiencyWindow]:
    """Two hours idle, a 40-minute session at 11 kW, idle again; meter clock 27 s behind the vehicle's."""
    meters, vehicles = [], []
    for minute in range(1, 4 * 60 + 1):
        dc = 11.0 / 60 if 120 < minute <= 160 else 0.0
        at = T0 + minute * 60_000
        meters.append(MeterEnergy("V1", "M1", at + 72_000, dc / efficiency))
        vehicles.append(VehicleEnergy("V1", "M1", at + 45_000, dc, 25.0))
    return windows_from_readings(meters, vehicles, W)


def test_the_line_is_the_rules_verdict_at_every_stop_and_stays_near_the_chargers_efficiency() -> None:
    stores = in_memory_efficiency_stores()
    windows = session_windows(0.9)
    assert isinstance(stores.windows, InMemoryWindowStore)
    stores.windows.replace_windows(W, T0, T0 + 5 * 3_600_000, windows, T0)
    period = queries.Period(T0 + 3_600_000, T0 + 4 * 3_600_000)
    judged = judged_efficiency(stores, "V1", period, W, POLICY)
    assert [stop for stop, _ in judged] == [w.stop_ms for w in windows if period.start_ms < w.stop_ms <= period.end_ms]
    for stop, value in judged:
        assert value == span_verdict("V1", [w for w in windows if w.stop_ms <= stop], stop, W, POLICY).efficiency
    values = [v for _, v in judged if v is not None]
    assert values and all(abs(v - 0.9) < 0.01 for v in values), values
    # the plain trailing ratio over the same stops swings far from 0.9 at the session's edges
    plain = []
    for stop, _ in judged:
        inside = [w for w in windows if stop - POLICY.span_ms < w.stop_ms <= stop]
        ac = sum(w.ac_kwh for w in inside)
        if ac >= POLICY.min_span_energy_kwh:
            plain.append(sum(w.dc_kwh for w in inside) / ac)
    assert max(abs(v - 0.9) for v in plain) > 0.02
