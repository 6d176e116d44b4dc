"""Emulated meters and vehicles: seeded generators of readings, driven by the time they are given.

A fleet is N pairs of a vehicle and the smart meter of its charger, numbered from ``first_pair``:
``VEHICLE_001``/``METER_001`` ... (three digits, more beyond 999), which chargewatch's default pairing
rule joins. Each simulated interval (60 s) every pair produces one ``VehicleReading`` and one
``MeterReading`` describing the same interval:

- charging sessions: a vehicle plugs in with a low state of charge, charges at its charger's power
  until a target SoC (80-100 %), the power tapering linearly above 80 % SoC down to 10 % of rated
  power at 100 %; then it is unplugged (driven) for 30 min to 6 h, its SoC falling, and reports
  0 kWh, as does the meter (no standby draw, so every reading obeys the relation below);
- energy: DC kWh reaching the battery per interval (rounded to the Wh, as meters report), and the
  meter's AC kWh = DC / the charger's true efficiency, unrounded, so ``dc / ac`` equals the true
  efficiency up to float rounding;
- efficiency: healthy chargers draw one from ``healthy_efficiency``; a ``faulty_share`` of them
  (exactly ``round(share * pairs)``) switch at a random onset to one from ``faulty_efficiency``;
- battery temperature relaxes towards ambient + a rise proportional to the charging power;
- clocks: each device's timestamp is the true time plus its own offset (drifting a few ppm,
  always within ``max_clock_drift``, 30 s); both devices of a pair sample at the same true instant
  (a per-pair phase within the minute), so a reading's partner is the one with the same ``step``.

:class:`Courier` decides each reading's delivery: lost, duplicated (resent a little later), late
(sent after newer readings of the same device, up to 10 min late: out of order) or on time with
jitter. :func:`stream_deliveries` yields deliveries in the order they are sent, generating the fleet
lazily, and :class:`GroundTruth` keeps what a test or an alert scorer needs: every pair's true
efficiency and fault onset, and per device the exact totals of what was generated, lost and
delivered (and, when asked, every distinct reading).

Nothing here reads a clock or the environment: the start time is passed in, every random draw
comes from a ``random.Random`` seeded from (seed, pair number) or (seed, device id), so pair 7
behaves the same in a fleet of 10 or 10,000 and a run is reproduced exactly by its seed. Readings
are built and validated as the pydantic models ingest uses; ``chargewatch.readings.to_wire`` turns
them into the JSON devices send.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from chargewatch.readings import AnyReading, MeterReading, ReadingRules, VehicleReading

INTERVAL = timedelta(seconds=60)
TAPER_START_SOC = 80.0
TAPER_FLOOR = 0.1  # share of rated power still flowing at 100 % SoC
MAX_DRIFT_PPM = 20.0


def pair_ids(number: int) -> tuple[str, str]:
    """(vehicle id, meter id) of pair ``number``: VEHICLE_001/METER_001, ..., VEHICLE_1000/METER_1000."""
    return f"VEHICLE_{number:03d}", f"METER_{number:03d}"


@dataclass(frozen=True)
class FleetConfig:
    """What the fleet looks like; every range is (low, high), drawn uniformly per pair."""

    pairs: int = 10
    seed: int = 0
    first_pair: int = 1
    faulty_share: float = 0.1
    healthy_efficiency: tuple[float, float] = (0.88, 0.95)
    faulty_efficiency: tuple[float, float] = (0.75, 0.82)
    fault_onset_within: timedelta = timedelta(hours=1)  # onset drawn in [start, start + this)
    charger_powers_kw: tuple[float, ...] = (7.4, 11.0, 22.0, 50.0)
    battery_kwh: tuple[float, float] = (40.0, 100.0)
    idle_minutes: tuple[float, float] = (30.0, 360.0)
    session_start_soc: tuple[float, float] = (10.0, 60.0)
    session_target_soc: tuple[float, float] = (80.0, 100.0)
    ambient_temp_c: tuple[float, float] = (8.0, 25.0)
    max_clock_drift: timedelta = timedelta(seconds=30)
    interval: timedelta = INTERVAL

    def __post_init__(self) -> None:
        if self.pairs < 0 or self.first_pair < 0:
            raise ValueError("pairs and first_pair must not be negative")
        if not 0.0 <= self.faulty_share <= 1.0:
            raise ValueError("faulty_share is a fraction from 0 to 1")
        for name in ("healthy_efficiency", "faulty_efficiency"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{name} must be 0 < low <= high <= 1")
        if self.interval <= timedelta(0) or self.interval % timedelta(milliseconds=1):
            raise ValueError("interval must be a positive whole number of milliseconds")
        if not timedelta(0) <= self.max_clock_drift:
            raise ValueError("max_clock_drift must not be negative")


@dataclass(frozen=True)
class PairProfile:
    """A pair's fixed traits, drawn once from the seed (the ground truth about it)."""

    number: int
    vehicle_id: str
    meter_id: str
    battery_kwh: float
    charger_power_kw: float
    healthy_efficiency: float
    is_faulty: bool
    faulty_efficiency: float | None
    fault_onset: datetime | None
    nominal_voltage: float
    ambient_temp_c: float
    phase: timedelta  # when in each interval this pair samples (and sends)
    vehicle_clock_offset_ms: int
    vehicle_clock_drift_ppm: float
    meter_clock_offset_ms: int
    meter_clock_drift_ppm: float

    def efficiency_at(self, moment: datetime) -> float:
        """The charger's true efficiency (DC/AC) at a true time."""
        if (self.is_faulty and self.faulty_efficiency is not None and self.fault_onset is not None
                and moment >= self.fault_onset):
            return self.faulty_efficiency
        return self.healthy_efficiency


