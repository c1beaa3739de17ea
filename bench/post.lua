-- post.lua - wrk script for bench/suite.sh and bench/soak.sh: POST one
-- 2 KB JSON message per request with a Bearer key.
--
-- Environment (read by every wrk thread):
--   MG_BODY   file holding the JSON body (bench/suite.py json SIZE FILE)
--   MG_KEY    API key sent as "Authorization: Bearer MG_KEY"
--   MG_PATH   request path (default /v1/messages)
-- wrk runs for its -d duration; the benchmark counts what was accepted
-- (202) and, for end-to-end figures, waits until the sink has them all.
-- done() prints one line "wrkjson {...}" with the request count, the
-- status counts, the duration and latency percentiles (microseconds).

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

local function readfile(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- a static request (no request() function): wrk builds it once
wrk.method = "POST"
wrk.path = os.getenv("MG_PATH") or "/v1/messages"
wrk.body = readfile(os.getenv("MG_BODY"))
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("MG_KEY") or "none")
wrk.headers["Content-Type"] = "application/json"

function init(args)
  s2xx, sother = 0, 0
end

function response(status, headers, body)
  if status == 202 then
    s2xx = s2xx + 1
  else
    sother = sother + 1
    if sother <= 3 then
      io.stderr:write("post.lua: status " .. status .. ": " .. (body or "") .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local acc, other = 0, 0
  for _, t in ipairs(threads) do
    acc = acc + (t:get("s2xx") or 0)
    other = other + (t:get("sother") or 0)
  end
  io.write(string.format(
    'wrkjson {"requests":%d,"accepted":%d,"other":%d,"duration_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,' ..
    '"lat_p50_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, acc, other, summary.duration,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
