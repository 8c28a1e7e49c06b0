-- wrk script for bench/peer.py: POST prepared bodies, one line of a file each.
--
--   wrk -t1 -c32 -d10s -s bench/wrk_bodies.lua URL -- BODIES PATH CONTENT_TYPE once|cycle ['Name: value' ...]
--
-- `once` sends every body at most once (single-use ID tokens, so replays are never measured); when the
-- file runs out the thread stops and the result says `exhausted` (the caller retries with more bodies).
-- `cycle` starts over (idempotent requests such as introspection). Every response that is not 2xx is
-- counted (the first one is kept for the report), and done() prints one machine-readable line:
--   WRK_RESULT {"requests": .., "duration_us": .., "non2xx": .., "p50_us": .., "p99_us": .., ...}
-- followed, if there was one, by  WRK_FIRST_ERROR <status> <body excerpt>.

local bodies, count, next_body = {}, 0, 0
local path, headers, cycle
non2xx, exhausted, first_error = 0, 0, ""

function init(args)
  for line in io.lines(args[1]) do
    count = count + 1
    bodies[count] = line
  end
  path = args[2]
  headers = { ["Content-Type"] = args[3] }
  cycle = args[4] == "cycle"
  for i = 5, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    headers[name] = value
  end
end

function request()
  next_body = next_body + 1
  if next_body > count then
    if cycle then
      next_body = 1
    else
      -- Out of single-use bodies: stop rather than replay one; this run is then retried.
      exhausted = 1
      wrk.thread:stop()
      return wrk.format("GET", "/")
    end
  end
  return wrk.format("POST", path, headers, bodies[next_body])
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_error == "" then
      first_error = status .. " " .. (body or ""):sub(1, 300):gsub("[\r\n]", " ")
    end
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local bad, out, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    out = out + thread:get("exhausted")
    if first == "" then first = thread:get("first_error") end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "exhausted": %d, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, '
    .. '"max_us": %d}\n',
    summary.requests, summary.duration, bad, out, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
  if first ~= "" then
    io.write("WRK_FIRST_ERROR " .. first .. "\n")
  end
end
