// Per-vehicle sums over the efficiency windows whose stop lies in (_start, _stop]: the fleet
// summary. One row per vehicle, ordered by vehicle_id, with ac_kwh, dc_kwh (float), ac_readings,
// dc_readings, windows (int), battery_temp_sum (float: sum of avg_battery_temp * dc_readings over
// the windows that have a temperature) and battery_temp_readings (int). Same contract as
// SqliteEfficiencyStore.vehicle_totals(); efficiency over the span is dc_kwh / ac_kwh (a ratio of
// sums, never a mean of ratios).
//
// Speed: (_start, _stop] is written as range(start: _start + 1ns, stop: _stop + 1ns), and the sums
// and counts are `from |> range |> filter |> sum()/count()`, so InfluxDB computes them in its
// storage engine, one value per series (vehicle, meter, field); Flux only adds the few per-meter
// values of a vehicle. Only the temperature needs a per-window product. (The first version
// filtered on _time and folded every window through reduce(): 30 s for 1,000 vehicles x 24 h.)
//
// Types: integer and float fields are summed in separate tables (grouped with _field) and only
// meet after pivot() has put them in separate columns: a table mixing them fails with "schema
// collision". So every stream is grouped by (vehicle_id, _field) before union(), which merges
// input tables that share a group key. A vehicle without DC readings in the span has no
// battery_temp_* columns.
//
// params: _bucket: string, _start: time, _stop: time
import "date"

start = date.add(d: 1ns, to: _start)
stop = date.add(d: 1ns, to: _stop)

sums =
    from(bucket: _bucket)
        |> range(start: start, stop: stop)
        |> filter(
            fn: (r) =>
                r._measurement == "efficiency" and (r._field == "ac_kwh" or r._field == "dc_kwh"
                    or r._field == "ac_readings" or r._field == "dc_readings"),
        )
        |> sum()
        |> group(columns: ["vehicle_id", "_field"])
        |> sum()

window_counts =
    from(bucket: _bucket)
        |> range(start: start, stop: stop)
        |> filter(fn: (r) => r._measurement == "efficiency" and r._field == "ac_kwh")
        |> count()
        |> group(columns: ["vehicle_id"])
        |> sum()
        |> map(fn: (r) => ({vehicle_id: r.vehicle_id, _field: "windows", _value: r._value}))
        |> group(columns: ["vehicle_id", "_field"])

temperatures =
    from(bucket: _bucket)
        |> range(start: start, stop: stop)
        |> filter(
            fn: (r) => r._measurement == "efficiency" and (r._field == "avg_battery_temp" or r._field == "dc_readings"),
        )
        |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
        |> filter(fn: (r) => exists r.avg_battery_temp and r.dc_readings > 0)
        |> map(
            fn: (r) =>
                ({
                    vehicle_id: r.vehicle_id,
                    weighted: r.avg_battery_temp * float(v: r.dc_readings),
                    readings: r.dc_readings,
                }),
        )
        |> group(columns: ["vehicle_id"])

temperature_sums =
    temperatures
        |> sum(column: "weighted")
        |> map(fn: (r) => ({vehicle_id: r.vehicle_id, _field: "battery_temp_sum", _value: r.weighted}))
        |> group(columns: ["vehicle_id", "_field"])

temperature_counts =
    temperatures
        |> sum(column: "readings")
        |> map(fn: (r) => ({vehicle_id: r.vehicle_id, _field: "battery_temp_readings", _value: r.readings}))
        |> group(columns: ["vehicle_id", "_field"])

union(tables: [sums, window_counts, temperature_sums, temperature_counts])
    |> pivot(rowKey: ["vehicle_id"], columnKey: ["_field"], valueColumn: "_value")
    |> group()
    |> sort(columns: ["vehicle_id"])
