-- wrk script: POST /add_track with a unique id per request and a ~400-byte title,
-- to grow the replicated state quickly.
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  tid = tid or 1
end
local pad = string.rep("x", 400)
function request()
  counter = counter + 1
  local id = tid * 1000000000 + counter
  local body = string.format('{"id": %d, "title": "t%d %s", "artist": "bench", "duration": 200}', id, id, pad)
  return wrk.format("POST", "/add_track", {["Content-Type"] = "application/json"}, body)
end
