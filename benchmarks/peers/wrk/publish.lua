-- POST one JSON message per request (WRK_BODY, ~100 bytes), keep-alive.
-- Headers: Content-Type: application/json, Authorization from WRK_AUTHORIZATION.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
add_auth()
