"""The emulated fleet: reproducible, physically plausible, and honest about what it generated."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from chargewatch.readings import READING, MeterReading, ReadingRules, VehicleReading, to_wire
from simulator.devices import (
    Courier,
    DeliveryFaults,
    Fate,
    Fleet,
    FleetConfig,
    GroundTruth,
    pair_ids,
    simulate,
    stream_deliveries,
    taper_factor,
)

START = datetime(2026, 11, 22, 0, 0, tzinfo=timezone.utc)
DAY = timedelta(hours=24)


@pytest.fixture(scope="module")
def day_of_fleet():
    """24 h of 20 pairs (57,600 readings) with the default delivery faults, shared by the tests below."""
    config = FleetConfig(pairs=20, seed=11, faulty_share=0.2, fault_onset_within=timedelta(hours=12))
    deliveries, truth = simulate(config, DeliveryFaults(), START, START + DAY)
    return deliveries, truth


def _by_pair_and_step(truth: GroundTruth) -> dict[tuple[int, int], dict[str, Any]]:
    steps: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
    for generated in truth.readings:
        steps[(generated.pair, generated.step)][generated.reading.kind] = generated
    return steps


@pytest.fixture(scope="module")
def vehicle_series(day_of_fleet) -> dict[int, list]:
    """Each pair's generated vehicle readings, in step order."""
    grouped: dict[int, list] = defaultdict(list)
    for generated in day_of_fleet[1].readings:
        if isinstance(generated.reading, VehicleReading):
            grouped[generated.pair].append(generated)
    return grouped


def test_pairs_are_numbered_with_three_digits_and_more_beyond_999() -> None:
    assert pair_ids(1) == ("VEHICLE_001", "METER_001")
    assert pair_ids(42) == ("VEHICLE_042", "METER_042")
    assert pair_ids(1000) == ("VEHICLE_1000", "METER_1000")
    fleet = Fleet(FleetConfig(pairs=3, first_pair=998), START)
    assert [p.vehicle_id for p in fleet.profiles] == ["VEHICLE_998", "VEHICLE_999", "VEHICLE_1000"]


def test_the_same_seed_gives_the_same_readings_and_deliveries() -> None:
    config = FleetConfig(pairs=4, seed=3)
    first, _ = simulate(config, DeliveryFaults(), START, START + timedelta(hours=2))
    again, _ = simulate(config, DeliveryFaults(), START, START + timedelta(hours=2))
    other, _ = simulate(FleetConfig(pairs=4, seed=4), DeliveryFaults(), START, START + timedelta(hours=2))

    def wire(deliveries):
        return [(d.due, d.copy, to_wire(d.reading)) for d in deliveries]

    assert wire(first) == wire(again)
    assert wire(first) != wire(other)


def test_a_pair_behaves_the_same_whatever_the_size_of_its_fleet() -> None:
    small = Fleet(FleetConfig(pairs=3, seed=5, faulty_share=0.0), START)
    large = Fleet(FleetConfig(pairs=30, seed=5, faulty_share=0.0), START)
    for _ in range(120):
        small_readings, large_readings = small.tick(), large.tick()
        assert small_readings == large_readings[:6]


def test_meter_energy_is_vehicle_energy_over_the_true_efficiency(day_of_fleet) -> None:
    _, truth = day_of_fleet
    charging_steps = 0
    for pair_step in _by_pair_and_step(truth).values():
        vehicle, meter = pair_step["vehicle"], pair_step["meter"]
        dc, ac = vehicle.reading.kwh_delivered_dc, meter.reading.kwh_consumed_ac
        assert vehicle.efficiency == meter.efficiency
        if dc == 0:
            assert ac == 0
        else:
            charging_steps += 1
            assert math.isclose(dc / ac, vehicle.efficiency, rel_tol=1e-12)
    assert charging_steps > 1000


def test_faulty_chargers_fall_below_85_percent_from_their_onset(day_of_fleet) -> None:
    _, truth = day_of_fleet
    profiles = {p.number: p for p in truth.fleet.profiles}
    assert sum(p.is_faulty for p in profiles.values()) == 4  # exactly 20 % of 20 pairs
    for generated in truth.readings:
        profile = profiles[generated.pair]
        if profile.is_faulty and generated.step_time >= profile.fault_onset:
            assert 0.75 <= generated.efficiency <= 0.82
        else:
            assert 0.88 <= generated.efficiency <= 0.95
    for profile in profiles.values():
        if profile.is_faulty:
            assert START <= profile.fault_onset < START + timedelta(hours=12)


