-- wrk script: POST a JSON body template read from the file given after "--", filling its
-- @@HOOK@@, @@ENC@@ and @@PAT@@ placeholders with values unique to each request (a new
-- hookInstance, encounter and patient: every call is a new ordering session, as in
-- production), and print a one-line JSON summary ("BENCH-JSON …") for bench/loadgen.py.
-- Usage: wrk -t2 -c8 -d10s -s bench/post.lua http://127.0.0.1:PORT/path \
--            -- template.json SALT [TOKENS THREADS]
-- SALT, a small number, makes this run's values differ from every other run's. TOKENS is a
-- file of signed JWTs, one per line, each sent once as "Authorization: Bearer …" (thread t of
-- THREADS uses lines t+1, t+1+THREADS, …); when they run out the server answers 401 (an error).

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local pieces, names, path, headers, salt, tokens, nthreads

function init(args)
  local f = assert(io.open(args[1], "rb"), "cannot open body template " .. tostring(args[1]))
  local body = f:read("*a")
  f:close()
  pieces, names = {}, {}
  local pos = 1
  while true do
    local s, e, name = string.find(body, "@@(%u+)@@", pos)
    if not s then break end
    table.insert(pieces, string.sub(body, pos, s - 1))
    table.insert(names, name)
    pos = e + 1
  end
  table.insert(pieces, string.sub(body, pos))
  salt = tonumber(args[2] or "0")
  if args[3] and args[3] ~= "" then
    tokens = {}
    for line in io.lines(args[3]) do tokens[#tokens + 1] = line end
    nthreads = tonumber(args[4] or "1")
  end
  path = wrk.path
  headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json"}
end

function request()
  counter = counter + 1
  local key = string.format("%03x%012x", salt * 16 + (tid or 0), counter)
  local values = {
    HOOK = "b3e1c7a0-0000-4000-8" .. string.sub(key, 1, 3) .. "-" .. string.sub(key, 4),
    ENC = "bench-enc-" .. key,
    PAT = "pat-bench-" .. key,
  }
  if tokens then
    headers["Authorization"] = "Bearer " .. (tokens[(counter - 1) * nthreads + (tid or 0) + 1] or "exhausted")
  end
  local out = {pieces[1]}
  for i, name in ipairs(names) do
    out[#out + 1] = values[name]
    out[#out + 1] = pieces[i + 1]
  end
  return wrk.format("POST", path, headers, table.concat(out))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
