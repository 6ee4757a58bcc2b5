-- Ask the holder of election lock KEYS[1] to resign or to hand over to a named waiter.
-- KEYS[2] waiters (zset of "<listener id>|<call>-<px>[t]|<value>"), KEYS[3] unused, KEYS[4] the
-- pending request.
-- ARGV[1] op: "resign", "switchover" or "preempt"; ARGV[2] the target's identity
-- (switchover, preempt); ARGV[3] hold-off ms (resign); ARGV[4] how long the request
-- stands (ms); ARGV[5] the release channel (a waiter listens on ARGV[5] .. "|" .. its
-- listener id); ARGV[6] the control channel; ARGV[7] a request id; ARGV[8] the
-- requester's priority (preempt: the holder's must be lower).
-- A target must be queued and still subscribed: a live, eligible waiter (an
-- ineligible candidate leaves the queue; a dead one has no subscription).
-- Writes nothing unless the request is valid.
-- Returns {1, holder value, target's queue value} or {0, reason, holder value}.
if redis.replicate_commands then redis.replicate_commands() end
local key, waiters, control = KEYS[1], KEYS[2], KEYS[4]
local op, target = ARGV[1], ARGV[2]
local current = redis.call('GET', key)
if not current then return {0, 'no_leader', false} end
local ok, holder = pcall(cjson.decode, current)
if not ok or type(holder) ~= 'table' or type(holder.identity) ~= 'string' then
  return {0, 'foreign', current}
end
local to = ''
if op ~= 'resign' then
  if holder.identity == target then return {0, 'already_leads', current} end
  if op == 'preempt' and (tonumber(holder.priority) or 0) >= tonumber(ARGV[8]) then
    return {0, 'not_higher', current}
  end
  local queued = false
  for _, member in ipairs(redis.call('ZRANGE', waiters, 0, 999)) do
    local listener, queued_value = string.match(member, '^([^|]*)|[^|]*|(.*)$')
    local okm, w = pcall(cjson.decode, queued_value or '')
    if okm and type(w) == 'table' and w.identity == target then
      queued = true
      if redis.call('PUBSUB', 'NUMSUB', ARGV[5] .. '|' .. listener)[2] > 0 then
        to = member
        break
      end
    end
  end
  if to == '' then
    if queued then return {0, 'not_listening', current} end
    return {0, 'not_waiting', current}
  end
end
local request = cjson.encode({op = op, holder = current, to = to, id = ARGV[7],
                              hold_off_ms = tonumber(ARGV[3])})
redis.call('SET', control, request, 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1, current, to}
