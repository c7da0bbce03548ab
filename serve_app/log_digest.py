"""Short salted digests of values a log must be able to match but never show, such as a
client's idempotency key (serve_app/request_log.py): whoever reads the log must not be
able to reuse the key, nor check a guess of a low-entropy one against it.

The salt is random and secret, and the same in every ingress replica of a Ray cluster (so
a call's retries, spread over replicas, log one digest): the first replica stores it in
Ray's GCS key-value store and the others read it back. It lives as long as the cluster's
GCS (on Redis with GCS fault tolerance: across head restarts). Outside Ray: per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SALT_KEY = b"serve_app/log_digest_salt"
SALT_NAMESPACE = b"serve_app"
DIGEST_HEX_CHARS = 16  # 64 bits: distinct for any log's keys, and short


def cluster_salt() -> bytes:
    """The cluster's salt (created by the first caller); a fresh one outside Ray."""
    from ray.experimental import internal_kv

    candidate = secrets.token_bytes(32)
    if not internal_kv._internal_kv_initialized():
        return candidate
    internal_kv._internal_kv_put(SALT_KEY, candidate, overwrite=False, namespace=SALT_NAMESPACE)
    return internal_kv._internal_kv_get(SALT_KEY, namespace=SALT_NAMESPACE)


def digest(value: str, salt: bytes) -> str:
    """A short keyed hash of `value`: equal values give equal digests under one salt."""
    mac = hmac.new(salt, value.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:DIGEST_HEX_CHARS]
