-- Delete KEYS[1] (the lock) only if it still holds our value ARGV[1], then hand
-- over: the first live waiter in KEYS[2] (expiries in KEYS[3]) gets a reservation
-- KEYS[4] for ARGV[3] ms and is woken on its own channel ARGV[2] .. "|" .. its value;
-- with nobody queued, channel ARGV[2] wakes everyone.
-- Only the chosen waiter wakes, so a herd of waiters does not stampede.
-- ARGV[4] (optional): hand over to this waiter instead, for ARGV[5] ms, if it is still
-- queued and still subscribed (a process that died has no subscription left).
-- Returns 0 when the key is gone or holds someone else's value; 1 when released;
-- 2 when handed over to the waiter ARGV[4].
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local waiters, expiries, reserved_key = KEYS[2], KEYS[3], KEYS[4]
local target, head, hold = ARGV[4] or '', '', ARGV[3]
if redis.call('EXISTS', waiters) == 1 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local stale = redis.call('ZRANGEBYSCORE', expiries, '-inf', now_ms)
  for _, member in ipairs(stale) do redis.call('ZREM', waiters, member) end
  if #stale > 0 then redis.call('ZREMRANGEBYSCORE', expiries, '-inf', now_ms) end
  if target ~= '' and redis.call('ZSCORE', waiters, target)
      and redis.call('PUBSUB', 'NUMSUB', ARGV[2] .. '|' .. target)[2] > 0 then
    head, hold = target, ARGV[5]
  else
    target = ''
    local first = redis.call('ZRANGE', waiters, 0, 0)
    if first[1] then head = first[1] end
  end
  if head ~= '' then
    redis.call('ZREM', waiters, head)
    redis.call('ZREM', expiries, head)
    redis.call('SET', reserved_key, head, 'PX', hold)
  end
else
  target = ''
end
if head == '' then
  redis.call('PUBLISH', ARGV[2], '')
else
  redis.call('PUBLISH', ARGV[2] .. '|' .. head, '')
end
if target ~= '' then return 2 end
return 1
