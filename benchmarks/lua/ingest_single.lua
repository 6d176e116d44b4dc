-- POST /v1/ingest with one meter reading per request, a different reading every time.
-- args: <run tag> <write token>
-- meterId "BENCH-<tag>-<thread>-<n>" is unique per request, so no request is a duplicate (a
-- duplicate would be a cheap no-op insert); the timestamp is 30 s before now, RFC 3339 'Z' form.

local counter = 0
local prefix, headers, stamp, stamp_second

function init(args)
   prefix = '{"meterId":"BENCH-' .. args[1] .. '-' .. thread_index .. '-'
   headers = { ["Authorization"] = "Token " .. args[2], ["Content-Type"] = "application/json" }
end

local function timestamp()
   local now = os.time()
   if now ~= stamp_second then
      stamp_second = now
      stamp = os.date("!%Y-%m-%dT%H:%M:%SZ", now - 30)
   end
   return stamp
end

function request()
   counter = counter + 1
   local body = prefix .. counter .. '","kwhConsumedAc":0.25,"voltage":230.0,"timestamp":"' .. timestamp() .. '"}'
   return wrk.format("POST", "/v1/ingest", headers, body)
end
