-- Acquire KEYS[1] (the lock) for value ARGV[1] with a lease of ARGV[2] ms.
-- KEYS[2] fencing counter, KEYS[3] waiters (zset: member -> order), KEYS[4] the queue's
-- arrival counter, which exists while anyone is queued (a release reads the queue only
-- then); all in the lock's hash slot. fence.lua and queue.lua are prepended.
-- ARGV[3] == "1": ARGV[1] is a JSON object; it is stored with "token":<token>
-- appended, so readers of the key see the holder's fencing token.
-- ARGV[4] > 0: the caller waits and listens; if it does not get the lock it is queued
-- as member ARGV[6] ("<listener id>|<call>-<px>[t]|<value>", first arrival kept), so
-- that a release hands the lock straight to it (release.lua).
-- ARGV[6] with ARGV[4] == 0: not queued, but a win removes that earlier entry.
-- ARGV[5]: the waiter's priority (-100..100). The queue is ordered by
-- (100 - priority) * 1e13 + arrival number: highest priority first, FIFO among equals.
-- ARGV[7] (with ARGV[3] == "1"): a channel on which a new term is announced (the
-- stored value), so that watchers of an election learn of it at once.
-- A key that already holds our value (a retry after an attempt that timed out on the
-- client but succeeded here, or a waiter confirming a hand-over) is extended and keeps
-- its token.
-- Uncontended cost: SET NX GET, TIME, SET GET (embedded token: GET, TIME, SET GET, SET,
-- PUBLISH). Redis
-- before 7.0 has no SET NX GET: SET NX, then GET when it failed.
-- Returns {1, token, stored value} when acquired; {0, holder, pttl} when held.
if redis.replicate_commands then redis.replicate_commands() end
local key, fence, waiters, flag = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value, px, embed, wait_ms = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local priority = tonumber(ARGV[5] or '0') or 0
local member = ARGV[6] or ''
if member ~= '' and not parse_member(member) then member = '' end  -- never queue garbage
local prefix = value
if embed then prefix = string.sub(value, 1, -2) .. ',"token":' end

local function won(token, stored)
  if embed and ARGV[7] then redis.call('PUBLISH', ARGV[7], stored) end
  return {1, token, stored}
end

local current
if embed then
  current = redis.call('GET', key)  -- the token must be known before the value is written
else
  current = redis.pcall('SET', key, value, 'NX', 'PX', px, 'GET')  -- false: it was free
  if type(current) == 'table' then  -- Redis < 7.0
    current = not redis.call('SET', key, value, 'NX', 'PX', px) and redis.call('GET', key)
  end
  if not current then  -- the fast way: it was free and is ours now
    local token = next_token(fence)
    if type(token) == 'table' then
      redis.call('DEL', key)  -- refused: nothing was taken
      return token
    end
    if member ~= '' then redis.call('ZREM', waiters, member) end  -- queued earlier
    return won(token, value)
  end
end
if current then
  if holds(current, value, embed, embed and redis.call('GET', fence)) then
    redis.call('PEXPIRE', key, px)
    if embed then  -- the token this term was given is in the value itself
      return {1, string.sub(current, #prefix + 1, -2), current}
    end
    return {1, redis.call('GET', fence) or '0', current}
  end
  if wait_ms > 0 and member ~= '' then
    local arrival = redis.call('INCR', flag)
    redis.call('ZADD', waiters, 'NX', (100 - priority) * 10000000000000 + arrival, member)
  end
  return {0, current, redis.call('PTTL', key)}
end
local token = next_token(fence)
if type(token) == 'table' then return token end  -- an error reply; nothing was written
local stored = stored_value(value, embed, token)
redis.call('SET', key, stored, 'PX', px)
if member ~= '' then
  redis.call('ZREM', waiters, member)  -- it was free (an expiry): leave the queue
end
return won(token, stored)
