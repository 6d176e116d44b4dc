// Per-vehicle sums over the efficiency windows whose stop lies in (_start, _stop]: the fleet
// summary. One row per vehicle, ordered by vehicle_id, with ac_kwh, dc_kwh (float), ac_readings,
// dc_readings, windows (int), battery_temp_sum (float: sum of avg_battery_temp * dc_readings over
// the windows that have a temperature) and battery_temp_readings (int). Same contract as
// SqliteEfficiencyStore.vehicle_totals(); efficiency over the span is dc_kwh / ac_kwh (a ratio of
// sums, never a mean of ratios).
//
// Integer and float fields are summed in separate tables (grouped with _field) and only meet
// after pivot() has put them in separate columns: a table mixing them fails with "schema
// collision". So every stream is regrouped by (vehicle_id, _field) before union(): union()
// merges input tables that share a group key, and map() leaves only vehicle_id in the key, which
// merged the int window count with the float temperature sum (InfluxDB 2.7 answered 500). A
// vehicle without DC readings in the span has no battery_temp_* columns.
//
// params: _bucket: string, _start: time, _stop: time
import "date"
import "influxdata/influxdb/schema"

windows =
    from(bucket: _bucket)
        |> range(start: _start, stop: date.add(d: 1ns, to: _stop))
        |> filter(fn: (r) => r._measurement == "efficiency" and r._time > _start)

sums =
    windows
        |> filter(
            fn: (r) =>
                r._field == "ac_kwh" or r._field == "dc_kwh" or r._field == "ac_readings"
                    or r._field == "dc_readings",
        )
        |> group(columns: ["vehicle_id", "_field"])
        |> sum()

window_counts =
    windows
        |> filter(fn: (r) => r._field == "ac_kwh")
        |> group(columns: ["vehicle_id"])
        |> count()
        |> map(fn: (r) => ({vehicle_id: r.vehicle_id, _field: "windows", _value: r._value}))
        |> group(columns: ["vehicle_id", "_field"])

temperatures =
    windows
        |> filter(fn: (r) => r._field == "avg_battery_temp" or r._field == "dc_readings")
        |> schema.fieldsAsCols()
        |> filter(fn: (r) => exists r.avg_battery_temp and r.dc_readings > 0)
        |> group(columns: ["vehicle_id"])
        |> reduce(
            identity: {battery_temp_sum: 0.0, battery_temp_readings: 0},
            fn: (r, accumulator) =>
                ({
                    battery_temp_sum: accumulator.battery_temp_sum + r.avg_battery_temp * float(v: r.dc_readings),
                    battery_temp_readings: accumulator.battery_temp_readings + r.dc_readings,
                }),
        )

temperature_sums =
    temperatures
        |> map(fn: (r) => ({vehicle_id: r.vehicle_id, _field: "battery_temp_sum", _value: r.battery_temp_sum}))
        |> group(columns: ["vehicle_id", "_field"])

temperature_counts =
    temperatures
        |> map(
            fn: (r) =>
                ({vehicle_id: r.vehicle_id, _field: "battery_temp_readings", _value: r.battery_temp_readings}),
        )
        |> group(columns: ["vehicle_id", "_field"])

union(tables: [sums, window_counts, temperature_sums, temperature_counts])
    |> pivot(rowKey: ["vehicle_id"], columnKey: ["_field"], valueColumn: "_value")
    |> group()
    |> sort(columns: ["vehicle_id"])
