-- Delete KEYS[1] (the lock) only if it still holds our value ARGV[1], then hand
-- over: the longest-waiting live waiter in KEYS[2] (expiries in KEYS[3]) gets a
-- reservation KEYS[4] for ARGV[3] ms and is woken on its own channel
-- ARGV[2] .. "|" .. its value; with nobody queued, channel ARGV[2] wakes everyone.
-- Only the chosen waiter wakes, so a herd of waiters does not stampede.
-- Returns 1 when released, 0 when the key is gone or holds someone else's value.
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local waiters, expiries, reserved_key = KEYS[2], KEYS[3], KEYS[4]
local head = ''
if redis.call('EXISTS', waiters) == 1 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local stale = redis.call('ZRANGEBYSCORE', expiries, '-inf', now_ms)
  for _, member in ipairs(stale) do redis.call('ZREM', waiters, member) end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', expiries, '-inf', now_ms) end
  local first = redis.call('ZRANGE', waiters, 0, 0)
  if first[1] then
    head = first[1]
    redis.call('ZREM', waiters, head)
    redis.call('ZREM', expiries, head)
    redis.call('SET', reserved_key, head, 'PX', ARGV[3])
  end
end
if head == '' then
  redis.call('PUBLISH', ARGV[2], '')
else
  redis.call('PUBLISH', ARGV[2] .. '|' .. head, '')
end
return 1
