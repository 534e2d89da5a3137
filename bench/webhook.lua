-- wrk script: POST batches of transaction events (JSON lines) with unique
-- ids, a share of them over ₹1,00,000 so the fraud rule fires.
-- EVENTS_PER_REQUEST (env) events per body; TOKEN (env) bearer token.
local per = tonumber(os.getenv("EVENTS_PER_REQUEST") or "10")
local token = os.getenv("TOKEN") or ""
local thread_id = 0
local counter = 0
local statuses = { "ok", "ok", "ok", "failed", "pending" }

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-ndjson"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  local lines = {}
  for i = 1, per do
    counter = counter + 1
    local amount = (counter * 7919) % 150000
    lines[i] = string.format(
      '{"id":"w%d-%d","amount":%d,"currency":"INR","merchant":"m-%d","merchant_class":"c%d","status":"%s"}',
      tid, counter, amount, counter % 50, counter % 5, statuses[counter % 5 + 1])
  end
  return wrk.format(nil, nil, nil, table.concat(lines, "\n"))
end
