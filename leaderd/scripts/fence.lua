-- Shared by acquire.lua and release.lua (prepended when they are loaded): the next
-- fencing token of the counter `fence`, which the including script must define.
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

local function now_us_text()
  local t = redis.call('TIME')
  return t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
end

-- The next token of counter `fence` as a decimal string (written to the counter), or
-- an error reply (a table). The token is max(counter + 1, Redis TIME in microseconds),
-- in exact decimal-string arithmetic (no Lua number, so exact past 2^53). TIME makes it
-- survive a rollback: a restart from an older snapshot or AOF, a promoted replica that
-- lacked the last writes, FLUSHALL. Every token was at most its own issue time (one
-- script per microsecond at most) unless the counter was ahead already, so one issued
-- after the rollback, at a later TIME, is larger. A counter that is not a decimal
-- integer is repaired from TIME; one at the int64 limit is refused, nothing changed.
-- Cost: TIME, SET GET (Redis >= 6.2), and a second SET only when the counter leads TIME.
local function next_token(fence)
  local now = now_us_text()
  local old = redis.pcall('SET', fence, now, 'GET')
  if type(old) == 'table' then return old end  -- WRONGTYPE: an error reply, nothing written
  if not old or not string.match(old, '^%d+$') then return now end  -- lost or garbage
  local stored = string.gsub(old, '^0+', '')
  if stored == '' then stored = '0' end
  if #stored > 19 or not greater(INT64_MAX, stored) then
    redis.call('SET', fence, old)  -- refused: the counter is left as it was
    return redis.error_reply('LEADERD_FENCE fencing counter ' .. fence ..
      ' is at the int64 limit; no larger token exists (delete it only if no fenced ' ..
      'resource has seen a token above Redis TIME in microseconds)')
  end
  local candidate = increment(stored)
  if greater(candidate, now) then
    redis.call('SET', fence, candidate)
    return candidate
  end
  return now
end

-- The value a holder stores: `value` itself, or (embed) the JSON object `value` with
-- "token":<token> appended, so readers of the key see the holder's fencing token.
local function stored_value(value, embed, token)
  if not embed then return value end
  return string.sub(value, 1, -2) .. ',"token":' .. token .. '}'
end
