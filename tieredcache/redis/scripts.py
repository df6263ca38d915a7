"""
The Lua scripts of the Redis backend
====================================

``add`` and ``touch`` read and rewrite the envelope header on the server, and ``clear``
deletes only this cache's envelopes. Every position, size and flag in the scripts comes from
:mod:`tieredcache.envelope`, substituted when this module is imported, so a change of the
header layout changes the scripts too.
"""

from __future__ import annotations

import string
import struct

from tieredcache import envelope

__all__ = ["ADD_SCRIPT", "CLEAR_ENVELOPES_SCRIPT", "TOUCH_SCRIPT"]


def _lua_bytes(data: bytes) -> str:
    """``data`` as a Lua string literal (every byte a three-digit decimal escape)."""
    return "'" + "".join(f"\\{byte:03d}" for byte in data) + "'"


# The Lua scripts read and rewrite the envelope header; every position, size and flag in them
# comes from tieredcache.envelope (Lua strings count from 1, the offsets there from 0).
_TIME_SIZE = struct.calcsize(envelope.TIME_FORMAT)
_LUA_ENVELOPE = {
    "HEADER_SIZE": envelope.HEADER_SIZE,
    "MAGIC": _lua_bytes(envelope.MAGIC_FORMAT),
    "MAGIC_LEN": len(envelope.MAGIC_FORMAT),
    "MAGIC_LAST0": len(envelope.MAGIC_FORMAT) - 1,
    "FLAGS_AT": envelope.FLAGS_OFFSET + 1,
    "EXPIRES_AT": envelope.EXPIRES_OFFSET + 1,
    "STALE_AT": envelope.STALE_OFFSET + 1,
    "AFTER_EXPIRES": envelope.EXPIRES_OFFSET + _TIME_SIZE + 1,
    "TIME": f"'{envelope.TIME_FORMAT}'",
    "HAS_EXPIRES": envelope.HAS_EXPIRES,
    "HAS_STALE": envelope.HAS_STALE,
    "KEEP_FLAGS": 0xFF & ~envelope.HAS_EXPIRES,
}


def _lua(template: str) -> str:
    """A Lua script with the envelope's layout substituted for its ``$NAME`` placeholders."""
    return string.Template(template).substitute(_LUA_ENVELOPE)


# KEYS[1]: the key. ARGV: envelope, now, px ("" = no expiry). Returns 1 if stored.
ADD_SCRIPT = _lua(
    r"""
-- A time that is not a finite number (NaN, infinities) is a corrupt header: absent.
local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end
local current = redis.call('GET', KEYS[1])
if current and #current >= $HEADER_SIZE and string.sub(current, 1, $MAGIC_LEN) == $MAGIC then
  local flags = string.byte(current, $FLAGS_AT)
  local has_expires = bit.band(flags, $HAS_EXPIRES) ~= 0
  local expires_at = struct.unpack($TIME, current, $EXPIRES_AT)
  local stale_at = struct.unpack($TIME, current, $STALE_AT)
  local corrupt = (has_expires and not finite(expires_at))
    or (bit.band(flags, $HAS_STALE) ~= 0 and not finite(stale_at))
  if not corrupt then
    if not has_expires then return 0 end
    if expires_at > tonumber(ARGV[2]) then return 0 end
  end
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
return 1
"""
)

# KEYS[1]: the key. ARGV: now, the has-expiry flag bit ("0" when there is no expiry),
# expires_at as packed bytes, px ("" = no expiry). Rewrites the header's flags and
# expires_at, keeping the rest.
TOUCH_SCRIPT = _lua(
    r"""
-- A time that is not a finite number (NaN, infinities) is a corrupt header: absent.
local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end
local current = redis.call('GET', KEYS[1])
if not current or #current < $HEADER_SIZE or string.sub(current, 1, $MAGIC_LEN) ~= $MAGIC then
  return 0
end
local flags = string.byte(current, $FLAGS_AT)
if bit.band(flags, $HAS_EXPIRES) ~= 0 then
  local expires_at = struct.unpack($TIME, current, $EXPIRES_AT)
  if not finite(expires_at) then return 0 end
  if expires_at <= tonumber(ARGV[1]) then return 0 end
end
if bit.band(flags, $HAS_STALE) ~= 0 then
  local stale_at = struct.unpack($TIME, current, $STALE_AT)
  if not finite(stale_at) then return 0 end
end
flags = bit.bor(bit.band(flags, $KEEP_FLAGS), tonumber(ARGV[2]))
local updated = string.sub(current, 1, $FLAGS_AT - 1) .. string.char(flags)
  .. string.sub(current, $FLAGS_AT + 1, $EXPIRES_AT - 1) .. ARGV[3]
  .. string.sub(current, $AFTER_EXPIRES)
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], updated)
else
  redis.call('SET', KEYS[1], updated, 'PX', ARGV[4])
end
return 1
"""
)

# KEYS: one SCAN batch. Unlinks the keys that hold a tieredcache envelope; returns how many.
CLEAR_ENVELOPES_SCRIPT = _lua(
    r"""
local removed = 0
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'string'
      and redis.call('GETRANGE', key, 0, $MAGIC_LAST0) == $MAGIC then
    redis.call('UNLINK', key)
    removed = removed + 1
  end
end
return removed
"""
)