@dataclass(frozen=True)
class Generated:
    """One reading as generated, with the truth behind it.

    ``step_time`` is the true end of the interval the reading describes (before the pair's phase and
    the device's clock offset); the vehicle and meter readings of a pair share ``step``.
    """

    reading: AnyReading
    pair: int
    step: int
    step_time: datetime
    send_time: datetime  # true time the device sends it (step_time + phase)
    efficiency: float
    is_charging: bool

    @property
    def key(self) -> tuple[str, int]:
        """A reading's identity in chargewatch: (device id, timestamp in ms)."""
        return self.reading.device_id, self.reading.time_ms


def _uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    return rng.uniform(bounds[0], bounds[1])


def _profile(config: FleetConfig, number: int, start: datetime, is_faulty: bool) -> PairProfile:
    rng = random.Random(f"chargewatch-simulator/{config.seed}/pair/{number}")
    vehicle_id, meter_id = pair_ids(number)
    power = rng.choice(config.charger_powers_kw)
    healthy = _uniform(rng, config.healthy_efficiency)
    faulty = _uniform(rng, config.faulty_efficiency)
    onset = start + timedelta(seconds=math.floor(rng.random() * config.fault_onset_within.total_seconds()))
    drift_ms = int(config.max_clock_drift / timedelta(milliseconds=1))
    return PairProfile(
        number=number,
        vehicle_id=vehicle_id,
        meter_id=meter_id,
        battery_kwh=round(_uniform(rng, config.battery_kwh), 1),
        charger_power_kw=power,
        healthy_efficiency=healthy,
        is_faulty=is_faulty,
        faulty_efficiency=faulty if is_faulty else None,
        fault_onset=onset if is_faulty else None,
        nominal_voltage=400.0 if power >= 11.0 else 230.0,
        ambient_temp_c=round(_uniform(rng, config.ambient_temp_c), 1),
        phase=timedelta(milliseconds=rng.randrange(int(config.interval / timedelta(milliseconds=1)))),
        vehicle_clock_offset_ms=rng.randint(-drift_ms, drift_ms),
        vehicle_clock_drift_ppm=rng.uniform(-MAX_DRIFT_PPM, MAX_DRIFT_PPM),
        meter_clock_offset_ms=rng.randint(-drift_ms, drift_ms),
        meter_clock_drift_ppm=rng.uniform(-MAX_DRIFT_PPM, MAX_DRIFT_PPM),
    )


def taper_factor(soc: float) -> float:
    """Share of rated power a battery accepts at a state of charge (%): 1 below 80 %, then linear to 0.1."""
    if soc < TAPER_START_SOC:
        return 1.0
    return max(TAPER_FLOOR, 1.0 - (1.0 - TAPER_FLOOR) * (soc - TAPER_START_SOC) / (100.0 - TAPER_START_SOC))


