"""Response bodies of the ingest service (the request bodies are chargewatch.readings)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from chargewatch.readings import DEVICE_ID_PATTERN, Rejection
from chargewatch.stores import StoredReading
from webapi.schemas import ApiModel, from_ms


class FieldErrorBody(ApiModel):
    field: str = Field(description="wire name of the field ('' for the reading as a whole)")
    message: str
    type: str = Field(description="stable error type, e.g. finite_number, string_pattern_mismatch")


class RejectionBody(ApiModel):
    index: int = Field(description="0-based position of the reading in the request (0 for a single reading)")
    errors: list[FieldErrorBody]

    @classmethod
    def of(cls, rejection: Rejection) -> RejectionBody:
        return cls(index=rejection.index, errors=[FieldErrorBody(**vars(e)) for e in rejection.errors])


class IngestResponse(ApiModel):
    """200 when every reading was accepted, 207 when some were rejected (listed in ``rejected``)."""

    accepted: int = Field(description="valid readings taken in: stored + duplicates + conflicts")
    stored: int = Field(description="readings stored now")
    duplicates: int = Field(description="readings already stored earlier with the same values (a device's retry)")
    conflicts: int = Field(0, description="readings whose device and timestamp were already stored with other "
                           "values: the first copy is kept, this one is not stored (a device reusing timestamps)")
    unpaired: int = Field(description="accepted readings with no paired device (kept, reported here)")
    rejected: list[RejectionBody] = Field(default_factory=list)


class DeviceStateBody(ApiModel):
    """A device's newest reading by device timestamp."""

    kind: Literal["meter", "vehicle"]
    device_id: str
    vehicle_id: str | None = Field(description="the vehicle (for a meter: the one paired at the time)")
    meter_id: str | None = Field(description="the meter (for a vehicle: the one paired at the time)")
    timestamp: datetime = Field(description="device timestamp of the reading, UTC")
    received_at: datetime = Field(description="when chargewatch received it, UTC")
    values: dict[str, float] = Field(description="kwhConsumedAc and voltage, or soc, kwhDeliveredDc, batteryTemp")

    @classmethod
    def of(cls, state: StoredReading) -> DeviceStateBody:
        return cls(
            kind=state.kind, device_id=state.device_id, vehicle_id=state.vehicle_id, meter_id=state.meter_id,
            timestamp=from_ms(state.time_ms), received_at=from_ms(state.received_ms), values=state.values,
        )


class DevicePage(ApiModel):
    devices: list[DeviceStateBody]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class PairingBody(ApiModel):
    vehicle_id: str
    meter_id: str
    source: Literal["registry", "rule"] = Field(description="registry: set explicitly; rule: the default rule")


class PairingRequest(ApiModel):
    meter_id: str = Field(pattern=DEVICE_ID_PATTERN)


class PairingList(ApiModel):
    pairings: list[PairingBody] = Field(description="explicit pairings (the default rule applies beside them)")
    rule_prefixes: list[str] = Field(description="default rule, vehiclePrefix:meterPrefix")
