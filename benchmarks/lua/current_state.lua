-- GET /v1/ingest/{meter|vehicle}/<id>/current for a random preloaded device per request.
-- args: <read token> <meters> <vehicles>
-- Device ids are METER_<n> and VEHICLE_<n>, n zero-padded to 6 digits, 1-based (as preloaded by
-- benchmarks/current_state.py).

local headers, meters, vehicles, total

function init(args)
   headers = { ["Authorization"] = "Token " .. args[1] }
   meters, vehicles = tonumber(args[2]), tonumber(args[3])
   total = meters + vehicles
   math.randomseed(os.time() * 100 + thread_index)
end

function request()
   local k = math.random(1, total)
   local path
   if k <= meters then
      path = string.format("/v1/ingest/meter/METER_%06d/current", k)
   else
      path = string.format("/v1/ingest/vehicle/VEHICLE_%06d/current", k - meters)
   end
   return wrk.format("GET", path, headers, nil)
end
