"""One contract suite for every ReadingStore adapter, so the in-memory fake is proven to behave like
the real store (docs/architecture.md "Stores: the ports and their adapters")."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import pytest

from chargewatch.pairing import PairingConflict, PairingRegistry, PairingRule
from chargewatch.stores import WriteResult
from chargewatch.stores.influx import InfluxReadingStore
from chargewatch.stores.memory import InMemoryReadingStore
from chargewatch.stores.sqlite import SqliteReadingStore

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MIDNIGHT = datetime(2026, 11, 23, tzinfo=timezone.utc)


def ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


@pytest.fixture(params=["sqlite", "influx", "memory"])
def store(request, tmp_path):
    if request.param == "sqlite":
        store = SqliteReadingStore(tmp_path / "chargewatch.db")
    elif request.param == "influx":
        store = InfluxReadingStore(tmp_path / "chargewatch.db")
    else:
        store = InMemoryReadingStore()
    yield store
    store.close()


# -- write and duplicates ------------------------------------------------------------------------


def test_write_reports_how_many_readings_were_stored_and_how_many_were_duplicates(
    store, make_meter, make_vehicle, paired, reading_time
):
    first = [paired(make_meter()), paired(make_vehicle())]
    assert store.write(first) == WriteResult(stored=2, duplicates=0)

    later = paired(make_meter(timestamp=reading_time + minutes(1)))
    assert store.write([*first, later]) == WriteResult(stored=1, duplicates=2)


def test_writing_no_readings_stores_nothing(store):
    assert store.write([]) == WriteResult(stored=0, duplicates=0)
    assert store.list_current() == []


def test_a_resent_reading_is_never_stored_twice_and_the_first_copy_is_kept(
    store, make_meter, paired, reading_time
):
    store.write([paired(make_meter(kwh_consumed_ac=1.0))])

    resent = store.write([paired(make_meter(kwh_consumed_ac=1.0))])

    assert resent == WriteResult(stored=0, duplicates=1, conflicts=0)
    [kept] = store.history("meter", "METER_001", ms(reading_time), ms(reading_time) + 1)
    assert kept.values == {"kwhConsumedAc": 1.0, "voltage": 400.0}


def test_a_copy_with_other_values_is_a_conflict_not_a_duplicate_and_the_first_copy_is_kept(
    store, make_meter, paired, reading_time
):
    store.write([paired(make_meter(kwh_consumed_ac=1.0))])

    resent = store.write([paired(make_meter(kwh_consumed_ac=9.0, voltage=230.0)),
                          paired(make_meter(kwh_consumed_ac=1.0)),
                          paired(make_meter(kwh_consumed_ac=1.0, voltage=230.0))])

    assert resent == WriteResult(stored=0, duplicates=1, conflicts=2)
    [kept] = store.history("meter", "METER_001", ms(reading_time), ms(reading_time) + 1)
    assert kept.values == {"kwhConsumedAc": 1.0, "voltage": 400.0}
    assert store.current("meter", "METER_001").values == {"kwhConsumedAc": 1.0, "voltage": 400.0}


def test_copies_of_one_reading_within_a_batch_are_stored_once_keeping_the_first(
    store, make_vehicle, paired, reading_time
):
    batch = [paired(make_vehicle(soc=10.0)), paired(make_vehicle(soc=20.0)), paired(make_vehicle(soc=10.0))]

    assert store.write(batch) == WriteResult(stored=1, duplicates=1, conflicts=1)
    [kept] = store.history("vehicle", "VEHICLE_001", ms(reading_time), ms(reading_time) + 1)
    assert kept.values["soc"] == 10.0
    assert store.current("vehicle", "VEHICLE_001").values["soc"] == 10.0


def test_identity_is_kind_device_and_timestamp_so_equal_ids_of_two_kinds_are_both_stored(
    store, make_meter, make_vehicle, paired
):
    batch = [paired(make_meter(meter_id="DEV-7")), paired(make_vehicle(vehicle_id="DEV-7"))]

    assert store.write(batch) == WriteResult(stored=2, duplicates=0)
    assert store.current("meter", "DEV-7").kind == "meter"
    assert store.current("vehicle", "DEV-7").kind == "vehicle"


def test_readings_one_millisecond_apart_are_different_readings(store, make_meter, paired, reading_time):
    batch = [paired(make_meter()), paired(make_meter(timestamp=reading_time + timedelta(milliseconds=1)))]

    assert store.write(batch) == WriteResult(stored=2, duplicates=0)


# -- the last-value cache ------------------------------------------------------------------------


def test_current_state_is_the_newest_reading_by_device_time_whatever_the_arrival_order(
    store, make_meter, paired, reading_time
):
    arrivals = [2, 0, 3, 1]  # minutes after reading_time, in arrival order
    for n in arrivals:
        store.write([paired(make_meter(timestamp=reading_time - minutes(5 - n), voltage=400.0 + n))])

    newest = store.current("meter", "METER_001")
    assert newest.time_ms == ms(reading_time - minutes(2))
    assert newest.values["voltage"] == 403.0


def test_a_late_older_reading_does_not_replace_the_current_state(store, make_vehicle, paired, reading_time):
    store.write([paired(make_vehicle(soc=80.0), meter_id="METER_001", received_ms=1000)])

    store.write([paired(make_vehicle(timestamp=reading_time - minutes(10), soc=40.0), received_ms=2000)])

    current = store.current("vehicle", "VEHICLE_001")
    assert (current.time_ms, current.received_ms, current.values["soc"]) == (ms(reading_time), 1000, 80.0)
    assert current.meter_id == "METER_001"


def test_within_one_batch_the_newest_reading_wins_and_a_tie_keeps_the_first(
    store, make_meter, paired, reading_time
):
    batch = [
        paired(make_meter(timestamp=reading_time - minutes(1), voltage=100.0)),
        paired(make_meter(voltage=200.0)),
        paired(make_meter(voltage=300.0)),
        paired(make_meter(timestamp=reading_time - minutes(2), voltage=400.0)),
    ]
    store.write(batch)

    assert store.current("meter", "METER_001").values["voltage"] == 200.0


def test_current_state_carries_the_values_and_pairing_written_with_the_reading(
    store, make_meter, make_vehicle, paired, reading_time
):
    store.write([
        paired(make_meter(kwh_consumed_ac=2.5, voltage=230.0), vehicle_id="VEHICLE_001", received_ms=42),
        paired(make_vehicle(soc=61.0, kwh_delivered_dc=2.2, battery_temp=31.0), meter_id="METER_001"),
    ])

    meter = store.current("meter", "METER_001")
    assert (meter.kind, meter.device_id, meter.time_ms, meter.received_ms) == (
        "meter", "METER_001", ms(reading_time), 42
    )
    assert (meter.vehicle_id, meter.meter_id) == ("VEHICLE_001", "METER_001")
    assert meter.values == {"kwhConsumedAc": 2.5, "voltage": 230.0}
    vehicle = store.current("vehicle", "VEHICLE_001")
    assert (vehicle.vehicle_id, vehicle.meter_id) == ("VEHICLE_001", "METER_001")
    assert vehicle.values == {"soc": 61.0, "kwhDeliveredDc": 2.2, "batteryTemp": 31.0}


def test_current_is_none_for_a_device_never_seen_or_of_another_kind(store, make_meter, paired):
    store.write([paired(make_meter())])

    assert store.current("meter", "METER_002") is None
    assert store.current("vehicle", "METER_001") is None


# -- listing the fleet ---------------------------------------------------------------------------


def _fleet(make_meter, make_vehicle, paired):
    """Five meters and five vehicles, written in shuffled order; odd numbers unpaired."""
    readings = []
    for n in range(1, 6):
        partner_meter, partner_vehicle = (None, None) if n % 2 else (f"METER_00{n}", f"VEHICLE_00{n}")
        readings.append(paired(make_meter(meter_id=f"METER_00{n}"), vehicle_id=partner_vehicle))
        readings.append(paired(make_vehicle(vehicle_id=f"VEHICLE_00{n}"), meter_id=partner_meter))
    random.Random(7).shuffle(readings)
    return readings


def keys(entries):
    return [(entry.kind, entry.device_id) for entry in entries]


def test_list_current_orders_devices_by_kind_then_id(store, make_meter, make_vehicle, paired):
    for reading in _fleet(make_meter, make_vehicle, paired):
        store.write([reading])

    listed = keys(store.list_current())

    assert listed == [("meter", f"METER_00{n}") for n in range(1, 6)] + [
        ("vehicle", f"VEHICLE_00{n}") for n in range(1, 6)
    ]


def test_list_current_filters_by_kind(store, make_meter, make_vehicle, paired):
    store.write(_fleet(make_meter, make_vehicle, paired))

    assert keys(store.list_current(kind="vehicle")) == [("vehicle", f"VEHICLE_00{n}") for n in range(1, 6)]
    assert {entry.kind for entry in store.list_current(kind="meter")} == {"meter"}


@pytest.mark.parametrize("kind", [None, "meter", "vehicle"])
@pytest.mark.parametrize("limit", [1, 3, 4, 10])
def test_keyset_pages_walk_every_device_once_without_gaps(store, make_meter, make_vehicle, paired, kind, limit):
    store.write(_fleet(make_meter, make_vehicle, paired))
    everything = keys(store.list_current(kind=kind, limit=1000))

    walked, after = [], None
    for _ in range(len(everything) + 1):  # bounded, so a key that fails to advance fails the test
        page = store.list_current(kind=kind, after=after, limit=limit)
        if not page:
            break
        assert len(page) <= limit
        walked.extend(keys(page))
        after = walked[-1]

    assert walked == everything
    assert len(set(walked)) == len(walked)


def test_after_key_is_exclusive_and_may_name_a_device_that_does_not_exist(
    store, make_meter, make_vehicle, paired
):
    store.write(_fleet(make_meter, make_vehicle, paired))

    assert keys(store.list_current(after=("meter", "METER_003"), limit=2)) == [
        ("meter", "METER_004"), ("meter", "METER_005")
    ]
    assert keys(store.list_current(after=("meter", "METER_0031"), limit=1)) == [("meter", "METER_004")]
    assert keys(store.list_current(after=("meter", "~"), limit=1)) == [("vehicle", "VEHICLE_001")]


def test_unpaired_only_lists_meters_without_a_vehicle_and_vehicles_without_a_meter(
    store, make_meter, make_vehicle, paired
):
    store.write(_fleet(make_meter, make_vehicle, paired))

    unpaired = keys(store.list_current(unpaired_only=True))

    assert unpaired == [("meter", "METER_001"), ("meter", "METER_003"), ("meter", "METER_005"),
                        ("vehicle", "VEHICLE_001"), ("vehicle", "VEHICLE_003"), ("vehicle", "VEHICLE_005")]
    assert keys(store.list_current(kind="vehicle", after=("vehicle", "VEHICLE_001"), limit=1,
                                   unpaired_only=True)) == [("vehicle", "VEHICLE_003")]


def test_unpaired_only_follows_the_pairing_of_the_newest_reading(store, make_meter, paired, reading_time):
    store.write([paired(make_meter(timestamp=reading_time - minutes(1)))])
    store.write([paired(make_meter(), vehicle_id="VEHICLE_001")])

    assert store.list_current(unpaired_only=True) == []


# -- history -------------------------------------------------------------------------------------


def test_history_is_half_open_and_ordered_by_time(store, make_meter, paired, reading_time):
    times = [reading_time - minutes(n) for n in (1, 4, 0, 3, 2)]
    store.write([paired(make_meter(timestamp=t)) for t in times])

    got = store.history("meter", "METER_001", ms(reading_time - minutes(3)), ms(reading_time))

    assert [entry.time_ms for entry in got] == [ms(reading_time - minutes(n)) for n in (3, 2, 1)]


def test_history_returns_only_the_asked_device_and_kind(store, make_meter, make_vehicle, paired, reading_time):
    store.write([
        paired(make_meter(meter_id="METER_001", voltage=401.0)),
        paired(make_meter(meter_id="METER_002", voltage=402.0)),
        paired(make_vehicle(vehicle_id="METER_001")),
    ])

    got = store.history("meter", "METER_001", ms(reading_time), ms(reading_time) + 1)

    assert [(entry.kind, entry.device_id, entry.values["voltage"]) for entry in got] == [
        ("meter", "METER_001", 401.0)
    ]


def test_history_keeps_the_pairing_that_held_when_each_reading_arrived(
    store, make_vehicle, paired, reading_time
):
    store.write([paired(make_vehicle(timestamp=reading_time - minutes(1)), meter_id="METER_001", received_ms=5)])
    store.write([paired(make_vehicle(), meter_id="METER_009", received_ms=6)])

    got = store.history("vehicle", "VEHICLE_001", ms(reading_time - minutes(1)), ms(reading_time) + 1)

    assert [(entry.vehicle_id, entry.meter_id, entry.received_ms) for entry in got] == [
        ("VEHICLE_001", "METER_001", 5), ("VEHICLE_001", "METER_009", 6)
    ]


def test_an_empty_or_reversed_range_has_no_history(store, make_meter, paired, reading_time):
    store.write([paired(make_meter())])

    assert store.history("meter", "METER_001", ms(reading_time), ms(reading_time)) == []
    assert store.history("meter", "METER_001", ms(reading_time) + 1, ms(reading_time)) == []
    assert store.history("meter", "METER_002", 0, ms(reading_time) + 1) == []


def test_history_spans_a_utc_day_boundary_in_time_order(store, make_vehicle, paired):
    offsets_ms = [60_000, -1, 0, -60_000, 1]  # around midnight, shuffled
    store.write([paired(make_vehicle(timestamp=MIDNIGHT + timedelta(milliseconds=n))) for n in offsets_ms])
    midnight = ms(MIDNIGHT)

    def times(start_ms, end_ms):
        return [entry.time_ms - midnight for entry in store.history("vehicle", "VEHICLE_001", start_ms, end_ms)]

    assert times(midnight - 3_600_000, midnight + 3_600_000) == [-60_000, -1, 0, 1, 60_000]
    assert times(midnight - 60_000, midnight) == [-60_000, -1]
    assert times(midnight, midnight + 60_000) == [0, 1]
    assert times(midnight - 1, midnight + 1) == [-1, 0]


# -- retention -----------------------------------------------------------------------------------


def test_drop_expired_drops_only_whole_days_before_the_retention_cutoff(
    store, make_meter, make_vehicle, paired, reading_time
):
    # reading_time is 2026-11-23T06:00Z; with 2 days of retention the cutoff day is 2026-11-21.
    just_expired = datetime(2026, 11, 20, 23, 59, 59, 999_000, tzinfo=timezone.utc)
    older_than_retention_but_day_not_whole = datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc)
    store.write([
        paired(make_meter(timestamp=datetime(2026, 11, 19, 12, 0, tzinfo=timezone.utc))),
        paired(make_meter(timestamp=just_expired)),
        paired(make_meter(timestamp=older_than_retention_but_day_not_whole)),
        paired(make_meter(timestamp=reading_time)),
        paired(make_vehicle(vehicle_id="VEHICLE_OLD", timestamp=just_expired)),
        paired(make_vehicle(timestamp=MIDNIGHT)),
    ])

    dropped = store.drop_expired(reading_time, retention_days=2)

    assert dropped == ["meter_20261119", "meter_20261120", "vehicle_20261120"]
    assert [entry.time_ms for entry in store.history("meter", "METER_001", 0, ms(reading_time) + 1)] == [
        ms(older_than_retention_but_day_not_whole), ms(reading_time)
    ]
    assert store.history("vehicle", "VEHICLE_OLD", 0, ms(reading_time)) == []
    assert len(store.history("vehicle", "VEHICLE_001", 0, ms(reading_time))) == 1
    assert store.drop_expired(reading_time, retention_days=2) == []


def test_drop_expired_keeps_the_current_state_of_devices_whose_days_were_dropped(
    store, make_meter, paired, reading_time
):
    old = reading_time - timedelta(days=5)
    store.write([paired(make_meter(timestamp=old), vehicle_id="VEHICLE_001")])

    store.drop_expired(reading_time, retention_days=1)

    assert store.history("meter", "METER_001", 0, ms(reading_time)) == []
    current = store.current("meter", "METER_001")
    assert (current.time_ms, current.vehicle_id) == (ms(old), "VEHICLE_001")


def test_a_dropped_day_can_be_written_again(store, make_meter, paired, reading_time):
    old = paired(make_meter(timestamp=reading_time - timedelta(days=5)))
    store.write([old])
    store.drop_expired(reading_time, retention_days=1)

    assert store.write([old]) == WriteResult(stored=1, duplicates=0)
    assert len(store.history("meter", "METER_001", 0, ms(reading_time))) == 1


# -- pairings ------------------------------------------------------------------------------------


def test_a_new_store_has_no_pairings(store):
    assert store.load_pairings() == {}


def test_saved_pairings_are_merged_and_each_save_changes_the_version(store):
    v0 = store.pairings_version()
    store.save_pairings({"VEHICLE_001": "METER_017", "VEHICLE_002": "METER_018"})
    v1 = store.pairings_version()
    store.save_pairings({"VEHICLE_003": "METER_019", "VEHICLE_001": "METER_020"})

    assert store.load_pairings() == {"VEHICLE_001": "METER_020", "VEHICLE_002": "METER_018",
                                     "VEHICLE_003": "METER_019"}
    assert len({v0, v1, store.pairings_version()}) == 3


def test_pairing_history_ends_an_interval_only_when_a_pairing_changes(store):
    store.save_pairings({"VEHICLE_001": "METER_017", "VEHICLE_002": "METER_018"})
    store.save_pairings({"VEHICLE_001": "METER_017"})  # saving what holds changes nothing
    time.sleep(0.002)
    store.save_pairings({"VEHICLE_001": "METER_020"})
    time.sleep(0.002)
    store.delete_pairing("VEHICLE_002")

    history = store.load_pairing_history()
    by_vehicle = {v: [(m, start, stop) for vehicle, m, start, stop in history if vehicle == v]
                  for v in ("VEHICLE_001", "VEHICLE_002")}
    [(m17, first, changed), (m20, started, still_open)] = by_vehicle["VEHICLE_001"]
    assert (m17, m20, still_open) == ("METER_017", "METER_020", None)
    assert first < changed == started
    [(m18, _, deleted)] = by_vehicle["VEHICLE_002"]
    assert m18 == "METER_018" and deleted > changed


def test_replace_removes_every_pairing_not_saved(store):
    store.save_pairings({"VEHICLE_001": "METER_017", "VEHICLE_002": "METER_018"})

    store.save_pairings({"VEHICLE_002": "METER_017"}, replace=True)

    assert store.load_pairings() == {"VEHICLE_002": "METER_017"}


def test_two_vehicles_may_swap_meters_in_one_save(store):
    store.save_pairings({"VEHICLE_001": "METER_017", "VEHICLE_002": "METER_018"})

    store.save_pairings({"VEHICLE_001": "METER_018", "VEHICLE_002": "METER_017"})

    assert store.load_pairings() == {"VEHICLE_001": "METER_018", "VEHICLE_002": "METER_017"}


def test_pairing_a_meter_held_by_another_vehicle_conflicts_and_changes_nothing(store):
    store.save_pairings({"VEHICLE_001": "METER_017"})
    version = store.pairings_version()

    with pytest.raises(PairingConflict, match="METER_017 is already paired with VEHICLE_001"):
        store.save_pairings({"VEHICLE_003": "METER_019", "VEHICLE_002": "METER_017"})

    assert store.load_pairings() == {"VEHICLE_001": "METER_017"}
    assert store.pairings_version() == version


def test_one_save_naming_a_meter_twice_conflicts_and_changes_nothing(store):
    store.save_pairings({"VEHICLE_001": "METER_017"})
    version = store.pairings_version()

    with pytest.raises(PairingConflict):
        store.save_pairings({"VEHICLE_002": "METER_018", "VEHICLE_003": "METER_018"}, replace=True)

    assert store.load_pairings() == {"VEHICLE_001": "METER_017"}
    assert store.pairings_version() == version


def test_deleting_a_pairing_frees_its_meter_and_changes_the_version(store):
    store.save_pairings({"VEHICLE_001": "METER_017"})
    version = store.pairings_version()

    assert store.delete_pairing("VEHICLE_001") is True
    assert store.pairings_version() != version
    store.save_pairings({"VEHICLE_002": "METER_017"})
    assert store.load_pairings() == {"VEHICLE_002": "METER_017"}


def test_deleting_a_pairing_that_does_not_exist_reports_false_and_keeps_the_version(store):
    version = store.pairings_version()

    assert store.delete_pairing("VEHICLE_404") is False
    assert store.pairings_version() == version


def test_registry_reflects_a_pairing_saved_through_its_store(store):
    registry = PairingRegistry(store, PairingRule(), recheck_seconds=0)
    assert registry.current().meter_for("VEHICLE_001") == "METER_001"  # the default rule

    store.save_pairings({"VEHICLE_001": "METER_017"})

    assert registry.current().meter_for("VEHICLE_001") == "METER_017"
    assert registry.current().vehicle_for("METER_001") is None


def test_registry_reflects_a_change_made_by_another_store_on_the_same_sqlite_file(tmp_path):
    path = tmp_path / "chargewatch.db"
    reader, writer = SqliteReadingStore(path), SqliteReadingStore(path)
    try:
        registry = PairingRegistry(reader, PairingRule(), recheck_seconds=0)
        assert registry.current().explicit == {}

        writer.save_pairings({"VEHICLE_001": "METER_017"})
        assert registry.current().meter_for("VEHICLE_001") == "METER_017"

        writer.delete_pairing("VEHICLE_001")
        assert registry.current().meter_for("VEHICLE_001") == "METER_001"
    finally:
        reader.close()
        writer.close()


def test_a_ready_store_answers_ping(store):
    store.ping()
