-- Confirm a hand-over: the release that handed KEYS[1] to this waiter wrote its value
-- ARGV[1] (ARGV[3] == "1": with a token embedded) for a short claim, then told it so.
-- If the key holds that value, extend it to the waiter's lease ARGV[2] ms and return
-- {1, token, stored value}: the token is the embedded one, or the fencing counter
-- KEYS[2] (no token was issued since, or the key would hold another value). Otherwise
-- (a forged or stale message, a claim that ran out) {0, holder or false, pttl}, and
-- the waiter goes on with ordinary attempts. queue.lua is prepended.
-- Cost: MGET, PEXPIRE.
local got = redis.call('MGET', KEYS[1], KEYS[2])
local current, embed = got[1], ARGV[3] == '1'
if current and holds(current, ARGV[1], embed, got[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if embed then
    local prefix = string.sub(ARGV[1], 1, -2) .. ',"token":'
    return {1, string.sub(current, #prefix + 1, -2), current}
  end
  return {1, got[2] or '0', current}
end
return {0, current, redis.call('PTTL', KEYS[1])}
