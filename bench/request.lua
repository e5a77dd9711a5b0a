-- wrk script shared by every scenario of bench/compare.py. The request comes from the
-- environment (WRK_METHOD, WRK_PATH, WRK_BODY, WRK_CONTENT_TYPE, WRK_RANGE, WRK_PREFER); the result is one
-- JSON line on stdout, so the harness does not parse wrk's human-readable report.
wrk.method = os.getenv("WRK_METHOD") or "GET"
wrk.path = os.getenv("WRK_PATH") or "/"
local body = os.getenv("WRK_BODY")
if body and #body > 0 then
  wrk.body = body
  wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
end
local prefer = os.getenv("WRK_PREFER")
if prefer and #prefer > 0 then
  wrk.headers["Prefer"] = prefer
end
local range = os.getenv("WRK_RANGE")
if range and #range > 0 then
  wrk.headers["Range"] = range
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
