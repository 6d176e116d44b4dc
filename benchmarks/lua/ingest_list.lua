-- POST /v1/ingest with a JSON list of <size> meter readings, every reading new.
-- args: <run tag> <write token> <size>
-- Like a gateway reporting for its devices: thread t posts for the same <size> meters
-- "BL-<tag>-<t>-<i>" every time, and each request is one second later than the last (starting
-- an hour ago), so every reading is a new (device, timestamp) and inserts a row (duplicates would
-- be no-op inserts and flatter the figure) while the device set stays fixed, as in a real fleet.
-- benchmarks/ingest_lists.py builds the same rows for its raw SQLite baseline.

local counter = 0
local size, heads, start, headers

function init(args)
   size = tonumber(args[3])
   headers = { ["Authorization"] = "Token " .. args[2], ["Content-Type"] = "application/json" }
   start = os.time() - 3600
   heads = {}
   for i = 1, size do
      heads[i] = '{"meterId":"BL-' .. args[1] .. '-' .. thread_index .. '-' .. i ..
                 '","kwhConsumedAc":0.25,"voltage":230.0,"timestamp":"'
   end
end

function request()
   counter = counter + 1
   local stamp = os.date("!%Y-%m-%dT%H:%M:%SZ", start + counter)
   local parts = {}
   for i = 1, size do
      parts[i] = heads[i] .. stamp .. '"}'
   end
   return wrk.format("POST", "/v1/ingest", headers, "[" .. table.concat(parts, ",") .. "]")
end
