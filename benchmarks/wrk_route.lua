-- wrk script: POST routing queries in rotation, one JSON body per line of a file.
--
--   wrk -t1 -c16 -d10s --latency -s benchmarks/wrk_route.lua \
--       http://127.0.0.1:8080/kamailio/rtjson -- QUERIES.jsonl
--
-- benchmarks/http_reference.py writes QUERIES.jsonl (inbound, outbound and
-- refused queries on a generated table) and runs this. Requests are
-- formatted once in init, so the load generator spends its CPU on sockets,
-- not on Lua. At the end one line "C4WRK {json}" gives the summary in
-- microseconds, for the script to read without parsing wrk's text.

local requests = {}
local next_index = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s wrk_route.lua URL -- QUERIES.jsonl")
   end
   local headers = { ["Content-Type"] = "application/json" }
   for line in io.lines(path) do
      if #line > 0 then
         requests[#requests + 1] = wrk.format("POST", nil, headers, line)
      end
   end
   if #requests == 0 then
      error(path .. ": no queries")
   end
end

function request()
   next_index = next_index % #requests + 1
   return requests[next_index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'C4WRK {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
