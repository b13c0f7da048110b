"""Per-token rate limits: a token bucket in Redis, shared by every serving process.

Each token's bucket holds up to `burst` requests and refills at `rate_per_second`; a request
takes one. The whole read-refill-take step is one Lua script, so two processes never both
spend the last request, and the clock is Redis's own (TIME), so hosts with skewed clocks agree.

Redis down: the request is allowed and counted (lifecycle_serving_rate_limit_unchecked_total).
Refusing every request because the limiter's store is away would turn a Redis outage into a
serving outage; the limit protects capacity, and the queue bound (503) still does that. After a
failure Redis is not asked again for a second, so a dead Redis costs no time per request.
"""
import logging
import math
import time

import redis.asyncio
from django.conf import settings

from lifecycle.deployments.serving import metrics

log = logging.getLogger(__name__)
KEY_PREFIX = "lifecycle:serving:bucket:"
RETRY_REDIS_AFTER = 1.0

# KEYS[1]: the bucket; ARGV: rate per second, burst, cost. Returns {allowed (0/1), seconds to wait}
# (the wait as a string: Lua numbers come back from Redis as integers).
TOKEN_BUCKET = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class RateLimiter:
    def __init__(self, url=None):
        # Short timeouts: the check sits on every request's path.
        self.client = redis.asyncio.Redis.from_url(url or settings.REDIS_URL, socket_timeout=0.25,
                                                   socket_connect_timeout=0.25)
        self.script = self.client.register_script(TOKEN_BUCKET)
        self.down_until = 0.0
        self.unchecked = 0

    async def check(self, token):
        """None when `token` (a ServingToken.table() row) may go on, else the seconds to wait."""
        if time.monotonic() < self.down_until:
            return self._unchecked()
        try:
            allowed, wait = await self.script(keys=[f"{KEY_PREFIX}{token['id']}"],
                                              args=[token["rate"], token["burst"], 1])
        except (redis.RedisError, OSError) as exc:
            log.warning("rate limits unchecked for %.0f s: Redis did not answer (%s)", RETRY_REDIS_AFTER,
                        type(exc).__name__)
            self.down_until = time.monotonic() + RETRY_REDIS_AFTER
            return self._unchecked()
        if int(allowed):
            return None
        return max(1, math.ceil(float(wait)))

    def _unchecked(self):
        self.unchecked += 1
        metrics.RATE_LIMIT_UNCHECKED.inc()
        return None

    async def close(self):
        await self.client.aclose()
