-- The release benchmarks' load (bench/releases.sh, bench/ingress.sh's scaling run,
-- crates/skiff/tests/releases.rs and the cluster tests): keep-alive GET / with every 5th
-- request (`-- N` after the URL: every Nth) a POST /echo with a small body (a POST may not be
-- retried once sent, so only withdrawing, draining, then signalling an instance keeps it from
-- failing). Every socket error (connect, read, write, timeout) and
-- every status >= 400 is a failed request. At the end it prints the count of each status,
-- the body of the first failure (the ingress says why in it) and one machine-readable line:
--   mixed: requests=N failed=F socket_errors=S status_errors=B p99_ms=P duration_s=D
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local n = 0
local every = 5
local body = string.rep("x", 64)

function init(args)
  statuses = {}
  first = ""
  every = tonumber(args[1]) or 5
end

function request()
  n = n + 1
  if n % every == 0 then
    local h = {}
    for k, v in pairs(wrk.headers) do h[k] = v end
    h["Content-Type"] = "text/plain"
    return wrk.format("POST", "/echo", h, body)
  end
  return wrk.format("GET", "/")
end

function response(status, headers, resp)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 400 and first == "" then
    first = resp or ""
  end
end

function done(summary, latency, requests)
  local by, first_failure = {}, ""
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      by[status] = (by[status] or 0) + count
    end
    local f = t:get("first")
    if first_failure == "" and f ~= "" then first_failure = f end
  end
  local status_errors = 0
  for status, count in pairs(by) do
    io.write(string.format("status %d: %d\n", status, count))
    if status >= 400 then status_errors = status_errors + count end
  end
  if first_failure ~= "" then
    io.write("first failure: " .. first_failure .. "\n")
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    "mixed: requests=%d failed=%d socket_errors=%d status_errors=%d p99_ms=%.2f duration_s=%.2f\n",
    summary.requests, socket_errors + status_errors, socket_errors, status_errors,
    latency:percentile(99) / 1000, summary.duration / 1e6))
end
