-- Acquire KEYS[1] (the lock) for value ARGV[1] with a lease of ARGV[2] ms.
-- KEYS[2] fencing counter, KEYS[3] waiters (zset: value -> arrival ms),
-- KEYS[4] waiter expiries (zset: value -> ms), KEYS[5] hand-over reservation;
-- all in the lock's hash slot.
-- ARGV[3] == "1": ARGV[1] is a JSON object; it is stored with "token":<token>
-- appended, so readers of the key see the holder's fencing token.
-- ARGV[4] > 0: the caller is a waiter; if it does not get the lock it is queued
-- (first arrival kept) for ARGV[4] ms, so a release can hand the lock to it.
-- ARGV[5]: the waiter's priority (-100..100, default 0). The queue is ordered by
-- (100 - priority) * 1e13 + arrival ms: highest priority first, FIFO among equals;
-- the score stays an exact integer in a double (< 2^53).
-- The fencing counter becomes max(counter + 1, Redis TIME in microseconds): it
-- stays monotonic even if Redis loses the counter, unless Redis's clock steps back.
-- The arithmetic is on decimal strings, exact up to 2^63 - 1 (Lua numbers are
-- doubles, exact only to 2^53). A counter that is not a decimal integer is repaired
-- from TIME; one at the int64 limit is refused with an error (no larger token exists).
-- ARGV[6] (with ARGV[3] == "1"): a channel on which a new term is announced (the stored
-- value), so that watchers of an election learn of it at once.
-- A key that already holds our value (a retry after an attempt that timed out
-- on the client but succeeded here) is extended and keeps its token.
-- Returns {1, token, stored value} when acquired; {0, holder, pttl} when held;
-- {0, false, pttl} when free but reserved for another waiter for pttl ms.
if redis.replicate_commands then redis.replicate_commands() end
local key, fence, waiters, expiries, reserved_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local value, px, embed, wait_ms = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local priority = tonumber(ARGV[5] or '0') or 0
local prefix = value
if embed then prefix = string.sub(value, 1, -2) .. ',"token":' end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_us_text = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
local INT64_MAX = '9223372036854775807'

-- a > b for decimal strings without leading zeros
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end

-- a + 1 for a decimal string
local function increment(a)
  local i = #a
  while i > 0 and string.sub(a, i, i) == '9' do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #a) end
  local digit = string.char(string.byte(a, i) + 1)
  return string.sub(a, 1, i - 1) .. digit .. string.rep('0', #a - i)
end

local function next_token(stored)
  if not stored or not string.match(stored, '^%d+$') then
    return now_us_text  -- absent, or not a decimal integer: repaired from TIME
  end
  stored = string.gsub(stored, '^0+', '')
  if stored == '' then stored = '0' end
  if #stored > 19 or not greater(INT64_MAX, stored) then
    return redis.error_reply('LEADERD_FENCE fencing counter ' .. fence ..
      ' is at the int64 limit; no larger token exists (delete it only if no fenced ' ..
      'resource has seen a token above Redis TIME in microseconds)')
  end
  local candidate = increment(stored)
  if greater(now_us_text, candidate) then return now_us_text end
  return candidate
end

local function not_acquired(holder, pttl)
  if wait_ms > 0 then
    local now_ms = math.floor(now_us / 1000)
    redis.call('ZADD', waiters, 'NX', (100 - priority) * 10000000000000 + now_ms, value)
    redis.call('ZADD', expiries, now_ms + wait_ms, value)
  end
  return {0, holder, pttl}
end

local current = redis.call('GET', key)
if current then
  if current == value or (embed and string.sub(current, 1, #prefix) == prefix) then
    redis.call('PEXPIRE', key, px)
    if embed then  -- the token this term was given is in the value itself
      return {1, string.sub(current, #prefix + 1, -2), current}
    end
    return {1, redis.call('GET', fence) or '0', current}
  end
  return not_acquired(current, redis.call('PTTL', key))
end

local reserved = redis.call('GET', reserved_key)
if reserved and reserved ~= value then
  return not_acquired(false, redis.call('PTTL', reserved_key))
end
local token = next_token(redis.call('GET', fence))
if type(token) == 'table' then return token end  -- an error reply; nothing was written
if reserved then redis.call('DEL', reserved_key) end
if wait_ms > 0 then
  redis.call('ZREM', waiters, value)
  redis.call('ZREM', expiries, value)
end

redis.call('SET', fence, token)
local stored = value
if embed then stored = prefix .. token .. '}' end
redis.call('SET', key, stored, 'PX', px)
if embed and ARGV[6] then redis.call('PUBLISH', ARGV[6], stored) end
return {1, token, stored}
