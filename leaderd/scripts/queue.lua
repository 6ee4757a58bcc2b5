-- Shared by acquire.lua and release.lua (prepended when they are loaded): a waiter's
-- queue entry "<listener id>|<call>-<px>[t]|<value>", read strictly. Anyone who may
-- write the queue can add an entry, so an entry is data to check, never to trust: a
-- 16-hex-digit listener id, a call number of at most 15 digits, a lease of 1 ms to
-- 30 days, a non-empty value of at most 4096 bytes (with "t", a JSON object).
local MAX_PX = 2592000000
local ENTRY = '^(' .. string.rep('%x', 16) .. ')|(%d+)%-(%d+)(t?)|(.+)$'

-- {listener, px, embed, value} of a well-formed entry, else nil.
local function parse_member(member)
  if #member > 4200 then return nil end
  local listener, call, px, t, value = string.match(member, ENTRY)
  if not listener or #call > 15 or #px > 10 or #value > 4096 then return nil end
  px = tonumber(px)
  if px < 1 or px > MAX_PX then return nil end
  local embed = t == 't'
  if embed and (#value < 3 or string.sub(value, 1, 1) ~= '{' or
                string.sub(value, -1) ~= '}') then
    return nil
  end
  return {listener = listener, px = px, embed = embed, value = value}
end

-- Whether the lock's current value is `value`'s. With an embedded token: `value` with
-- exactly ',"token":<counter>}' appended, where <counter> is the fencing counter's
-- value `counter` (no token was issued since, or the key would hold another value),
-- so neither another holder's value that merely starts the same nor a plain value
-- shaped like an embedded one is taken for ours (unless the counter is gone or garbage).
local function holds(current, value, embed, counter)
  if not embed then return current == value end
  local prefix = string.sub(value, 1, -2) .. ',"token":'
  if string.sub(current, 1, #prefix) ~= prefix then return false end
  local token = string.match(string.sub(current, #prefix + 1), '^(%d+)}$')
  if token == nil then return false end
  -- a counter that is gone or garbage (deleted or overwritten by hand) proves nothing
  -- either way: the exact shape must do
  return token == counter or not (counter and string.match(counter, '^%d+$'))
end
