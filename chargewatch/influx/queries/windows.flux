// Efficiency windows of every vehicle whose stop lies in (_start, _stop], one row per window,
// ordered by stop, vehicle and meter: the alert evaluator's spans (vehicle_windows.flux reads one
// vehicle).
//
// Columns: _time (window stop), vehicle_id, meter_id (absent or null for an unpaired vehicle),
// ac_kwh, dc_kwh (float), ac_readings, dc_readings (int), avg_battery_temp and efficiency (float,
// absent or null when the task wrote none). Same contract as SqliteEfficiencyStore.windows().
//
// (_start, _stop] is range(start: _start + 1ns, stop: _stop + 1ns): no filter on _time, so InfluxDB
// can apply the whole filter in its storage engine.
//
// params: _bucket: string, _start: time, _stop: time
import "date"

from(bucket: _bucket)
    |> range(start: date.add(d: 1ns, to: _start), stop: date.add(d: 1ns, to: _stop))
    |> filter(fn: (r) => r._measurement == "efficiency")
    |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
    |> drop(columns: ["_start", "_stop", "_measurement"])
    |> group()
    |> sort(columns: ["_time", "vehicle_id", "meter_id"])
