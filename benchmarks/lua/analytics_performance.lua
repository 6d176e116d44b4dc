-- GET /v1/analytics/performance/<vehicle> over a fixed period, for a random vehicle per request.
-- args: <pairs> <read token> <query string with start and stop>
-- Vehicle ids are simulator.devices.pair_ids: VEHICLE_001 ... VEHICLE_999, VEHICLE_1000 ...

local headers, pairs_count, query

function init(args)
   pairs_count = tonumber(args[1])
   headers = { ["Authorization"] = "Token " .. args[2] }
   query = args[3]
   math.randomseed(os.time() * 100 + thread_index)
end

function request()
   local n = math.random(1, pairs_count)
   local id = n < 1000 and string.format("VEHICLE_%03d", n) or string.format("VEHICLE_%d", n)
   return wrk.format("GET", "/v1/analytics/performance/" .. id .. "?" .. query, headers, nil)
end
