-- Extend KEYS[1] to ARGV[2] ms, only if it still holds our value ARGV[1].
-- Returns 1 when extended, 0 when the key is gone or holds someone else's value.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
