-- Shared by the request-path wrk scripts (requests.py runs them; dofile'd by each).
--
-- Environment:
--   WRK_AUTHORIZATION  the Authorization header's value, when set and not empty
--   WRK_COUNT_STATUS   "1": count every answer's status (a response() callback, which
--                      costs wrk some CPU per answer); otherwise wrk's own count of
--                      answers >= 400 is all there is
--
-- done() prints one line, "WRK_SUMMARY <json>": requests, bytes, duration, wrk's error
-- counts, latency percentiles (µs) and, with WRK_COUNT_STATUS, the status histogram.

function add_auth()
  local auth = os.getenv("WRK_AUTHORIZATION")
  if auth ~= nil and auth ~= "" then
    wrk.headers["Authorization"] = auth
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if os.getenv("WRK_COUNT_STATUS") == "1" then
  statuses = {}
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s":%s', tostring(k), tostring(v)))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local counted = {}
  local any = false
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    if s ~= nil then
      for status, n in pairs(s) do
        counted[status] = (counted[status] or 0) + n
        any = true
      end
    end
  end
  local e = summary.errors
  local out = {
    requests = summary.requests,
    bytes = summary.bytes,
    duration_us = summary.duration,
    errors = json_object({connect = e.connect, read = e.read, write = e.write,
                          status = e.status, timeout = e.timeout}),
    latency_us = json_object({p50 = latency:percentile(50), p90 = latency:percentile(90),
                              p99 = latency:percentile(99), max = latency.max,
                              mean = string.format("%.1f", latency.mean)}),
  }
  if any then
    out.statuses = json_object(counted)
  end
  io.write("WRK_SUMMARY " .. json_object(out) .. "\n")
end