def test_a_session_raises_soc_until_its_target_tapering_above_80_percent(day_of_fleet, vehicle_series) -> None:
    _, truth = day_of_fleet
    taper_seen = 0
    for pair in range(1, 21):
        profile = truth.fleet.pairs[pair - 1].profile
        full_power_kwh = profile.charger_power_kw / 60
        previous = None
        for generated in vehicle_series[pair]:
            reading = generated.reading
            assert 0 <= reading.soc <= 100
            if generated.is_charging:
                assert reading.kwh_delivered_dc <= full_power_kwh + 1e-6
                if previous is not None and previous.soc >= 85:
                    # Tapered: well below rated power once the battery is past 85 %.
                    assert reading.kwh_delivered_dc <= full_power_kwh * taper_factor(85) + 1e-6
                    taper_seen += 1
                if previous is not None:
                    assert reading.soc >= previous.soc
            previous = reading
    assert taper_seen > 100
    assert taper_factor(50) == 1.0 and taper_factor(80) == 1.0
    assert taper_factor(90) == pytest.approx(0.55) and taper_factor(100) == pytest.approx(0.1)


def test_between_sessions_both_devices_report_zero_energy_and_soc_falls(day_of_fleet, vehicle_series) -> None:
    _, truth = day_of_fleet
    idle_steps = 0
    for pair_step in _by_pair_and_step(truth).values():
        vehicle, meter = pair_step["vehicle"], pair_step["meter"]
        if not vehicle.is_charging:
            idle_steps += 1
            assert vehicle.reading.kwh_delivered_dc == 0.0
            assert meter.reading.kwh_consumed_ac == 0.0
            assert 200 <= meter.reading.voltage <= 420  # a meter keeps reporting while idle
    assert idle_steps > 1000
    for pair in range(1, 21):
        series = vehicle_series[pair]
        for before, after in zip(series, series[1:], strict=False):
            if not before.is_charging and not after.is_charging:
                assert after.reading.soc <= before.reading.soc


def test_every_pair_plugs_in_and_unplugs_during_a_day(day_of_fleet, vehicle_series) -> None:
    _, truth = day_of_fleet
    for pair in range(1, 21):
        states = [g.is_charging for g in vehicle_series[pair]]
        plug_ins = sum(1 for a, b in zip(states, states[1:], strict=False) if not a and b)
        assert plug_ins >= 1
        assert not all(states)


def test_the_battery_warms_while_charging_and_cools_when_idle(day_of_fleet, vehicle_series) -> None:
    _, truth = day_of_fleet
    warmer = 0
    for pair in range(1, 21):
        profile = truth.fleet.pairs[pair - 1].profile
        series = vehicle_series[pair]
        charging = [g.reading.battery_temp for g in series if g.is_charging]
        idle = [g.reading.battery_temp for g in series if not g.is_charging]
        if charging and idle:
            warmer += sum(charging) / len(charging) > sum(idle) / len(idle)
        assert min(g.reading.battery_temp for g in series) >= profile.ambient_temp_c - 0.1
    assert warmer >= 18


def test_device_clocks_stay_within_30_seconds_of_true_time(day_of_fleet) -> None:
    _, truth = day_of_fleet
    profiles = {p.number: p for p in truth.fleet.profiles}
    last_seen: dict[str, datetime] = {}
    offsets = []
    for generated in truth.readings:
        reading = generated.reading
        true_time = generated.step_time + profiles[generated.pair].phase
        offset = reading.timestamp - true_time
        offsets.append(offset)
        assert abs(offset) <= timedelta(seconds=30)
        assert reading.timestamp.microsecond % 1000 == 0  # chargewatch stores milliseconds
        previous = last_seen.get(reading.device_id)
        assert previous is None or reading.timestamp > previous
        last_seen[reading.device_id] = reading.timestamp
    assert max(offsets) > timedelta(seconds=10) and min(offsets) < timedelta(seconds=-10)


def test_delivery_faults_occur_at_their_configured_rates(day_of_fleet) -> None:
    deliveries, truth = day_of_fleet
    fates = Counter(truth.fates.values())
    total = len(truth.readings)
    assert total == 57_600
    # Five standard deviations of a binomial count: this fails only if the rates are wrong.
    for fate, rate in ((Fate.LOST, 0.02), (Fate.DUPLICATED, 0.01), (Fate.LATE, 0.01)):
        assert abs(fates[fate] - rate * total) <= 5 * math.sqrt(total * rate * (1 - rate)), fate
    assert len(deliveries) == total - fates[Fate.LOST] + fates[Fate.DUPLICATED]


