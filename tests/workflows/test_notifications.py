"""Max-effort merchant notifications on the time-skipping server, against the simulator's
merchant endpoint (signature checked, duplicates counted)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from sqlalchemy import text
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.notify import NotifyActivities
from domain.messages import NOTIFY_BACKOFF_S, MerchantEvent, NotificationOutcome
from psp.app import create_app
from store.db import make_engine, make_sessionmaker
from workflows.notify import NotifyMerchantWorkflow

SECRET = "merchant-secret"


async def _run(
    env: WorkflowEnvironment,
    db_url: str,
    tmp_path: Path,
    *,
    fail_next: int,
    url: str | None = "http://psp/v1/merchant/webhook",
):  # type: ignore[no-untyped-def]
    app = create_app(
        tmp_path / "psp.db", webhook_url=None, webhook_secret="x", merchant_secret=SECRET
    )
    engine = make_engine(db_url)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://psp"
    ) as http:
        await http.post("/v1/merchant/fail_next", json={"count": fail_next})
        acts = NotifyActivities(
            http=http, sessionmaker=make_sessionmaker(engine), url=url, secret=SECRET
        )
        queue = f"notify-{uuid.uuid4().hex[:8]}"
        ev = MerchantEvent(
            event_id=f"o_{uuid.uuid4().hex[:8]}.paid",
            type="order.paid",
            order_id="o_1",
            amount_cents=3098,
            currency="USD",
            occurred_at="2026-11-26T00:00:00.000000Z",
        )
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[NotifyMerchantWorkflow],
            activities=[acts.notify_merchant, acts.record_notification],
        ):
            outcome: NotificationOutcome = await env.client.execute_workflow(
                NotifyMerchantWorkflow.run, ev, id=f"notify-{ev.event_id}", task_queue=queue
            )
            history = await env.client.get_workflow_handle(f"notify-{ev.event_id}").fetch_history()
            first, last = history.events[0].event_time, history.events[-1].event_time
            elapsed = last.ToSeconds() - first.ToSeconds()
        inbox = (await http.get("/v1/merchant/notifications")).json()
        async with engine.connect() as c:
            row = (
                await c.execute(
                    text("SELECT status, attempts FROM notifications WHERE event_id = :e"),
                    {"e": ev.event_id},
                )
            ).one()
    await engine.dispose()
    return outcome, elapsed, inbox, tuple(row)


async def test_merchant_that_fails_three_times_is_notified_on_the_fourth_try(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    outcome, elapsed, inbox, row = await _run(ts_env, sqlite_url, tmp_path, fail_next=3)
    assert (outcome.status, outcome.attempts) == ("DELIVERED", 4)
    assert row == ("DELIVERED", 4)
    assert inbox["deliveries"] == 4 and len(inbox["items"]) == 1  # signed, accepted once
    assert elapsed >= sum(NOTIFY_BACKOFF_S[:3])  # 15 s + 15 s + 30 s of backoff


async def test_notification_gives_up_after_the_schedule_and_records_it(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    outcome, elapsed, inbox, row = await _run(ts_env, sqlite_url, tmp_path, fail_next=1000)
    tries = len(NOTIFY_BACKOFF_S) + 1
    assert (outcome.status, outcome.attempts) == ("GAVE_UP", tries)
    assert outcome.last_error and "503" in outcome.last_error
    assert row == ("GAVE_UP", tries)
    assert inbox["deliveries"] == tries and inbox["items"] == []
    assert 24 * 3600 < elapsed < 26 * 3600  # about 25 hours, like Alipay's schedule


async def test_no_merchant_url_means_nothing_is_sent(
    ts_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    outcome, _, inbox, row = await _run(ts_env, sqlite_url, tmp_path, fail_next=0, url=None)
    assert (outcome.status, row) == ("SKIPPED", ("SKIPPED", 1))
    assert inbox["deliveries"] == 0


async def test_a_bad_signature_is_refused_by_the_merchant(tmp_path: Path) -> None:
    app = create_app(
        tmp_path / "psp.db", webhook_url=None, webhook_secret="x", merchant_secret=SECRET
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://psp"
    ) as http:
        r = await http.post(
            "/v1/merchant/webhook",
            json={"event_id": "e1"},
            headers={"X-Tradeflow-Signature": "t=1,v1=00"},
        )
        assert r.status_code == 400