class ChargingPair:
    """A vehicle and its charger's meter, stepping through sessions one interval at a time."""

    def __init__(self, profile: PairProfile, config: FleetConfig, start: datetime) -> None:
        self.profile = profile
        self._config = config
        self._start = start
        # The physics stream continues the profile's seed, so it is as reproducible as the profile.
        self._rng = random.Random(f"chargewatch-simulator/{config.seed}/pair/{profile.number}/sessions")
        self._interval_hours = config.interval / timedelta(hours=1)
        self._interval_minutes = config.interval / timedelta(minutes=1)
        self.sessions_started = 0
        self.temperature_c = profile.ambient_temp_c
        if self._rng.random() < 0.4:
            self.soc = _uniform(self._rng, config.session_start_soc)
            self._start_session()
        else:
            self.soc = self._rng.uniform(40.0, 95.0)
            self._unplug(idle_steps=self._rng.randint(1, 180))

    @property
    def is_charging(self) -> bool:
        return self._target_soc is not None

    def _start_session(self) -> None:
        self.sessions_started += 1
        self._target_soc: float | None = max(self.soc, _uniform(self._rng, self._config.session_target_soc))
        self._idle_steps = 0
        self._soc_drop_per_step = 0.0

    def _unplug(self, idle_steps: int | None = None) -> None:
        self._target_soc = None
        if idle_steps is None:
            idle_steps = max(1, round(_uniform(self._rng, self._config.idle_minutes) / self._interval_minutes))
        next_soc = min(self.soc, _uniform(self._rng, self._config.session_start_soc))
        self._idle_steps = idle_steps
        self._soc_drop_per_step = (self.soc - next_soc) / idle_steps

    def advance(self, moment: datetime) -> tuple[float, bool]:
        """Move through the interval ending at ``moment``; returns (DC kWh delivered, was charging)."""
        profile = self.profile
        if self._target_soc is None:
            self.soc = max(0.0, self.soc - self._soc_drop_per_step)
            self._relax_temperature(profile.ambient_temp_c, tau_minutes=30.0)
            self._idle_steps -= 1
            if self._idle_steps <= 0:
                self._start_session()  # plugs in; energy flows from the next interval on
            return 0.0, False
        power_kw = profile.charger_power_kw * taper_factor(self.soc)
        remaining_kwh = (self._target_soc - self.soc) / 100.0 * profile.battery_kwh
        # Rounded to the Wh as a vehicle reports it; the meter's AC is derived from this exact value.
        dc_kwh = round(max(0.0, min(power_kw * self._interval_hours, remaining_kwh)), 6)
        self.soc = min(100.0, self.soc + dc_kwh / profile.battery_kwh * 100.0)
        dc_kw = dc_kwh / self._interval_hours
        self._relax_temperature(profile.ambient_temp_c + 3.0 + 0.25 * dc_kw, tau_minutes=12.0)
        if self._target_soc - self.soc < 1e-6:
            self._unplug()
        return dc_kwh, True

    def _relax_temperature(self, target_c: float, tau_minutes: float) -> None:
        self.temperature_c += (target_c - self.temperature_c) * (1.0 - math.exp(-self._interval_minutes / tau_minutes))

    def readings(self, step: int, step_time: datetime, rules: ReadingRules) -> tuple[Generated, Generated]:
        """Advance one interval and return its (vehicle, meter) readings."""
        profile = self.profile
        dc_kwh, charging = self.advance(step_time)
        efficiency = profile.efficiency_at(step_time)
        ac_kwh = dc_kwh / efficiency
        sampled = step_time + profile.phase
        elapsed_ms = (step_time - self._start) / timedelta(milliseconds=1)
        voltage = profile.nominal_voltage * (1.0 + self._rng.gauss(0.0, 0.005))
        context = rules.context()
        vehicle = VehicleReading.model_validate(
            {
                "vehicle_id": profile.vehicle_id,
                "soc": round(self.soc, 2),
                "kwh_delivered_dc": dc_kwh,
                "battery_temp": round(self.temperature_c, 1),
                "timestamp": sampled + self._offset(profile.vehicle_clock_offset_ms, profile.vehicle_clock_drift_ppm,
                                                    elapsed_ms),
            },
            context=context,
        )
        meter = MeterReading.model_validate(
            {
                "meter_id": profile.meter_id,
                "kwh_consumed_ac": ac_kwh,
                "voltage": round(voltage, 1),
                "timestamp": sampled + self._offset(profile.meter_clock_offset_ms, profile.meter_clock_drift_ppm,
                                                    elapsed_ms),
            },
            context=context,
        )
        return (
            Generated(vehicle, profile.number, step, step_time, sampled, efficiency, charging),
            Generated(meter, profile.number, step, step_time, sampled, efficiency, charging),
        )

    def _offset(self, offset_ms: int, drift_ppm: float, elapsed_ms: float) -> timedelta:
        limit = int(self._config.max_clock_drift / timedelta(milliseconds=1))
        drifted = offset_ms + round(drift_ppm * 1e-6 * elapsed_ms)
        return timedelta(milliseconds=max(-limit, min(limit, drifted)))


