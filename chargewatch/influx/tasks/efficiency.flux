// Efficiency windows of an EV fleet's charging, installed by chargewatch (`chargewatch influx setup`).
// chargewatch's embedded task runner computes the same windows by the same definition, below; for
// the same readings both give the same numbers.
//
// Windows are `window_length` long, aligned to the epoch, half-open [start, stop) and labelled by their
// stop. Per (vehicle_id, meter_id) and window: ac_kwh = sum of kwh_consumed_ac of the meter
// points that carry a vehicle_id (unpaired meter readings belong to no window), dc_kwh = sum of
// kwh_delivered_dc of the vehicle points, ac_readings/dc_readings count them, avg_battery_temp is
// the mean battery_temp (absent without vehicle readings), efficiency = dc_kwh / ac_kwh when
// ac_kwh >= min_energy_kwh (absent otherwise: idle). A window exists when either side has a
// reading; the missing side is 0.0 kWh and 0 readings. Points without a meter_id (an unpaired
// vehicle) make windows without the meter_id tag.
//
// Every run recomputes the `recompute_windows` windows that closed by the run's scheduled time
// (now() in a task run) and rewrites them: same series + time overwrites, so reruns and late data
// are idempotent. `offset` lets stragglers of the newest window land first.
//
// One pass, no join: both measurements are read as one stream, grouped per (vehicle, meter),
// windowed, and folded by reduce() into both sides' sums at once. A join would fail the run when
// a side is empty ("cannot join on an empty table"), and a pivot would leave a table without
// the other side's columns.
//
// Written to bucket `efficiency_bucket`, measurement "efficiency", tags vehicle_id and meter_id,
// time = window stop. Field types are fixed forever (a type change makes writes fail with a
// field type conflict): ac_kwh, dc_kwh, efficiency, avg_battery_temp are floats; ac_readings and
// dc_readings are integers.
//
// `chargewatch influx setup` rewrites the `option` lines below from the settings
// (CHARGEWATCH_EFFICIENCY__..., CHARGEWATCH_INFLUX__...); keep each on one line.
import "date"
import "internal/debug"

option task = {name: "efficiency", every: 5m, offset: 30s}
option window_length = 5m
option recompute_windows = 6
option min_energy_kwh = 0.1
option telemetry_bucket = "telemetry"
option efficiency_bucket = "efficiency"

stop = date.truncate(t: now(), unit: window_length)
start = time(v: int(v: stop) - recompute_windows * int(v: window_length))

efficiency_windows =
    from(bucket: telemetry_bucket)
        |> range(start: start, stop: stop)
        |> filter(
            fn: (r) =>
                (r._measurement == "meter" and r._field == "kwh_consumed_ac")
                    or (r._measurement == "vehicle" and (r._field == "kwh_delivered_dc" or r._field == "battery_temp")),
        )
        |> filter(fn: (r) => exists r.vehicle_id)
        |> group(columns: ["vehicle_id", "meter_id"])
        |> window(every: window_length)
        |> reduce(
            identity: {
                ac_kwh: 0.0,
                ac_readings: 0,
                dc_kwh: 0.0,
                dc_readings: 0,
                battery_temp_sum: 0.0,
                battery_temp_readings: 0,
            },
            fn: (r, accumulator) => {
                is_ac = r._measurement == "meter"
                is_dc = r._measurement == "vehicle" and r._field == "kwh_delivered_dc"
                is_temp = r._measurement == "vehicle" and r._field == "battery_temp"

                return {
                    ac_kwh: if is_ac then accumulator.ac_kwh + r._value else accumulator.ac_kwh,
                    ac_readings: if is_ac then accumulator.ac_readings + 1 else accumulator.ac_readings,
                    dc_kwh: if is_dc then accumulator.dc_kwh + r._value else accumulator.dc_kwh,
                    dc_readings: if is_dc then accumulator.dc_readings + 1 else accumulator.dc_readings,
                    battery_temp_sum:
                        if is_temp then
                            accumulator.battery_temp_sum + r._value
                        else
                            accumulator.battery_temp_sum,
                    battery_temp_readings:
                        if is_temp then
                            accumulator.battery_temp_readings + 1
                        else
                            accumulator.battery_temp_readings,
                }
            },
        )
        |> map(
            fn: (r) =>
                ({r with
                    _time: r._stop,
                    _measurement: "efficiency",
                    avg_battery_temp:
                        if r.battery_temp_readings > 0 then
                            r.battery_temp_sum / float(v: r.battery_temp_readings)
                        else
                            debug.null(type: "float"),
                    efficiency:
                        if r.ac_kwh >= min_energy_kwh and r.ac_kwh > 0.0 then
                            r.dc_kwh / r.ac_kwh
                        else
                            debug.null(type: "float"),
                }),
        )
        |> drop(columns: ["_start", "_stop", "battery_temp_sum", "battery_temp_readings"])
        |> group(columns: ["vehicle_id", "meter_id"])

efficiency_windows
    |> to(
        bucket: efficiency_bucket,
        tagColumns: ["vehicle_id", "meter_id"],
        fieldFn: (r) =>
            ({
                ac_kwh: r.ac_kwh,
                dc_kwh: r.dc_kwh,
                efficiency: r.efficiency,
                ac_readings: r.ac_readings,
                dc_readings: r.dc_readings,
                avg_battery_temp: r.avg_battery_temp,
            }),
    )
