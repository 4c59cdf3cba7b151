"""Nothing lost, ever: each fault, injected at least three times at random moments into a real
`tradeflow up` stack while a burst of mixed orders runs through its HTTP API.

A case passes when every order of the burst (and any order a client gave up on) reached a
terminal state, no courier is left bound to a finished order, no answer was a 5xx other than
503 with ``Retry-After``, and ``tradeflow check stock`` and ``tradeflow check money`` pass for
the round's SKUs and orders. A failure names each order and prints ``CHAOS_SEED``.

Knobs: ``CHAOS_SEED`` (reproduce a run), ``CHAOS_ROUNDS`` [1] (rounds per case, each with its
own burst and three injections), ``CHAOS_ORDERS`` [16] (orders per round), ``CHAOS_SPREAD_S``
[8], ``CHAOS_MATRIX`` = ``split`` [default: each fault on one backend, PostgreSQL faults on
PostgreSQL; under five minutes] or ``full`` (every fault on SQLite and on PostgreSQL),
``CHAOS_REPORT=<file>`` (append each round's figures as JSON lines).
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import FAULTS, RoundConfig, Verdict, env_int, run_round

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

SPLIT = {
    "sqlite": ["worker_sigkill", "temporal_sigstop", "redis_restart_flash_sale", "psp_outage"],
    "postgres": ["pg_terminate_backend", "api_sigkill"],
}


def cases() -> list[object]:
    matrix = os.environ.get("CHAOS_MATRIX", "split")
    out = []
    for backend in ("sqlite", "postgres"):
        for name, fault in FAULTS.items():
            if backend not in fault.backends:
                continue
            if matrix != "full" and name not in SPLIT[backend]:
                continue
            out.append(pytest.param(backend, name, id=f"{backend}-{name}"))
    return out


@pytest.mark.parametrize(("chaos_stack", "fault"), cases(), indirect=["chaos_stack"])
async def test_no_order_stock_money_or_courier_is_lost_under(
    chaos_stack, fault: str, seed: int, chaos_report: list[Verdict]
) -> None:
    cfg = RoundConfig.from_env()
    verdicts = []
    for round_no in range(env_int("CHAOS_ROUNDS", 1)):
        verdict = await run_round(chaos_stack, FAULTS[fault], seed=seed, round_no=round_no, cfg=cfg)
        chaos_report.append(verdict)
        verdicts.append(verdict)
        print(verdict.explain() if not verdict.ok else f"round {round_no}: {verdict.summary()}")
    failed = [v for v in verdicts if not v.ok]
    assert not failed, "\n\n".join(v.explain() for v in failed)
