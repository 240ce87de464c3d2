-- wrk script: POST one chat-completions body on every request.
--
--   wrk -c16 -d8s -s bench/chat.lua http://127.0.0.1:PORT/v1/chat/completions -- BODY_FILE [KEY]
--
-- KEY is sent as the client's bearer token (LiteLLM's proxy checks it; Archway
-- replaces it with the provider's).
-- The body is read once per thread from BODY_FILE (gateway_bench.py writes a 2 KB
-- one), and `done` prints one JSON line that gateway_bench.py parses, so no
-- figure is scraped from wrk's human-readable report.

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (args[2] or "sk-bench-client")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
