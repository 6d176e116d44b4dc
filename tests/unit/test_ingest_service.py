"""The ingest use cases (ingest/service.py) on the in-memory store: what is stored, what is counted."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from chargewatch.pairing import PairingInterval, PairingRule, Pairings
from chargewatch.readings import MeterReading, ReadingRules, to_wire, validate_batch
from chargewatch.stores.memory import InMemoryReadingStore
from ingest.service import ingest_readings, readings_from_line_protocol

RECEIVED_MS = 1_795_420_000_000
RULE = PairingRule()
BY_RULE = Pairings({}, RULE)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture
def store() -> InMemoryReadingStore:
    return InMemoryReadingStore()


@pytest.fixture
def rules(reading_time: datetime) -> ReadingRules:
    return ReadingRules(now=reading_time + timedelta(minutes=1))


def test_valid_readings_are_stored_with_the_partner_of_the_default_rule(store, make_meter, make_vehicle) -> None:
    meter, vehicle = make_meter(), make_vehicle()
    result = ingest_readings([meter, vehicle], store, BY_RULE, RECEIVED_MS)

    assert (result.accepted, result.stored, result.duplicates, result.conflicts, result.unpaired) == (2, 2, 0, 0, 0)
    assert result.accepted_by_kind == {"meter": 1, "vehicle": 1}
    [stored_meter] = store.history("meter", "METER_001", meter.time_ms, meter.time_ms + 1)
    assert (stored_meter.vehicle_id, stored_meter.values) == ("VEHICLE_001", {"kwhConsumedAc": 1.25, "voltage": 400.0})
    state = store.current("vehicle", "VEHICLE_001")
    assert state is not None
    assert (state.meter_id, state.received_ms, state.values["kwhDeliveredDc"]) == ("METER_001", RECEIVED_MS, 1.1)


def test_a_resent_reading_is_counted_as_a_duplicate_and_stored_once(store, make_meter) -> None:
    meter = make_meter()
    ingest_readings([meter], store, BY_RULE, RECEIVED_MS)
    again = ingest_readings([meter], store, BY_RULE, RECEIVED_MS + 60_000)

    assert (again.accepted, again.stored, again.duplicates, again.conflicts) == (1, 0, 1, 0)
    [stored] = store.history("meter", "METER_001", 0, meter.time_ms + 1)
    assert stored.received_ms == RECEIVED_MS  # the first copy, not the retry


def test_other_values_at_a_stored_timestamp_are_a_conflict_and_the_first_values_stay(store, make_meter) -> None:
    first = make_meter(kwh_consumed_ac=1.25)
    ingest_readings([first], store, BY_RULE, RECEIVED_MS)
    result = ingest_readings([make_meter(kwh_consumed_ac=2.5)], store, BY_RULE, RECEIVED_MS)

    assert (result.stored, result.duplicates, result.conflicts) == (0, 0, 1)
    [stored] = store.history("meter", "METER_001", 0, first.time_ms + 1)
    assert stored.values["kwhConsumedAc"] == 1.25


def test_one_batch_counts_new_duplicate_and_conflicting_readings_apart(store, make_meter, reading_time) -> None:
    ingest_readings([make_meter(kwh_consumed_ac=1.0)], store, BY_RULE, RECEIVED_MS)
    batch = [make_meter(kwh_consumed_ac=1.0), make_meter(kwh_consumed_ac=3.0),
             make_meter(timestamp=reading_time + timedelta(minutes=1))]
    result = ingest_readings(batch, store, BY_RULE, RECEIVED_MS)

    assert (result.accepted, result.stored, result.duplicates, result.conflicts) == (3, 1, 1, 1)
    assert len(store.history("meter", "METER_001", 0, _ms(reading_time + timedelta(hours=1)))) == 2


def test_a_reading_without_a_partner_is_stored_and_counted_unpaired(store, make_vehicle, make_meter) -> None:
    result = ingest_readings([make_vehicle(vehicle_id="TRUCK_7"), make_meter()], store, BY_RULE, RECEIVED_MS)

    assert (result.stored, result.unpaired, result.unpaired_by_kind) == (2, 1, {"vehicle": 1})
    state = store.current("vehicle", "TRUCK_7")
    assert state is not None and state.meter_id is None
    assert [s.device_id for s in store.list_current(unpaired_only=True)] == ["TRUCK_7"]


def test_each_reading_gets_the_pairing_that_held_at_its_own_timestamp(store, make_meter, reading_time) -> None:
    # METER_007 is VEHICLE_001's charger from reading_time on; before, the default rule paired METER_001.
    switched_ms = _ms(reading_time)
    pairings = Pairings.from_history([PairingInterval("VEHICLE_001", "METER_007", switched_ms, None)], RULE)
    before = make_meter(meter_id="METER_001", timestamp=reading_time - timedelta(minutes=1))
    after_old = make_meter(meter_id="METER_001")
    after_new = make_meter(meter_id="METER_007")
    result = ingest_readings([after_new, before, after_old], store, pairings, RECEIVED_MS)

    partners = {(h.device_id, h.time_ms): h.vehicle_id
                for meter_id in ("METER_001", "METER_007")
                for h in store.history("meter", meter_id, 0, switched_ms + 1)}
    assert partners == {("METER_001", before.time_ms): "VEHICLE_001", ("METER_001", after_old.time_ms): None,
                        ("METER_007", after_new.time_ms): "VEHICLE_001"}
    assert result.unpaired == 1


def test_the_rejected_items_of_a_batch_store_nothing(store, make_meter, make_vehicle, rules) -> None:
    good = to_wire(make_meter())
    bad = {**to_wire(make_vehicle()), "soc": 140}
    batch = validate_batch(orjson.dumps([good, bad]), rules)
    result = ingest_readings(batch.readings, store, BY_RULE, RECEIVED_MS)

    assert [r.index for r in batch.rejections] == [1]
    assert (result.accepted, result.stored) == (1, 1)
    assert store.current("vehicle", "VEHICLE_001") is None
    assert [s.device_id for s in store.list_current()] == ["METER_001"]


def test_line_protocol_lines_are_stored_and_each_bad_line_is_rejected_alone(store, reading_time, rules) -> None:
    ns = _ms(reading_time) * 1_000_000
    body = "\n".join([
        f"meter,meter_id=METER_001 kwh_consumed_ac=1.2,voltage=231 {ns}",
        f"weather,site=depot temperature=4 {ns}",
        f"meter,meter_id=METER_002 voltage=230 {ns}",
        f"vehicle,vehicle_id=VEHICLE_001,host=gw1 soc=55,kwh_delivered_dc=1.0,battery_temp=20 {ns}",
        "meter,meter_id=METER_003 kwh_consumed_ac=",
    ])
    readings, rejections = readings_from_line_protocol(body, "ns", rules)
    result = ingest_readings(readings, store, BY_RULE, RECEIVED_MS)

    assert [(r.line, r.errors[0].type) for r in rejections] == [
        (2, "unknown_measurement"), (3, "missing"), (5, "line_protocol_syntax")]
    assert rejections[1].errors[0].field == "kwh_consumed_ac"  # named as in line protocol, not JSON
    assert (result.accepted, result.stored, result.unpaired) == (2, 2, 0)
    assert sorted(s.device_id for s in store.list_current()) == ["METER_001", "VEHICLE_001"]
    state = store.current("meter", "METER_001")
    assert state is not None and (state.time_ms, state.vehicle_id) == (_ms(reading_time), "VEHICLE_001")


def test_a_pairing_tag_in_line_protocol_is_ignored_for_the_registry_s_pairing(store, reading_time, rules) -> None:
    seconds = int(reading_time.timestamp())
    body = f"meter,meter_id=METER_001,vehicle_id=VEHICLE_999 kwh_consumed_ac=1.2,voltage=231 {seconds}"
    readings, rejections = readings_from_line_protocol(body, "s", rules)
    ingest_readings(readings, store, BY_RULE, RECEIVED_MS)

    assert rejections == []
    state = store.current("meter", "METER_001")
    assert state is not None and (state.time_ms, state.vehicle_id) == (_ms(reading_time), "VEHICLE_001")


def test_fields_the_models_do_not_take_are_ignored_even_when_named_like_a_reading_s_attributes(
        reading_time, rules) -> None:
    ns = _ms(reading_time) * 1_000_000
    extras = 'meter_id="METER_999",timestamp="2026-01-01T00:00:00Z",kwhConsumedAc=9.0,phase=1i'
    body = "\n".join([
        f"meter,meter_id=METER_001 kwh_consumed_ac=1.2,voltage=231,{extras} {ns}",
        f"meter,meter_id=METER_002 kwh_consumed_ac=1.3,voltage=232,{extras}",
        f'meter kwh_consumed_ac=1.4,voltage=233,meter_id="METER_003" {ns}',
    ])
    readings, rejections = readings_from_line_protocol(body, "ns", rules)

    meters = [r for r in readings if isinstance(r, MeterReading)]
    assert len(meters) == len(readings)
    assert [(r.meter_id, r.kwh_consumed_ac, r.voltage, r.timestamp) for r in meters] == [
        ("METER_001", 1.2, 231, reading_time), ("METER_002", 1.3, 232, rules.now)]
    assert [(r.line, [(e.field, e.type) for e in r.errors]) for r in rejections] == [(3, [("meter_id", "string_type")])]


def test_a_line_without_a_timestamp_takes_the_receive_time(store, rules) -> None:
    readings, _ = readings_from_line_protocol("vehicle,vehicle_id=VEHICLE_001 soc=50,kwh_delivered_dc=0.5,"
                                              "battery_temp=20", "ns", rules)
    ingest_readings(readings, store, BY_RULE, RECEIVED_MS)

    state = store.current("vehicle", "VEHICLE_001")
    assert state is not None and state.time_ms == _ms(rules.now.astimezone(timezone.utc))
