-- POST a batch of WRK_BATCH (default 100) copies of the message WRK_BODY per request:
-- {"messages":[m,m,...]}, as pushsvc's POST /v1/publish takes a batch.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local message = os.getenv("WRK_BODY")
local count = tonumber(os.getenv("WRK_BATCH") or "100")
local messages = {}
for i = 1, count do
  messages[i] = message
end

wrk.method = "POST"
wrk.body = '{"messages":[' .. table.concat(messages, ",") .. "]}"
wrk.headers["Content-Type"] = "application/json"
add_auth()
