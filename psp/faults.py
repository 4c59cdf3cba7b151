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
    decline_rate: float = 0.0
    """Share of otherwise-authorizable cards declined (0..1)."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "decline_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Faults:
        """``PSP_ERROR_RATE``, ``PSP_LATENCY_MS`` and ``PSP_DECLINE_RATE``; unset means off."""
        env = os.environ if environ is None else environ
        return cls(
            error_rate=float(env.get("PSP_ERROR_RATE") or 0),
            latency_ms=int(float(env.get("PSP_LATENCY_MS") or 0)),
            decline_rate=float(env.get("PSP_DECLINE_RATE") or 0),
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)
