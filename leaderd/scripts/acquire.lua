-- Acquire KEYS[1] (the lock) for value ARGV[1] with a lease of ARGV[2] ms.
-- KEYS[2] fencing counter, KEYS[3] waiters (zset: value -> arrival ms),
-- KEYS[4] waiter expiries (zset: value -> ms), KEYS[5] hand-over reservation;
-- all in the lock's hash slot.
-- ARGV[3] == "1": ARGV[1] is a JSON object; it is stored with "token":<token>
-- appended, so readers of the key see the holder's fencing token.
-- ARGV[4] > 0: the caller is a waiter; if it does not get the lock it is queued
-- (first arrival kept) for ARGV[4] ms, so a release can hand the lock to it.
-- The fencing counter becomes max(counter + 1, Redis TIME in microseconds): it
-- stays monotonic even if Redis loses the counter, unless Redis's clock steps back.
-- A key that already holds our value (a retry after an attempt that timed out
-- on the client but succeeded here) is extended and keeps its token.
-- Returns {1, token, stored value} when acquired; {0, holder, pttl} when held;
-- {0, false, pttl} when free but reserved for another waiter for pttl ms.
if redis.replicate_commands then redis.replicate_commands() end
local key, fence, waiters, expiries, reserved_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local value, px, embed, wait_ms = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local prefix = value
if embed then prefix = string.sub(value, 1, -2) .. ',"token":' end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function not_acquired(holder, pttl)
  if wait_ms > 0 then
    local now_ms = math.floor(now_us / 1000)
    redis.call('ZADD', waiters, 'NX', now_ms, value)
    redis.call('ZADD', expiries, now_ms + wait_ms, value)
  end
  return {0, holder, pttl}
end

local current = redis.call('GET', key)
if current then
  if current == value or (embed and string.sub(current, 1, #prefix) == prefix) then
    redis.call('PEXPIRE', key, px)
    return {1, redis.call('GET', fence) or '0', current}
  end
  return not_acquired(current, redis.call('PTTL', key))
end

local reserved = redis.call('GET', reserved_key)
if reserved and reserved ~= value then
  return not_acquired(false, redis.call('PTTL', reserved_key))
end
if reserved then redis.call('DEL', reserved_key) end
if wait_ms > 0 then
  redis.call('ZREM', waiters, value)
  redis.call('ZREM', expiries, value)
end

local token = math.max((tonumber(redis.call('GET', fence)) or 0) + 1, now_us)
token = string.format('%d', token)
redis.call('SET', fence, token)
local stored = value
if embed then stored = prefix .. token .. '}' end
redis.call('SET', key, stored, 'PX', px)
return {1, token, stored}
