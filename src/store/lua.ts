/** Lua scripts the store runs in Redis, each one atomic. */

export const EXTEND_IF_OWNER = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`;
export const RESERVE_PORT = `if redis.call('set', KEYS[1], ARGV[1], 'NX') then redis.call('sadd', KEYS[2], ARGV[2]) return 1 else return 0 end`;
export const RELEASE_PORT = `redis.call('srem', KEYS[2], ARGV[2]) if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;
export const CLAIM_LEASE = `local holder = redis.call('get', KEYS[1]) if holder == false or holder == ARGV[1] then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 else return 0 end`;
/** A backup schedule's run (KEYS[1] hash: cron, last): claimed (1) when its expression (ARGV[1]) is new or its time (ARGV[2], ms) is after the last claimed. */
export const CLAIM_SCHEDULED_RUN = `local cron = redis.call('hget', KEYS[1], 'cron')
local last = tonumber(redis.call('hget', KEYS[1], 'last') or '-1')
if cron == ARGV[1] and tonumber(ARGV[2]) <= last then return 0 end
redis.call('hset', KEYS[1], 'cron', ARGV[1], 'last', ARGV[2])
return 1`;
export const RELEASE_IF_OWNER = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`;

// Operation records expire BROKER_TOMBSTONE_SECONDS after they stop being the latest of a live instance or binding.
// These scripts read the operation ids inside records, so they name operation keys (ARGV) that KEYS does not list:
// fine for one Redis, not for a cluster. Operation ids are [a-z0-9], which key parts keep as they are.
/** Lua: retire(id) gives a finished operation the tombstone time (ARGV[1]) unless it expires sooner; ARGV[2] is the operation key prefix. */
const RETIRE = `local function retire(id)
  if type(id) ~= 'string' or not string.match(id, '^[%w_.-]+$') then return end
  local key = ARGV[2] .. id
  local raw = redis.call('get', key)
  if not raw then return end
  local ok, operation = pcall(cjson.decode, raw)
  if not ok or type(operation) ~= 'table' or operation.state == 'in progress' then return end
  local ttl = redis.call('ttl', key)
  if ttl == -1 or ttl > tonumber(ARGV[1]) then redis.call('expire', key, ARGV[1]) end
end
local function latest(raw)
  if not raw then return nil end
  local ok, resource = pcall(cjson.decode, raw)
  if ok and type(resource) == 'table' then return resource end
  return nil
end
`;
/** Before an instance or binding (KEYS[1]) is written: its previous latest operation retires when ARGV[3] replaces it, or ARGV[3] itself when ARGV[4] says it is deleted. */
export const RETIRE_REPLACED = `${RETIRE}
local previous = latest(redis.call('get', KEYS[1]))
if previous and previous.lastOperationId ~= ARGV[3] then retire(previous.lastOperationId) end
if ARGV[4] == '1' then retire(ARGV[3]) end
return 0`;
/** Bindings about to be removed (KEYS): their latest operations retire. */
export const RETIRE_LATEST_OF = `${RETIRE}
for _, key in ipairs(KEYS) do
  local binding = latest(redis.call('get', key))
  if binding then retire(binding.lastOperationId) end
end
return 0`;
/** A finished operation (KEYS[1], id ARGV[1]) lives on while it is the latest of its live resource (KEYS[2]), else for ARGV[2] seconds. */
export const SETTLE_FINISHED = `local raw = redis.call('get', KEYS[2])
if raw then
  local ok, resource = pcall(cjson.decode, raw)
  if ok and type(resource) == 'table' and resource.lastOperationId == ARGV[1] and resource.state ~= 'deleted' then return redis.call('persist', KEYS[1]) end
end
return redis.call('expire', KEYS[1], ARGV[2])`;
/** The latest operation of a resource (KEYS[1]): nil without the resource, else {1, operation record or nil}; ARGV[1] is the operation key prefix. */
export const LATEST_OPERATION = `local raw = redis.call('get', KEYS[1])
if not raw then return false end
local ok, resource = pcall(cjson.decode, raw)
if not ok or type(resource) ~= 'table' or type(resource.lastOperationId) ~= 'string' or not string.match(resource.lastOperationId, '^[%w_.-]+$') then return {1} end
return {1, redis.call('get', ARGV[1] .. resource.lastOperationId)}`;
