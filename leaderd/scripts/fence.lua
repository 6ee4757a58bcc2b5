-- Shared by acquire.lua and release.lua (prepended when they are loaded): the next
-- fencing token of the counter `fence`, which the including script must define.
-- Fencing: INCR of the counter (one command). A counter that was lost (INCR gives 1),
-- or was negative, is reseeded from Redis TIME in microseconds, so tokens stay
-- monotonic when Redis loses its data, unless its clock steps back. A counter that INCR
-- refuses (not a decimal integer, leading zeros, beyond int64) goes the slow way: exact
-- decimal-string arithmetic; garbage is repaired from TIME; one at the int64 limit is
-- refused with an error (no larger token exists) and nothing is written.
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

-- The slow way, for a counter INCR refused: exact, repairs garbage, refuses int64 max.
local function repaired_token(fence)
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

-- The next token of counter `fence` as a decimal string (written to the counter), or
-- an error reply (a table).
local function next_token(fence)
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
  local token = repaired_token(fence)
  if type(token) == 'string' then redis.call('SET', fence, token) end
  return token
end

-- The value a holder stores: `value` itself, or (embed) the JSON object `value` with
-- "token":<token> appended, so readers of the key see the holder's fencing token.
local function stored_value(value, embed, token)
  if not embed then return value end
  return string.sub(value, 1, -2) .. ',"token":' .. token .. '}'
end
