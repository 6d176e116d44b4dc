-- Shared by every benchmark scenario (benchmarks/harness.py prepends this to the scenario file).
-- setup() numbers the wrk threads (global `thread_index` in each thread), response() counts
-- non-2xx answers per thread, done() prints one JSON line the harness parses.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_index", #threads)
end

non2xx = 0
partial = 0  -- 207: a list where some readings were rejected (2xx, but not a clean write)

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   elseif status == 207 then
      partial = partial + 1
   end
end

function done(summary, latency, requests)
   local bad, part = 0, 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      part = part + (thread:get("partial") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
      '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"non2xx":%.0f,"partial_207":%.0f},' ..
      '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"p99.9":%.0f,"mean":%.1f,"max":%.0f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, bad, part,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.mean, latency.max))
end
