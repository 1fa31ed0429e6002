-- wrk script for scripts/bench-serving: POST one file as the body of every request and print
-- the result as one JSON line.
--
-- Environment: BENCH_BODY (path of the body), BENCH_CONTENT_TYPE (default image/png), BENCH_HEADER
-- (optional extra header "Name: value", e.g. the OIP v2 binary tensor's
-- "Inference-Header-Content-Length: 123").
-- The last line wrk prints is "BENCH_RESULT {...}": completed responses, the duration, wrk's
-- error counts (status = answers with status > 399) and latency percentiles in microseconds.

local path = assert(os.getenv("BENCH_BODY"), "set BENCH_BODY to the file to POST")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "image/png"
local extra = os.getenv("BENCH_HEADER") or ""
if extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  assert(name, "BENCH_HEADER must be 'Name: value'")
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
