"""Alert precision, recall and detection time on simulated days (several seeds).

Each seed replays a day of a 50-pair fleet through ingest and the task runner in simulated time
(simulator/replay.py): true efficiencies 0.75-0.97, a fifth of the chargers turning faulty
(0.75-0.82) at a random moment, device clocks within +-30 s, 2 % of readings lost, 1 % duplicated,
1 % up to 10 min late. A vehicle must alert within 15 min of the first charging interval at or
below 0.82 efficiency ("onset"); an alert on a vehicle whose true efficiency was 0.88 or more over
the span before it fired is a false alert. Reported: recall (onsets detected at all, and within
15 min), precision (fired alerts that were not false), detection minutes (median, max), exactness
of the 24 h totals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from chargewatch.settings import Settings
from simulator.devices import DeliveryFaults, FleetConfig
from simulator.replay import backfill, replay, score, within_ulps

START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def run_seed(seed: int, pairs: int, hours: float, mode: str, offset_s: float) -> dict:
    if mode == "live":
        fleet = FleetConfig(pairs=pairs, seed=seed, healthy_efficiency=(0.75, 0.97), faulty_share=0.2,
                            faulty_efficiency=(0.75, 0.82), fault_onset_within=timedelta(hours=hours * 0.8))
    else:  # as `chargewatch simulate backfill` draws the fleet
        fleet = FleetConfig(pairs=pairs, seed=seed, fault_onset_within=timedelta(hours=hours / 2))
    start = START + timedelta(seconds=offset_s)
    with tempfile.TemporaryDirectory(prefix="chargewatch-alerts-") as tmp:
        settings = Settings(data_dir=Path(tmp), sqlite={"synchronous": "normal"})
        started = time.perf_counter()
        truth, stores, settings = (replay if mode == "live" else backfill)(
            fleet, DeliveryFaults(), start, hours, Path(tmp), settings)
        result = score(truth, stores.efficiency, settings, start, hours)
        stores.close()
    minutes = [m for m in result.detection_minutes.values() if m is not None]
    exact = sum(within_ulps(a, ea) and within_ulps(d, ed)
                for (a, d), (ea, ed) in zip(result.totals.values(), result.expected_totals.values(), strict=True))
    return {
        "seed": seed, "start_offset_s": offset_s, "positives": len(result.detection_minutes), "detected": len(minutes),
        "detected_within_15_min": sum(m <= 15 for m in minutes), "false_alerts": len(result.false_alerts),
        "fired_low_alerts": len([a for a in result.alerts if a.rule == "low_efficiency" and a.fired_ms]),
        # the simulator never makes DC exceed AC: every fired above-one alert is false
        "fired_above_one_alerts": len([a for a in result.alerts if a.rule == "efficiency_above_one" and a.fired_ms]),
        "false_alert_details": [f"{a.vehicle_id} {a.rule} fired {a.fired_ms}" for a in result.false_alerts],
        "detection_minutes": sorted(minutes), "vehicles_with_exact_totals": exact, "vehicles": len(result.totals),
        "replay_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 7, 11], help="fleet seeds")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--mode", choices=("live", "backfill"), default="live",
                        help="live: the runner runs at every window stop as the readings arrive (default); "
                        "backfill: the whole span is ingested first, then one run replays the alert rules over "
                        "it, as after `chargewatch simulate backfill` (the fleet drawn as that command does)")
    parser.add_argument("--start-offsets", type=float, nargs="+", default=[0.0], metavar="SECONDS",
                        help="start the simulated span this many seconds after a window boundary (one run each)")
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        for offset in args.start_offsets:
            print(f"seed {seed}, start offset {offset:g} s ...", file=sys.stderr, flush=True)
            runs.append(run_seed(seed, args.pairs, args.hours, args.mode, offset))
    positives = sum(r["positives"] for r in runs)
    fired = sum(r["fired_low_alerts"] for r in runs)
    minutes = [m for r in runs for m in r["detection_minutes"]]
    result = {
        "benchmark": "alert_accuracy",
        "recall": round(sum(r["detected"] for r in runs) / positives, 4) if positives else None,
        "recall_within_15_min": round(sum(r["detected_within_15_min"] for r in runs) / positives, 4)
        if positives else None,
        "precision": round(1 - sum(r["false_alerts"] for r in runs) / fired, 4) if fired else None,
        "false_alerts": sum(r["false_alerts"] for r in runs),
        "fired_above_one_alerts": sum(r["fired_above_one_alerts"] for r in runs),
        "detection_minutes": {"median": statistics.median(minutes), "max": max(minutes)} if minutes else None,
        "totals_exact": f"{sum(r['vehicles_with_exact_totals'] for r in runs)}/{sum(r['vehicles'] for r in runs)}",
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