class Fleet:
    """N charging pairs stepping together from ``start`` (aware; floored to the whole second).

    Step ``k`` describes the interval ending at ``start + k * interval``; :meth:`tick` returns the
    readings of the next step, vehicle before meter, pair by pair.
    """

    def __init__(self, config: FleetConfig, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the fleet's start time must be timezone-aware")
        self.config = config
        self.start = start.astimezone(timezone.utc).replace(microsecond=0)
        numbers = range(config.first_pair, config.first_pair + config.pairs)
        faulty_count = round(config.faulty_share * config.pairs)
        faulty = set(random.Random(f"chargewatch-simulator/{config.seed}/faulty").sample(numbers, faulty_count))
        self.pairs = [ChargingPair(_profile(config, n, self.start, n in faulty), config, self.start) for n in numbers]
        self.step = 0

    @property
    def profiles(self) -> list[PairProfile]:
        return [pair.profile for pair in self.pairs]

    @property
    def next_step_time(self) -> datetime:
        return self.start + self.step * self.config.interval

    def tick(self) -> list[Generated]:
        """The readings of the next step, then advance the fleet by one interval."""
        step, step_time = self.step, self.next_step_time
        # Timestamps reach at most phase + drift past step_time; validate as ingest would then.
        rules = ReadingRules(now=step_time + self.config.interval + self.config.max_clock_drift)
        generated: list[Generated] = []
        for pair in self.pairs:
            generated.extend(pair.readings(step, step_time, rules))
        self.step += 1
        return generated


# -- delivery ------------------------------------------------------------------------------------

class Fate(StrEnum):
    """What happens to a generated reading on its way to chargewatch."""

    ON_TIME = "on_time"
    LOST = "lost"
    DUPLICATED = "duplicated"  # sent, then sent again a little later (a device retry)
    LATE = "late"  # held back, sent after newer readings of the same device


@dataclass(frozen=True)
class DeliveryFaults:
    """Rates (fractions of readings) of each delivery fault; the fates are mutually exclusive."""

    loss_rate: float = 0.02
    duplicate_rate: float = 0.01
    late_rate: float = 0.01
    max_late: timedelta = timedelta(minutes=10)
    max_duplicate_delay: timedelta = timedelta(seconds=30)
    max_jitter: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        rates = (self.loss_rate, self.duplicate_rate, self.late_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0:
            raise ValueError("delivery fault rates are fractions from 0 to 1 that add up to at most 1")
        if self.max_late < INTERVAL:
            raise ValueError("max_late must be at least one interval (60 s)")

    @classmethod
    def none(cls) -> DeliveryFaults:
        return cls(loss_rate=0.0, duplicate_rate=0.0, late_rate=0.0)


@dataclass(frozen=True)
class Delivery:
    """One send of a reading: ``due`` is the true time it leaves the device; ``copy`` 1 is a resend."""

    due: datetime
    generated: Generated
    fate: Fate
    copy: int = 0

    @property
    def reading(self) -> AnyReading:
        return self.generated.reading


class Courier:
    """Decides each reading's fate and send time, from one seeded stream per device."""

    def __init__(self, faults: DeliveryFaults, seed: int) -> None:
        self.faults = faults
        self._seed = seed
        self._streams: dict[str, random.Random] = {}

    def _rng(self, device_id: str) -> random.Random:
        rng = self._streams.get(device_id)
        if rng is None:
            rng = self._streams[device_id] = random.Random(f"chargewatch-simulator/{self._seed}/delivery/{device_id}")
        return rng

    def plan(self, generated: Generated) -> tuple[Fate, list[Delivery]]:
        faults = self.faults
        rng = self._rng(generated.reading.device_id)
        # Always three draws per reading, so changing one rate does not reshuffle other devices' luck.
        fate_draw, jitter_draw, delay_draw = rng.random(), rng.random(), rng.random()
        due = _to_ms(generated.send_time + jitter_draw * faults.max_jitter)
        if fate_draw < faults.loss_rate:
            return Fate.LOST, []
        if fate_draw < faults.loss_rate + faults.duplicate_rate:
            resend = due + timedelta(seconds=1) + delay_draw * (faults.max_duplicate_delay - timedelta(seconds=1))
            return Fate.DUPLICATED, [
                Delivery(due, generated, Fate.DUPLICATED, 0),
                Delivery(_to_ms(resend), generated, Fate.DUPLICATED, 1),
            ]
        if fate_draw < faults.loss_rate + faults.duplicate_rate + faults.late_rate:
            late = due + INTERVAL + delay_draw * (faults.max_late - INTERVAL)
            return Fate.LATE, [Delivery(_to_ms(late), generated, Fate.LATE, 0)]
        return Fate.ON_TIME, [Delivery(due, generated, Fate.ON_TIME, 0)]


def _to_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def stream_deliveries(
    fleet: Fleet, courier: Courier, end: datetime, truth: GroundTruth | None = None
) -> Iterator[Delivery]:
    """Every delivery of the steps before ``end``, in send order (by ``due``, ties in generation order).

    The fleet is stepped lazily: a step is generated only when the deliveries before it are used up,
    so memory stays bounded by the ten minutes a late reading can be held back.
    """
    pending: list[tuple[datetime, int, Delivery]] = []
    order = itertools.count()
    interval = fleet.config.interval
    while fleet.next_step_time < end:
        step_time = fleet.next_step_time
        for generated in fleet.tick():
            fate, deliveries = courier.plan(generated)
            if truth is not None:
                truth.record_generated(generated, fate)
            for delivery in deliveries:
                heapq.heappush(pending, (delivery.due, next(order), delivery))
        # Later steps are sent at or after their step time, so everything due before it is final.
        horizon = step_time + interval
        while pending and pending[0][0] < horizon:
            yield heapq.heappop(pending)[2]
    while pending:
        yield heapq.heappop(pending)[2]


# -- ground truth --------------------------------------------------------------------------------

class _Sum:
    """A compensated (Neumaier) running sum: totals stay exact to the last bits however long the run."""

    __slots__ = ("total", "compensation")

    def __init__(self) -> None:
        self.total = 0.0
        self.compensation = 0.0

    def add(self, value: float) -> None:
        total = self.total + value
        if abs(self.total) >= abs(value):
            self.compensation += (self.total - total) + value
        else:
            self.compensation += (value - total) + self.total
        self.total = total

    @property
    def value(self) -> float:
        return self.total + self.compensation


@dataclass
class DeviceTally:
    """Readings and kWh of one device, split by what happened to them."""

    generated: int = 0
    lost: int = 0
    delivered: int = 0  # distinct readings handed to the sender at least once
    resent: int = 0  # duplicate copies sent
    late: int = 0
    generated_kwh: _Sum = field(default_factory=_Sum)
    lost_kwh: _Sum = field(default_factory=_Sum)
    delivered_kwh: _Sum = field(default_factory=_Sum)

    def to_json(self) -> dict[str, Any]:
        return {
            "generatedReadings": self.generated,
            "generatedKwh": self.generated_kwh.value,
            "lostReadings": self.lost,
            "lostKwh": self.lost_kwh.value,
            "deliveredReadings": self.delivered,
            "deliveredKwh": self.delivered_kwh.value,
            "duplicateCopiesSent": self.resent,
            "lateReadings": self.late,
        }


def _energy(reading: AnyReading) -> float:
    return reading.kwh_consumed_ac if isinstance(reading, MeterReading) else reading.kwh_delivered_dc


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _ratio(dc: float, ac: float) -> float | None:
    return dc / ac if ac > 0 else None


class GroundTruth:
    """What really happened in a run: pair traits and per-device tallies.

    ``record_generated`` is called for every generated reading (with its fate) and ``record_sent``
    for every delivery handed to the sender. With ``keep_readings`` the distinct readings, their
    fates and the sent copies are kept too (for tests; a long run of a large fleet should not).
    """

    def __init__(self, fleet: Fleet, *, keep_readings: bool = False) -> None:
        self.fleet = fleet
        self.keep_readings = keep_readings
        self.devices: dict[str, DeviceTally] = {}
        for profile in fleet.profiles:
            self.devices[profile.vehicle_id] = DeviceTally()
            self.devices[profile.meter_id] = DeviceTally()
        self.readings: list[Generated] = []
        self.fates: dict[tuple[str, int], Fate] = {}
        self.sent: list[Delivery] = []
        self.end: datetime | None = None

    def record_generated(self, generated: Generated, fate: Fate) -> None:
        tally = self.devices[generated.reading.device_id]
        energy = _energy(generated.reading)
        tally.generated += 1
        tally.generated_kwh.add(energy)
        if fate is Fate.LOST:
            tally.lost += 1
            tally.lost_kwh.add(energy)
        elif fate is Fate.LATE:
            tally.late += 1
        if self.keep_readings:
            self.readings.append(generated)
            self.fates[generated.key] = fate
        self.end = generated.step_time + self.fleet.config.interval

    def record_sent(self, delivery: Delivery) -> None:
        tally = self.devices[delivery.reading.device_id]
        if delivery.copy == 0:
            tally.delivered += 1
            tally.delivered_kwh.add(_energy(delivery.reading))
        else:
            tally.resent += 1
        if self.keep_readings:
            self.sent.append(delivery)

    def to_json(self) -> dict[str, Any]:
        """The ground-truth file: per vehicle its pair's traits and energy, and fleet totals.

        Efficiencies are ratios 0-1 (DC delivered / AC drawn). ``deliveredEfficiency`` is what a
        correct chargewatch reports over the whole run from the readings it received.
        """
        config = self.fleet.config
        vehicles = []
        totals: dict[str, DeviceTally] = {"vehicle": DeviceTally(), "meter": DeviceTally()}
        for pair in self.fleet.pairs:
            profile = pair.profile
            vehicle, meter = self.devices[profile.vehicle_id], self.devices[profile.meter_id]
            for kind, tally in (("vehicle", vehicle), ("meter", meter)):
                _merge(totals[kind], tally)
            vehicles.append({
                "vehicleId": profile.vehicle_id,
                "meterId": profile.meter_id,
                "trueEfficiency": profile.efficiency_at(self.end) if self.end else profile.healthy_efficiency,
                "healthyEfficiency": profile.healthy_efficiency,
                "faulty": profile.is_faulty,
                "faultyEfficiency": profile.faulty_efficiency,
                "faultOnset": _iso(profile.fault_onset),
                "batteryKwh": profile.battery_kwh,
                "chargerPowerKw": profile.charger_power_kw,
                "sessionsStarted": pair.sessions_started,
                "clock": {
                    "vehicleOffsetMs": profile.vehicle_clock_offset_ms,
                    "vehicleDriftPpm": profile.vehicle_clock_drift_ppm,
                    "meterOffsetMs": profile.meter_clock_offset_ms,
                    "meterDriftPpm": profile.meter_clock_drift_ppm,
                },
                "generatedEfficiency": _ratio(vehicle.generated_kwh.value, meter.generated_kwh.value),
                "deliveredEfficiency": _ratio(vehicle.delivered_kwh.value, meter.delivered_kwh.value),
                "vehicle": vehicle.to_json(),
                "meter": meter.to_json(),
            })
        return {
            "seed": config.seed,
            "pairs": config.pairs,
            "faultyShare": config.faulty_share,
            "intervalSeconds": config.interval.total_seconds(),
            "start": _iso(self.fleet.start),
            "end": _iso(self.end),
            "efficiencyUnit": "ratio 0-1 (DC delivered / AC consumed)",
            "vehicles": vehicles,
            "totals": {kind: tally.to_json() for kind, tally in totals.items()},
        }


def _merge(into: DeviceTally, tally: DeviceTally) -> None:
    into.generated += tally.generated
    into.lost += tally.lost
    into.delivered += tally.delivered
    into.resent += tally.resent
    into.late += tally.late
    into.generated_kwh.add(tally.generated_kwh.value)
    into.lost_kwh.add(tally.lost_kwh.value)
    into.delivered_kwh.add(tally.delivered_kwh.value)


def simulate(
    config: FleetConfig, faults: DeliveryFaults, start: datetime, end: datetime
) -> tuple[list[Delivery], GroundTruth]:
    """A bounded run, all in memory: every delivery in send order, and the truth with every reading."""
    fleet = Fleet(config, start)
    truth = GroundTruth(fleet, keep_readings=True)
    deliveries = []
    for delivery in stream_deliveries(fleet, Courier(faults, config.seed), end, truth):
        truth.record_sent(delivery)
        deliveries.append(delivery)
    return deliveries, truth
