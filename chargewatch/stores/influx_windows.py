"""Influx mode's WindowSource (``chargewatch.efficiency_ports``): windows read from the
``efficiency`` bucket the Flux task fills.

The reads run the scripts in ``chargewatch/influx/queries/`` with ``query_api.query(source, params=...)``:
influxdb-client sends the values as ``extern`` option statements, so an id never becomes Flux text.
Results come back as the same types and values :class:`SqliteWindowStore` returns for the same
windows (the contract suite, tests/integration/test_efficiency_store_contract.py, holds both to it).

Alerts, notifications and runner state are not here: they stay in the shared SQLite database in
every mode (``chargewatch.bootstrap`` composes the two).

influxdb-client (the ``influx`` extra) is imported only when a store is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from chargewatch.efficiency import EfficiencyWindow, SpanTotals, charging_windows, sum_row, window_sums
from chargewatch.influx import flux
from chargewatch.stores import StorageUnavailable

if TYPE_CHECKING:
    from influxdb_client import InfluxDBClient

    from chargewatch.settings import Settings

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _window_key(window: EfficiencyWindow) -> tuple[int, str, str]:
    # SqliteWindowStore's order: stop, vehicle, meter ('' for an unpaired vehicle sorts first).
    return window.stop_ms, window.vehicle_id, window.meter_id or ""


def _time(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def window_from_record(values: dict[str, Any]) -> EfficiencyWindow:
    """One row of ``windows.flux``/``vehicle_windows.flux`` as an EfficiencyWindow.

    The task writes no field for a null (``avg_battery_temp``, ``efficiency``) and no tag for an
    unpaired vehicle, so those columns may be missing, null or empty.
    """
    stop: datetime = values["_time"]
    return EfficiencyWindow(
        vehicle_id=values["vehicle_id"], meter_id=values.get("meter_id") or None,
        stop_ms=(stop - _EPOCH) // _MS,
        ac_kwh=float(values.get("ac_kwh") or 0.0), dc_kwh=float(values.get("dc_kwh") or 0.0),
        ac_readings=int(values.get("ac_readings") or 0), dc_readings=int(values.get("dc_readings") or 0),
        avg_battery_temp=_float_or_none(values.get("avg_battery_temp")),
        efficiency=_float_or_none(values.get("efficiency")),
    )


def totals_from_record(values: dict[str, Any]) -> SpanTotals:
    """One row of ``vehicle_totals.flux``; a vehicle without temperatures has no ``battery_temp_*``."""
    return SpanTotals(
        ac_kwh=float(values.get("ac_kwh") or 0.0), dc_kwh=float(values.get("dc_kwh") or 0.0),
        ac_readings=int(values.get("ac_readings") or 0), dc_readings=int(values.get("dc_readings") or 0),
        windows=int(values.get("windows") or 0), battery_temp_sum=float(values.get("battery_temp_sum") or 0.0),
        battery_temp_readings=int(values.get("battery_temp_readings") or 0),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


class InfluxWindowSource:
    """Efficiency windows from InfluxDB's efficiency bucket.

    Reads raise StorageUnavailable when InfluxDB refuses (any HTTP error), cannot be reached, or
    fails the query mid-answer.
    """

    def __init__(self, client: InfluxDBClient, org: str, bucket: str) -> None:
        self.client = client
        self.org = org
        self.bucket = bucket
        self._query_api = client.query_api()
        self._queries = {name: flux.read_query(name) for name in ("windows", "vehicle_windows", "vehicle_totals")}

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxWindowSource:
        """A client for ``CHARGEWATCH_INFLUX__*`` (token needs read access to the efficiency bucket)."""
        try:
            from influxdb_client import InfluxDBClient
        except ImportError:
            raise StorageUnavailable("influxdb-client is not installed: pip install 'chargewatch[influx]'") from None
        influx = settings.influx
        token = influx.token.get_secret_value()
        if not token:
            raise StorageUnavailable("no InfluxDB token: set CHARGEWATCH_INFLUX__TOKEN (read access to the "
                                     f"{influx.efficiency_bucket!r} bucket)")
        client = InfluxDBClient(url=influx.url, token=token, org=influx.org,
                                timeout=int(influx.request_timeout_seconds * 1000))
        return cls(client, influx.org, influx.efficiency_bucket)

    def close(self) -> None:
        self.client.close()

    def windows(self, window_ms: int, start_ms: int, end_ms: int, vehicle_id: str | None = None
                ) -> list[EfficiencyWindow]:
        """Windows with stop in (start_ms, end_ms], ordered by stop (then vehicle, meter).

        ``window_ms`` is not a query input: the bucket holds the windows of the one length the task
        computes (``CHARGEWATCH_EFFICIENCY__WINDOW_SECONDS``, the same setting analytics uses).
        """
        params: dict[str, object] = {"_start": _time(start_ms), "_stop": _time(end_ms)}
        if vehicle_id is None:
            records = self._records("windows", params)
        else:
            records = self._records("vehicle_windows", {**params, "_vehicle_id": vehicle_id})
        return sorted((window_from_record(values) for values in records), key=_window_key)

    def windows_of(self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str]
                   ) -> list[EfficiencyWindow]:
        """Windows of the given vehicles with stop in (start_ms, end_ms], ordered by vehicle then stop.

        One ``vehicle_windows`` query per vehicle: the alert evaluator asks for the few vehicles
        whose session reaches back before the span, and a query stays a fixed text with params.
        """
        return [window for vehicle_id in sorted(set(vehicle_ids))
                for window in self.windows(window_ms, start_ms, end_ms, vehicle_id)]

    def charging_windows(self, window_ms: int, start_ms: int, end_ms: int, active_since_ms: int, active_kwh: float
                         ) -> list[EfficiencyWindow]:
        return charging_windows(self.windows(window_ms, start_ms, end_ms), active_since_ms, active_kwh)

    def vehicle_window_sums(self, window_ms: int, vehicle_id: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """Exact (fsum) sums over one vehicle's windows, as SqliteWindowStore.vehicle_window_sums."""
        return window_sums([sum_row(w) for w in self.windows(window_ms, start_ms, end_ms, vehicle_id)])

    def vehicle_totals(self, window_ms: int, start_ms: int, end_ms: int) -> dict[str, SpanTotals]:
        """Per-vehicle sums over windows with stop in (start_ms, end_ms], ordered by vehicle id.

        Summed by Flux (plain float addition, a few ulps from exact, like the embedded hourly rollups).
        """
        records = self._records("vehicle_totals", {"_start": _time(start_ms), "_stop": _time(end_ms)})
        totals = {values["vehicle_id"]: totals_from_record(values) for values in records}
        return dict(sorted(totals.items()))

    def fleet_hourly_energy(self, window_ms: int, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        """As the SQLite store's: one fleet-totals query per hour of the period."""
        result = []
        cursor = start_ms
        while cursor < end_ms:
            stop = min((cursor // 3_600_000 + 1) * 3_600_000, end_ms)
            totals = self.vehicle_totals(window_ms, cursor, stop)
            if totals:
                result.append((stop, math.fsum(t.ac_kwh for t in totals.values()),
                               math.fsum(t.dc_kwh for t in totals.values())))
            cursor = stop
        return result

    def ping(self) -> None:
        """Raise StorageUnavailable unless InfluxDB answers its ping."""
        if not self._call("ping", self.client.ping):
            raise StorageUnavailable(f"InfluxDB at {self.client.url} does not answer its ping")

    def _records(self, name: str, params: dict[str, object]) -> list[dict[str, Any]]:
        query = self._queries[name]
        params = {"_bucket": self.bucket, **params}
        query.check_params(params)
        tables = self._call(f"query {name}", self._query_api.query, query.source, self.org, params)
        return [record.values for table in tables for record in table.records]

    def _call(self, action: str, fn: Any, *args: Any) -> Any:
        """Run one client call; the client's failures come out as StorageUnavailable."""
        from influxdb_client.client.flux_csv_parser import FluxCsvParserException, FluxQueryException
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args)
        except ApiException as err:
            raise StorageUnavailable(f"InfluxDB at {self.client.url} answered {err.status} to {action}: "
                                     f"{_api_message(err)}") from err
        except HTTPError as err:  # connection refused, DNS, timeouts: urllib3 wraps them all
            reason = getattr(err, "reason", None) or err
            raise StorageUnavailable(f"cannot reach InfluxDB at {self.client.url} ({action}): {reason}") from err
        except FluxQueryException as err:  # an error table in the middle of the answer
            raise StorageUnavailable(f"InfluxDB failed {action}: {err.message}") from err
        except FluxCsvParserException as err:
            raise StorageUnavailable(f"unreadable answer from InfluxDB to {action}: {err}") from err


def _api_message(err: Any) -> str:
    import json

    try:
        return str(json.loads(err.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.reason or err.body or "")
