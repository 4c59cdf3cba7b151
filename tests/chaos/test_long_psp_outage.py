"""The PSP fault of the chaos suite at its full length: 100 % errors for longer than any retry
window of the saga, then healed. Hours of outage cannot be waited out on the launched stack,
so this case runs the real workflows and activities, the real PSP simulator and SQLite on
Temporal's time-skipping server, which skips the retry backoffs and the outage itself.

The promise is that nothing is left behind once the PSP answers again: the authorization of a
failed order is voided and its stock returned, however long the PSP was down. (Both cases
failed before issue 7's defect 3 was fixed: the compensation gave up after 20 attempts and the
order was parked in NEEDS_ATTENTION with its authorization held.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from domain.messages import CancelRequest, CancelResult, OrderTimeouts
from domain.names import UPDATE_CANCEL
from tests.support import Stack, order_stack, wait_for_view

PRICE = 1299
FEE = 500
OUTAGE_S = 3 * 3600
"""Three hours: longer than the compensations' retry window (20 attempts, about 30 minutes)
and than any forward step's backoff (capped at 30 s)."""


@pytest.fixture
async def stack(ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with order_stack(ts_env.client, sqlite_url, tmp_path / "psp.db") as s:
        await s.seed_product("SKU-1", PRICE, 5)
        await s.seed_courier("k-1", 1.0)
        yield s


async def _psp_errors(stack: Stack, rate: float) -> None:
    r = await stack.psp.post("/v1/admin/faults", json={"error_rate": rate})
    assert r.status_code == 200, r.text


async def test_authorization_of_a_cancelled_order_is_voided_after_a_psp_outage_of_hours(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    inp = stack.checkout(
        [("SKU-1", 2, PRICE)],
        timeouts=OrderTimeouts(payment_timeout_s=60, offer_timeout_s=3600, max_offers=1),
    )
    h = await stack.start(inp)
    await wait_for_view(h, lambda v: v.delivery.offered_to == "k-1")
    await _psp_errors(stack, 1.0)
    await h.execute_update(UPDATE_CANCEL, CancelRequest("chaos"), result_type=CancelResult)
    await ts_env.sleep(OUTAGE_S)
    await _psp_errors(stack, 0.0)

    final = await h.result()
    total = 2 * PRICE + FEE
    assert (final.status, final.payment.status) == ("CANCELLED", "VOIDED")
    assert await stack.ledger(inp.order_id) == [("authorize", total), ("void", total)]
    assert await stack.stock("SKU-1") == (5, 0, 0)
    assert await stack.courier("k-1") == (None, None)


async def test_order_placed_during_a_psp_outage_of_hours_fails_cleanly_once_healed(
    stack: Stack, ts_env: WorkflowEnvironment
) -> None:
    await _psp_errors(stack, 1.0)
    inp = stack.checkout(
        [("SKU-1", 1, PRICE)],
        timeouts=OrderTimeouts(payment_timeout_s=60, offer_timeout_s=3600, max_offers=1),
    )
    h = await stack.start(inp)
    await ts_env.sleep(OUTAGE_S)  # authorize fails all along; the payment times out meanwhile
    await _psp_errors(stack, 0.0)

    final = await h.result()
    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_TIMEOUT")
    assert await stack.stock("SKU-1") == (5, 0, 0)
    ledger = await stack.ledger(inp.order_id)
    assert ledger in ([], [("authorize", PRICE + FEE), ("void", PRICE + FEE)])
