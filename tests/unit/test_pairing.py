"""Pairing: the default rule, explicit pairings beside it, the registry cache, the pairing file."""

from __future__ import annotations

import json

import pytest

from chargewatch.pairing import (
    PairingConflict,
    PairingInterval,
    PairingRegistry,
    PairingRule,
    Pairings,
    read_pairing_file,
)
from chargewatch.stores.memory import InMemoryReadingStore


@pytest.mark.parametrize("vehicle,meter", [
    ("VEHICLE_001", "METER_001"), ("VEHICLE_12345", "METER_12345"), ("EV-101", "MTR-101"),
])
def test_the_default_rule_pairs_ids_that_share_a_number(vehicle, meter) -> None:
    rule = PairingRule()
    assert rule.meter_for(vehicle) == meter
    assert rule.vehicle_for(meter) == vehicle


@pytest.mark.parametrize("device_id", ["VEHICLE_", "VEHICLE_01a", "CAR_001", "EV-1.5", "VEHICLE_\u0661"])
def test_the_default_rule_leaves_other_ids_unpaired(device_id) -> None:
    assert PairingRule().meter_for(device_id) is None


def test_prefixes_are_configurable() -> None:
    rule = PairingRule.from_strings(["BUS/:CHG/"])
    assert rule.meter_for("BUS/7") == "CHG/7"
    assert rule.meter_for("VEHICLE_001") is None


def test_an_explicit_pairing_wins_over_the_rule_in_both_directions() -> None:
    pairings = Pairings({"VEHICLE_001": "METER_009"})
    assert pairings.meter_for("VEHICLE_001") == "METER_009"
    assert pairings.vehicle_for("METER_009") == "VEHICLE_001"
    # The rule must not pair the explicitly taken devices with anyone else.
    assert pairings.vehicle_for("METER_001") is None
    assert pairings.meter_for("VEHICLE_009") is None
    assert pairings.source_of("VEHICLE_001") == "registry"
    assert pairings.source_of("VEHICLE_002") == "rule"
    assert pairings.source_of("CAR") is None


def test_the_registry_reloads_only_when_the_store_version_moves() -> None:
    store = InMemoryReadingStore()
    registry = PairingRegistry(store, PairingRule(), recheck_seconds=0)
    first = registry.current()
    assert registry.current() is first
    store.save_pairings({"VEHICLE_001": "GRID-1"})
    assert registry.current().meter_for("VEHICLE_001") == "GRID-1"


def test_a_pairing_file_is_read_and_checked(tmp_path) -> None:
    path = tmp_path / "pairings.json"
    path.write_text(json.dumps({"VEHICLE_001": "GRID-1", "VEHICLE_002": "GRID-2"}))
    assert read_pairing_file(path) == {"VEHICLE_001": "GRID-1", "VEHICLE_002": "GRID-2"}


@pytest.mark.parametrize("content,message", [
    ('{"VEHICLE_001": "GRID 1"}', "VEHICLE_001"),
    ('["VEHICLE_001"]', "document"),
    ("{", "document"),
])
def test_a_bad_pairing_file_names_the_problem(tmp_path, content, message) -> None:
    path = tmp_path / "pairings.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_pairing_file(path)


def test_a_pairing_file_naming_one_meter_twice_is_a_conflict(tmp_path) -> None:
    path = tmp_path / "pairings.json"
    path.write_text(json.dumps({"VEHICLE_001": "GRID-1", "VEHICLE_002": "GRID-1"}))
    with pytest.raises(PairingConflict, match="GRID-1"):
        read_pairing_file(path)


def test_a_missing_pairing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read pairing file"):
        read_pairing_file(tmp_path / "absent.json")


def test_the_registry_checks_the_store_at_most_once_per_interval() -> None:
    store = InMemoryReadingStore()
    now = [100.0]
    registry = PairingRegistry(store, PairingRule(), recheck_seconds=1.0, clock=lambda: now[0])
    registry.current()
    store.save_pairings({"VEHICLE_001": "GRID-1"})
    assert registry.current().meter_for("VEHICLE_001") == "METER_001"  # not rechecked yet
    now[0] += 1.0
    assert registry.current().meter_for("VEHICLE_001") == "GRID-1"
    store.save_pairings({"VEHICLE_001": "GRID-2"})
    registry.invalidate()
    assert registry.current().meter_for("VEHICLE_001") == "GRID-2"
    # a change through another process (no invalidate here): a fresh read sees it at once
    store.save_pairings({"VEHICLE_001": "GRID-3"})
    assert registry.current().meter_for("VEHICLE_001") == "GRID-2"
    assert registry.current(fresh=True).meter_for("VEHICLE_001") == "GRID-3"


def test_a_reading_is_paired_by_the_pairing_that_held_at_its_timestamp() -> None:
    pairings = Pairings.from_history([
        PairingInterval("VEHICLE_001", "METER_017", 1_000, 2_000),
        PairingInterval("VEHICLE_001", "METER_018", 2_000, None),
        PairingInterval("VEHICLE_002", "METER_001", 1_500, None),
    ], PairingRule())

    assert pairings.explicit == {"VEHICLE_001": "METER_018", "VEHICLE_002": "METER_001"}
    assert pairings.partner_at("vehicle", "VEHICLE_001", 999) == "METER_001"  # the rule, before any entry
    assert pairings.partner_at("meter", "METER_001", 999) == "VEHICLE_001"
    assert pairings.partner_at("vehicle", "VEHICLE_001", 1_000) == "METER_017"
    assert pairings.partner_at("meter", "METER_001", 1_499) is None  # VEHICLE_001 is explicitly elsewhere
    assert pairings.partner_at("meter", "METER_001", 1_500) == "VEHICLE_002"
    assert pairings.partner_at("meter", "METER_017", 1_999) == "VEHICLE_001"
    assert pairings.partner_at("meter", "METER_017", 2_000) == "VEHICLE_017"  # freed: the rule again
    assert pairings.partner_at("vehicle", "VEHICLE_001", 5_000) == "METER_018"
