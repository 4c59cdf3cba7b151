-- wrk script of bench/flash_sale.py: every request a checkout of one unit of the hot SKU by a
-- customer of its own, with an Idempotency-Key of its own (no request is a replay, none hits
-- the per-customer rate limit). Args: <run tag> <sku>.
-- Prints one JSON line on stdout at the end: requests, seconds, status counts.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  tag = args[1] or "run"
  sku = args[2] or "SKU-HOT"
  n = 0
  s200, s202, s429, s4xx, s5xx, other = 0, 0, 0, 0, 0, 0
end

function request()
  n = n + 1
  local id = string.format("%s-%d-%d", tag, tid, n)
  local body = string.format(
    '{"customer_id":"fs-%s","location_id":"main","items":[{"sku":"%s","quantity":1}],'
      .. '"delivery":{"address":"1 Main St","lat":31.23,"lng":121.47},"payment":{"token":"tok_ok"}}',
    id, sku)
  return wrk.format("POST", "/v1/orders",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = id}, body)
end

function response(status, headers, body)
  if status == 202 then s202 = s202 + 1
  elseif status == 200 then s200 = s200 + 1
  elseif status == 429 then s429 = s429 + 1
  elseif status >= 500 then s5xx = s5xx + 1
  elseif status >= 400 then s4xx = s4xx + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local t = {s200 = 0, s202 = 0, s429 = 0, s4xx = 0, s5xx = 0, other = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
  end
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "errors_socket": %d, "status_200": %d, "status_202": %d,'
      .. ' "status_429": %d, "status_4xx": %d, "status_5xx": %d, "status_other": %d,'
      .. ' "latency_p50_ms": %.2f, "latency_p99_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    t.s200, t.s202, t.s429, t.s4xx, t.s5xx, t.other,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
