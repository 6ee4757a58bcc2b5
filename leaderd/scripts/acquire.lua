-- Acquire KEYS[1] (the lock) for value ARGV[1] with a lease of ARGV[2] ms.
-- KEYS[2] fencing counter, KEYS[3] waiters (zset: member -> order), KEYS[4] the queue's
-- arrival counter, which exists while anyone is queued (a release reads the queue only
-- then); all in the lock's hash slot.
-- ARGV[3] == "1": ARGV[1] is a JSON object; it is stored with "token":<token>
-- appended, so readers of the key see the holder's fencing token.
-- ARGV[4] > 0: the caller waits and listens; if it does not get the lock it is queued
-- as member ARGV[6] ("<listener id>|<value>", first arrival kept), so a release hands
-- the lock to the first waiter that still listens.
-- ARGV[5]: the waiter's priority (-100..100). The queue is ordered by
-- (100 - priority) * 1e13 + arrival number: highest priority first, FIFO among equals.
-- ARGV[7] (with ARGV[3] == "1"): a channel on which a new term is announced (the
-- stored value), so that watchers of an election learn of it at once.
-- A lock handed over to a waiter holds "\0handover\0<member>" until that waiter takes
-- it (or the reservation expires): nobody else can take it meanwhile.
-- Fencing: INCR of the counter (one command). A counter that was lost (INCR gives 1),
-- or was negative, is reseeded from Redis TIME in microseconds, so tokens stay monotonic when Redis loses
-- its data, unless its clock steps back. A counter that INCR refuses (not a decimal
-- integer, leading zeros, beyond int64) goes the slow way: exact decimal-string
-- arithmetic; garbage is repaired from TIME; one at the int64 limit is refused with an
-- error (no larger token exists) and nothing is written.
-- A key that already holds our value (a retry after an attempt that timed out on the
-- client but succeeded here) is extended and keeps its token.
-- Uncontended cost: SET NX GET, INCR (embedded token: GET, INCR, SET, PUBLISH). Redis
-- before 7.0 has no SET NX GET: SET NX, then GET when it failed.
-- Returns {1, token, stored value} when acquired; {0, holder, pttl} when held;
-- {0, false, pttl} when reserved for another waiter for pttl ms.
if redis.replicate_commands then redis.replicate_commands() end
local key, fence, waiters, flag = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value, px, embed, wait_ms = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local priority = tonumber(ARGV[5] or '0') or 0
local member = ARGV[6] or ''
local HANDOVER = '\0handover\0'
local INT64_MAX = '9223372036854775807'
local prefix = value
if embed then prefix = string.sub(value, 1, -2) .. ',"token":' end

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

local function now_us_text()
  local t = redis.call('TIME')
  return t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
end

-- The slow way, for a counter INCR refused: exact, repairs garbage, refuses int64 max.
local function repaired_token()
  local stored = redis.call('GET', fence)
  local now = now_us_text()
  if not stored or not string.match(stored, '^%d+$') then return now end
  stored = string.gsub(stored, '^0+', '')
  if stored == '' then stored = '0' end
  if #stored > 19 or not greater(INT64_MAX, stored) then
    return redis.error_reply('LEADERD_FENCE fencing counter ' .. fence ..
      ' is at the int64 limit; no larger token exists (delete it only if no fenced ' ..
      'resource has seen a token above Redis TIME in microseconds)')
  end
  local candidate = increment(stored)
  if greater(now, candidate) then return now end
  return candidate
end

-- The next token as a decimal string (written to the counter), or an error reply.
local function next_token()
  local n = redis.pcall('INCR', fence)
  if type(n) == 'number' then
    if n <= 1 then  -- the counter was lost, never set, or negative: reseed from TIME
      local now = now_us_text()
      redis.call('SET', fence, now)
      return now
    end
    if n < 9007199254740991 then return string.format('%.0f', n) end
    return redis.call('GET', fence)  -- beyond 2^53 a Lua number is not exact
  end
  local token = repaired_token()
  if type(token) == 'string' then redis.call('SET', fence, token) end
  return token
end

local function not_acquired(holder, pttl)
  if wait_ms > 0 and member ~= '' then
    local arrival = redis.call('INCR', flag)
    redis.call('ZADD', waiters, 'NX', (100 - priority) * 10000000000000 + arrival, member)
  end
  return {0, holder, pttl}
end

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
    local token = next_token()
    if type(token) == 'table' then
      redis.call('DEL', key)  -- refused: nothing was taken
      return token
    end
    if wait_ms > 0 and member ~= '' then redis.call('ZREM', waiters, member) end
    return won(token, value)
  end
end
if current then
  if current == value or (embed and string.sub(current, 1, #prefix) == prefix) then
    redis.call('PEXPIRE', key, px)
    if embed then  -- the token this term was given is in the value itself
      return {1, string.sub(current, #prefix + 1, -2), current}
    end
    return {1, redis.call('GET', fence) or '0', current}
  end
  local reserved = string.sub(current, 1, #HANDOVER) == HANDOVER
  if not reserved or member == '' or string.sub(current, #HANDOVER + 1) ~= member then
    return not_acquired(not reserved and current, redis.call('PTTL', key))
  end
end
local token = next_token()
if type(token) == 'table' then return token end  -- an error reply; nothing was written
local stored = value
if embed then stored = prefix .. token .. '}' end
redis.call('SET', key, stored, 'PX', px)
if wait_ms > 0 and member ~= '' and not current then
  redis.call('ZREM', waiters, member)  -- it was free (an expiry): leave the queue
end
return won(token, stored)
