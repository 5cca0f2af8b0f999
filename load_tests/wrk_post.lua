-- wrk script for the load tools (load_tests/harness.py run_wrk): POSTs one image file per request
-- (closed loop: each connection sends its next request when the previous one answered) and prints
-- a one-line JSON summary.
--   WRK_IMAGE=bus.jpg wrk -t1 -c8 -d15s -s load_tests/wrk_post.lua http://127.0.0.1:8000/v1/models/NAME/predict
local path = assert(os.getenv("WRK_IMAGE"), "set WRK_IMAGE to the image file to send")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "image/jpeg"
-- More headers, one "Name: value" per line (e.g. X-Request-Timeout-Ms: 300).
for name, value in string.gmatch(os.getenv("WRK_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
