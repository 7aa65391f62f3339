"""One-time join tokens: made, stored as a hash, and looked up without leaking time.

A token is ``meshjoin-`` followed by 32 random bytes (256 bits, base64url). The CA stores only
SHA-256 of the whole string, with the node it is for, its expiry and, once used, the SHA-256 of
the agent key it was used with (:mod:`ca.service.store`).

Looking a token up by its hash in an index is constant-time in what matters: the index compares
hashes, and learning that some stored hash shares a prefix with SHA-256 of a guess tells an
attacker nothing about any token (finding a token from its hash means inverting SHA-256). The
hash found is compared again with :func:`hmac.compare_digest` before it counts. A string that
is not even shaped like a token is refused before any lookup (the shape is public).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "meshjoin-"
_RANDOM_BYTES = 32
_SHAPE = re.compile(PREFIX + r"[A-Za-z0-9_-]{43}")


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def well_formed(token: object) -> bool:
    return isinstance(token, str) and _SHAPE.fullmatch(token) is not None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def same_hash(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
