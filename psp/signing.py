"""Webhook signatures: ``X-PSP-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``.

The receiver recomputes the HMAC over the exact bytes it received and refuses a stale ``t``,
so a captured webhook cannot be replayed later or with an altered body.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-PSP-Signature"
DEFAULT_TOLERANCE_S = 300


def compute_mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={compute_mac(secret, body, t)}"


def verify(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid, fresh signature of ``body`` under ``secret``."""
    if not header:
        return False
    t_text: str | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            t_text = value
        elif name == "v1":
            macs.append(value)
    if t_text is None or not t_text.isdigit() or not macs:
        return False
    t = int(t_text)
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = compute_mac(secret, body, t)
    return any(hmac.compare_digest(expected, mac) for mac in macs)
