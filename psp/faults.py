"""Fault injection knobs: random 503s, added latency and random declines."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass


@dataclass
class Faults:
    error_rate: float = 0.0
    """Share of payment calls answered 503 before anything is done (0..1)."""
    latency_ms: int = 0
    """Added to every payment call before it is handled."""
    authorize_latency_ms: int = 0
    """Added to intent creation alone, before it commits: an authorization that lands after
    the client has given up on it (and, say, looked for intents to void)."""
    decline_rate: float = 0.0
    """Share of otherwise-authorizable cards declined (0..1)."""
    webhook_duplicates: int = 0
    """Each webhook is delivered this many extra times after it first got through."""
    webhook_reorder_ms: int = 0
    """Each webhook waits a random 0..N ms before it is sent, so events overtake each other."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "decline_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        for name in (
            "latency_ms",
            "authorize_latency_ms",
            "webhook_duplicates",
            "webhook_reorder_ms",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Faults:
        """``PSP_ERROR_RATE``, ``PSP_LATENCY_MS``, ``PSP_AUTHORIZE_LATENCY_MS``, ``PSP_DECLINE_RATE``,
        ``PSP_WEBHOOK_DUPLICATES`` and ``PSP_WEBHOOK_REORDER_MS``; unset means off."""
        env = os.environ if environ is None else environ
        return cls(
            error_rate=float(env.get("PSP_ERROR_RATE") or 0),
            latency_ms=int(float(env.get("PSP_LATENCY_MS") or 0)),
            authorize_latency_ms=int(float(env.get("PSP_AUTHORIZE_LATENCY_MS") or 0)),
            decline_rate=float(env.get("PSP_DECLINE_RATE") or 0),
            webhook_duplicates=int(env.get("PSP_WEBHOOK_DUPLICATES") or 0),
            webhook_reorder_ms=int(float(env.get("PSP_WEBHOOK_REORDER_MS") or 0)),
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)
