-- Release KEYS[1] (the lock) only if it still holds our value ARGV[1], and hand it
-- over: the first waiter in KEYS[2] (queued as "<listener id>|<value>") that still
-- listens on ARGV[2] .. "|" .. <listener id> is woken there (the message names the
-- member, so a listener shared by many waiters wakes only that one) and the lock is reserved
-- for it ("\0handover\0<member>" for ARGV[3] ms), so only it can take it. Waiters that
-- no longer listen (gone, or given up) are dropped on the way. KEYS[3] is the queue's
-- arrival counter, which exists while anyone is queued: without it the queue is not
-- even read; it is deleted when the queue is found empty.
-- ARGV[4] (optional): hand over to this member instead, for ARGV[5] ms, if it is still
-- queued and listening (a switchover). ARGV[6] (optional): a channel to announce the
-- release on (an election's watchers).
-- Uncontended cost: MGET, DEL.
-- Returns 0 when the key is gone or holds someone else's value; 1 when released;
-- 2 when handed over to the member ARGV[4].
if redis.replicate_commands then redis.replicate_commands() end
local key, waiters, flag = KEYS[1], KEYS[2], KEYS[3]
local got = redis.call('MGET', key, flag)
if got[1] ~= ARGV[1] then return 0 end
local target = ARGV[4] or ''
local head, hold, handed = nil, ARGV[3], false

local function wake(member)  -- receivers of the wake-up: 0 if the waiter is gone
  local listener = string.match(member, '^([^|]*)|')
  if not listener then return 0 end
  return redis.call('PUBLISH', ARGV[2] .. '|' .. listener, member)
end

if got[2] then
  if target ~= '' and redis.call('ZSCORE', waiters, target) then
    redis.call('ZREM', waiters, target)
    if wake(target) > 0 then head, hold, handed = target, ARGV[5], true end
  end
  for _ = 1, 16 do
    if head then break end
    local first = redis.call('ZPOPMIN', waiters)
    if not first[1] then
      redis.call('DEL', flag)  -- nobody waits any more
      break
    end
    if wake(first[1]) > 0 then head = first[1] end
  end
end
if head then
  redis.call('SET', key, '\0handover\0' .. head, 'PX', hold)
else
  redis.call('DEL', key)
end
if ARGV[6] and ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[6], '') end
if handed then return 2 end
return 1
