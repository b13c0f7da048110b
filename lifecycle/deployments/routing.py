"""Which side of a canary a request takes.

Without a key: the candidate with probability share/100, drawn fresh. With a key: a hash of
(key, release id) read as a number in [0, 100) against the share. A key therefore stays on one
side for the whole release, raising the share only moves keys from stable to the candidate
(a key is on the candidate iff its number < share), and across many keys the candidate's share
is the set share — no affinity cookie that piles returning users onto one side."""
import hashlib
import random

STABLE, CANARY = "stable", "canary"
_random = random.SystemRandom()


def key_point(key, release_id):
    """The key's fixed place in [0, 100) for this release."""
    digest = hashlib.sha256(f"{release_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def choose(share, release_id, key=None, rng=_random):
    """"stable" or "canary" for one request of a release whose canary has `share` percent."""
    if share <= 0:
        return STABLE
    if share >= 100:
        return CANARY
    point = key_point(key, release_id) if key else rng.random() * 100.0
    return CANARY if point < share else STABLE
