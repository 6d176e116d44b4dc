-- POST /api/v2/write with <size> lines of line protocol, every reading new, as Telegraf sends
-- them (precision ns, one measurement per line, the id as a tag, integer-free float fields).
-- args: <run tag> <write token> <size>
-- Like ingest_list.lua: thread t writes for the same <size> meters "BL-<tag>-<t>-<i>" every
-- time, each request one second later than the last (starting an hour ago).
-- benchmarks/ingest_lists.py builds the same rows for its raw SQLite baseline.

local counter = 0
local size, heads, start, headers

function init(args)
   size = tonumber(args[3])
   headers = { ["Authorization"] = "Token " .. args[2], ["Content-Type"] = "text/plain; charset=utf-8" }
   start = os.time() - 3600
   heads = {}
   for i = 1, size do
      heads[i] = 'meter,meter_id=BL-' .. args[1] .. '-' .. thread_index .. '-' .. i ..
                 ' kwh_consumed_ac=0.25,voltage=230 '
   end
end

function request()
   counter = counter + 1
   local stamp = string.format("%d000000000", start + counter)
   local parts = {}
   for i = 1, size do
      parts[i] = heads[i] .. stamp
   end
   return wrk.format("POST", "/api/v2/write?bucket=telemetry&precision=ns", headers,
                     table.concat(parts, "\n") .. "\n")
end