def test_deliveries_come_in_send_order_with_late_ones_after_newer_readings(day_of_fleet) -> None:
    deliveries, truth = day_of_fleet
    assert [d.due for d in deliveries] == sorted(d.due for d in deliveries)
    position: dict[tuple[str, int], int] = {}
    for index, delivery in enumerate(deliveries):
        position.setdefault((delivery.reading.device_id, delivery.generated.step), index)
    late = [d for d in deliveries if d.fate is Fate.LATE]
    assert late
    overtaken = 0
    for delivery in late:
        assert timedelta(seconds=60) <= delivery.due - delivery.generated.send_time <= timedelta(minutes=10, seconds=2)
        newer = position.get((delivery.reading.device_id, delivery.generated.step + 1))
        overtaken += newer is not None and newer < position[(delivery.reading.device_id, delivery.generated.step)]
    assert overtaken >= 0.9 * len(late)  # the next reading was usually sent (not lost) and went first


def test_a_duplicated_reading_is_sent_twice_identically(day_of_fleet) -> None:
    deliveries, _ = day_of_fleet
    copies: dict[tuple[str, int], list] = defaultdict(list)
    for delivery in deliveries:
        if delivery.fate is Fate.DUPLICATED:
            copies[delivery.generated.key].append(delivery)
    assert copies
    for first, second in copies.values():
        assert (first.copy, second.copy) == (0, 1)
        assert first.reading == second.reading
        assert timedelta(seconds=1) <= second.due - first.due <= timedelta(seconds=30)


def test_ground_truth_totals_are_the_sums_of_the_readings(day_of_fleet) -> None:
    _, truth = day_of_fleet
    generated: dict[str, list[float]] = defaultdict(list)
    delivered: dict[str, list[float]] = defaultdict(list)
    for item in truth.readings:
        reading = item.reading
        energy = reading.kwh_consumed_ac if isinstance(reading, MeterReading) else reading.kwh_delivered_dc
        generated[reading.device_id].append(energy)
        if truth.fates[item.key] is not Fate.LOST:
            delivered[reading.device_id].append(energy)
    report = truth.to_json()
    assert len(report["vehicles"]) == 20
    for vehicle in report["vehicles"]:
        for kind, device in (("vehicle", vehicle["vehicleId"]), ("meter", vehicle["meterId"])):
            tally = vehicle[kind]
            assert tally["generatedReadings"] == len(generated[device]) == 1440
            assert tally["deliveredReadings"] == len(delivered[device])
            assert tally["deliveredKwh"] == pytest.approx(math.fsum(delivered[device]), rel=1e-15, abs=1e-15)
            assert tally["generatedKwh"] == pytest.approx(math.fsum(generated[device]), rel=1e-15, abs=1e-15)
        if vehicle["faulty"]:
            assert vehicle["trueEfficiency"] == vehicle["faultyEfficiency"] < 0.85
            assert vehicle["faultOnset"].endswith("Z")
        else:
            assert vehicle["trueEfficiency"] == vehicle["healthyEfficiency"] >= 0.88
    assert report["totals"]["vehicle"]["generatedReadings"] == 20 * 1440
    assert report["start"] == "2026-11-22T00:00:00Z" and report["end"] == "2026-11-23T00:00:00Z"


def test_every_reading_survives_the_wire_and_passes_ingest_validation(day_of_fleet) -> None:
    _, truth = day_of_fleet
    rules = ReadingRules(now=START + DAY + timedelta(minutes=2))
    for generated in truth.readings[::7]:
        wire = to_wire(generated.reading)
        assert ("meterId" in wire) != ("vehicleId" in wire)
        assert READING.validate_python(wire, context=rules.context()) == generated.reading


def test_streaming_a_fleet_keeps_only_minutes_of_deliveries_in_memory() -> None:
    fleet = Fleet(FleetConfig(pairs=2, seed=1), START)
    stream = stream_deliveries(fleet, Courier(DeliveryFaults(late_rate=0.5), seed=1), START + DAY)
    first = next(stream)
    assert first.due < START + timedelta(minutes=2)
    assert fleet.step <= 2  # generated just enough to know nothing is due earlier


def test_without_faults_every_reading_is_delivered_once() -> None:
    deliveries, truth = simulate(FleetConfig(pairs=3), DeliveryFaults.none(), START, START + timedelta(hours=1))
    assert sorted(d.generated.key for d in deliveries) == sorted(g.key for g in truth.readings)
    assert len(deliveries) == 3 * 2 * 60


@pytest.mark.parametrize("kwargs", [{"faulty_share": 1.5}, {"healthy_efficiency": (0.9, 1.2)}, {"pairs": -1}])
def test_impossible_fleets_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        FleetConfig(**kwargs)


def test_fault_rates_adding_up_to_more_than_one_are_refused() -> None:
    with pytest.raises(ValueError):
        DeliveryFaults(loss_rate=0.6, duplicate_rate=0.5)


def test_a_naive_start_time_is_refused() -> None:
    with pytest.raises(ValueError):
        Fleet(FleetConfig(), datetime(2026, 1, 1))
