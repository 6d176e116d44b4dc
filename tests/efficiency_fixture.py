"""The shared efficiency fixture (tests/fixtures/efficiency_windows.json), read for every engine."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from chargewatch.efficiency import EfficiencyWindow, MeterEnergy, VehicleEnergy

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "efficiency_windows.json").read_text())


def time_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def energies() -> tuple[list[MeterEnergy], list[VehicleEnergy]]:
    meters, vehicles = [], []
    for point in FIXTURE["readings"]:
        tags, fields, at = point["tags"], point["fields"], time_ms(point["time"])
        if point["measurement"] == "meter":
            meters.append(MeterEnergy(tags.get("vehicle_id"), tags["meter_id"], at, fields["kwh_consumed_ac"]))
        else:
            vehicles.append(VehicleEnergy(tags["vehicle_id"], tags.get("meter_id"), at, fields["kwh_delivered_dc"],
                                          fields["battery_temp"]))
    return meters, vehicles


def expected_windows() -> list[EfficiencyWindow]:
    return [EfficiencyWindow(e["vehicle_id"], e["meter_id"], time_ms(e["stop"]), e["ac_kwh"], e["dc_kwh"],
                             e["ac_readings"], e["dc_readings"], e["avg_battery_temp"], e["efficiency"])
            for e in FIXTURE["expected"]]


def as_dicts(windows: list[EfficiencyWindow]) -> list[dict[str, Any]]:
    return [w._asdict() for w in windows]
