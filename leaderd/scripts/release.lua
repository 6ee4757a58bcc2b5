-- Delete KEYS[1] only if it still holds our value ARGV[1], then publish on
-- channel ARGV[2] so that waiters retry at once instead of polling.
-- Returns 1 when released, 0 when the key is gone or holds someone else's value.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
return 0
