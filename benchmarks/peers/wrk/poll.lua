-- GET the URL (a long-poll), Authorization from WRK_AUTHORIZATION.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "GET"
add_auth()
