-- Release KEYS[1] (the lock) only if it still holds our value ARGV[1], and hand it
-- straight to the first waiter in KEYS[2] that still listens. KEYS[3] is the queue's
-- arrival counter, which exists while anyone is queued: without it the queue is not
-- even read; it is deleted when the queue is found empty. KEYS[4] is the fencing
-- counter. fence.lua is prepended to this script.
-- A waiter is queued as "<listener id>|<call>-<px>[t]|<value>" (checked strictly: an
-- entry that is not exactly that, or whose lease is out of bounds, is dropped). The
-- lock becomes its: its value ("t": with the new token embedded) for a claim of
-- min(<px>, ARGV[6]) ms, written *before* it is told so on ARGV[2] .. "|" .. <listener
-- id> by the message "<token> <member>". The waiter confirms with one request of its
-- own, which extends the claim to its lease: a message is only ever a hint, and a
-- waiter that cannot act (killed, frozen, its loop blocked) holds the lock for the
-- claim at most. Liveness is proved per exact channel with PUBSUB NUMSUB, which a
-- pattern subscriber (PSUBSCRIBE *) cannot inflate as it does the PUBLISH count: a
-- waiter that is gone is dropped and the next is tried.
-- A waiter that gives up calls this script with its member as ARGV[5]: it leaves the
-- queue, and if it was handed the lock meanwhile it releases it here, to the next.
-- ARGV[3] (optional): hand over to this member instead, if it is still queued and
-- listening (a switchover). ARGV[4] (optional): a channel to announce the new holder's
-- value on ('' for nobody; an election's watchers).
-- Uncontended cost: MGET, DEL. Contended: MGET, ZPOPMIN, PUBSUB NUMSUB, TIME, SET GET,
-- SET, PUBLISH.
-- Returns 0 when the key is gone or holds someone else's value (or, leaving, the
-- waiter was still queued); 1 when released; 2 when handed over to the member ARGV[3].
if redis.replicate_commands then redis.replicate_commands() end
local key, waiters, flag, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local claim_ms = tonumber(ARGV[6] or '') or 500
local queued
local leaving = ARGV[5] or ''
if leaving ~= '' then
  if redis.call('ZREM', waiters, leaving) == 1 then return 0 end  -- nothing was handed
  local entry = parse_member(leaving)
  if not entry then return 0 end
  local current = redis.call('GET', key)
  local counter = entry.embed and redis.call('GET', fence)
  if not current or not holds(current, entry.value, entry.embed, counter) then return 0 end
  queued = redis.call('GET', flag)  -- handed to us as we gave up: pass it on
else
  local got = redis.call('MGET', key, flag)
  if got[1] ~= ARGV[1] then return 0 end
  queued = got[2]
end
local target = ARGV[3] or ''
local stored, handed = nil, false

-- Make `member` the holder if it still listens: the value it now holds, nil if it was
-- dropped, false if no token is left (nobody gets the lock).
local function hand(member)
  local entry = parse_member(member)
  if not entry then return nil end  -- not a waiter's entry: dropped
  local channel = ARGV[2] .. '|' .. entry.listener
  if redis.call('PUBSUB', 'NUMSUB', channel)[2] == 0 then return nil end  -- gone
  local token = next_token(fence)
  if type(token) ~= 'string' then return false end
  local value_now = stored_value(entry.value, entry.embed, token)
  redis.call('SET', key, value_now, 'PX', math.min(entry.px, claim_ms))
  redis.call('PUBLISH', channel, token .. ' ' .. member)
  return value_now
end

if queued then
  if target ~= '' and redis.call('ZSCORE', waiters, target) then
    redis.call('ZREM', waiters, target)
    stored = hand(target)
    handed = stored and true
  end
  for _ = 1, 16 do
    if stored ~= nil then break end
    local first = redis.call('ZPOPMIN', waiters)
    if not first[1] then
      redis.call('DEL', flag)  -- nobody waits any more
      break
    end
    stored = hand(first[1])
  end
end
if not stored then redis.call('DEL', key) end
if ARGV[4] and ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], stored or '') end
if handed then return 2 end
return 1
