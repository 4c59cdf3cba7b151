"""The RabbitMQ relay's publish waves keep each order's events in outbox order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from infra.events import waves_by_order
from store.outbox import PendingEvent


def _events(order_ids: list[int]) -> list[PendingEvent]:
    seqs: dict[str, int] = {}
    out = []
    for i, o in enumerate(order_ids):
        oid = f"o{o}"
        seq = seqs.get(oid, 0)
        seqs[oid] = seq + 1
        out.append(PendingEvent(i, f"{oid}:{seq}", oid, seq, "PAID", {}))
    return out


@given(st.lists(st.integers(0, 6), max_size=60))
def test_waves_hold_each_order_once_and_in_order(order_ids: list[int]) -> None:
    events = _events(order_ids)
    waves = waves_by_order(events)
    assert sorted(e.id for w in waves for e in w) == [e.id for e in events]
    for wave in waves:
        assert len({e.order_id for e in wave}) == len(wave)  # an order at most once a wave
    position = {e.id: k for k, w in enumerate(waves) for e in w}
    for a in events:
        for b in events:
            if a.order_id == b.order_id and a.seq < b.seq:
                assert position[a.id] < position[b.id]


def test_distinct_orders_go_in_one_wave() -> None:
    assert len(waves_by_order(_events([1, 2, 3, 4]))) == 1
    assert [len(w) for w in waves_by_order(_events([1, 1, 2, 1]))] == [2, 1, 1]
