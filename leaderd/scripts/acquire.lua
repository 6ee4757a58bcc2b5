-- Acquire KEYS[1] for value ARGV[1] with a lease of ARGV[2] ms, and bump the
-- fencing counter KEYS[2] (same hash slot) to max(counter + 1, Redis TIME in microseconds):
-- monotonic even if Redis loses the counter, unless its clock steps back.
-- ARGV[3] == "1": ARGV[1] is a JSON object; it is stored with "token":<token>
-- appended, so readers of the key see the holder's fencing token.
-- A key that already holds our value (a retry after an attempt that timed out
-- on the client but succeeded here) is extended and keeps its token.
-- Returns {1, token, stored value} when acquired, {0, holder value, pttl} when held.
if redis.replicate_commands then redis.replicate_commands() end
local key, fence = KEYS[1], KEYS[2]
local value, px, embed = ARGV[1], ARGV[2], ARGV[3] == '1'
local prefix = value
if embed then prefix = string.sub(value, 1, -2) .. ',"token":' end

local current = redis.call('GET', key)
if current then
  if current == value or (embed and string.sub(current, 1, #prefix) == prefix) then
    redis.call('PEXPIRE', key, px)
    return {1, redis.call('GET', fence) or '0', current}
  end
  return {0, current, redis.call('PTTL', key)}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local token = math.max((tonumber(redis.call('GET', fence)) or 0) + 1, now)
token = string.format('%d', token)
redis.call('SET', fence, token)
local stored = value
if embed then stored = prefix .. token .. '}' end
redis.call('SET', key, stored, 'PX', px)
return {1, token, stored}
