"""The batch matcher: one order per courier, minimum total pickup distance, never worse than greedy."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.matcher import FreeCourier, OpenOrder, distance_matrix, match_batch, match_greedy

points = st.tuples(
    st.floats(min_value=31.1, max_value=31.3), st.floats(min_value=121.3, max_value=121.6)
)


def orders_of(pts: list[tuple[float, float]]) -> list[OpenOrder]:
    return [OpenOrder(f"o-{i}", lat, lng) for i, (lat, lng) in enumerate(pts)]


def couriers_of(pts: list[tuple[float, float]]) -> list[FreeCourier]:
    return [FreeCourier(f"k-{i}", lat, lng) for i, (lat, lng) in enumerate(pts)]


@given(o=st.lists(points, min_size=1, max_size=6), c=st.lists(points, min_size=1, max_size=6))
@settings(max_examples=150, deadline=None)
def test_batch_matching_is_optimal_one_to_one_and_no_worse_than_greedy(
    o: list[tuple[float, float]], c: list[tuple[float, float]]
) -> None:
    orders, couriers = orders_of(o), couriers_of(c)
    batch, greedy = match_batch(orders, couriers), match_greedy(orders, couriers)
    assert len(batch) == len(greedy) == min(len(orders), len(couriers))
    for m in (batch, greedy):
        assert len({x.courier_id for x in m}) == len(m)
        assert len({x.order_id for x in m}) == len(m)
    km = distance_matrix(orders, couriers)
    n = min(len(orders), len(couriers))
    if len(orders) <= len(couriers):
        best = min(
            sum(km[r, cols[r]] for r in range(n))
            for cols in itertools.permutations(range(len(couriers)), n)
        )
    else:
        best = min(
            sum(km[rows[i], i] for i in range(n))
            for rows in itertools.permutations(range(len(orders)), n)
        )
    total = sum(m.pickup_km for m in batch)
    assert abs(total - best) < 1e-6
    assert total <= sum(m.pickup_km for m in greedy) + 1e-9


def test_a_courier_beyond_the_limit_is_never_offered() -> None:
    orders = orders_of([(31.2, 121.4)])
    couriers = couriers_of([(31.9, 121.4)])  # ~78 km away
    assert match_batch(orders, couriers, max_km=50) == []
    assert match_greedy(orders, couriers, max_km=50) == []


def test_greedy_takes_the_nearest_for_the_first_order_batch_serves_both_well() -> None:
    # Order 0 sits between the two couriers, order 1 next to courier A: greedy gives A to order 0
    # and sends B far to order 1; batch gives A to order 1 and B to order 0.
    orders = orders_of([(31.200, 121.400), (31.200, 121.390)])
    couriers = couriers_of([(31.200, 121.395), (31.200, 121.406)])
    g = {m.order_id: m.courier_id for m in match_greedy(orders, couriers)}
    b = {m.order_id: m.courier_id for m in match_batch(orders, couriers)}
    assert g == {"o-0": "k-0", "o-1": "k-1"}
    assert b == {"o-0": "k-1", "o-1": "k-0"}


def test_forbidden_pairs_are_never_proposed() -> None:
    orders = [OpenOrder("o1", 31.23, 121.47), OpenOrder("o2", 31.23, 121.47)]
    couriers = [FreeCourier("near", 31.231, 121.47), FreeCourier("far", 31.24, 121.47)]
    got = match_batch(orders, couriers, forbidden={("o1", "near"), ("o2", "near")})
    assert [(m.order_id, m.courier_id) for m in got] in ([("o1", "far")], [("o2", "far")])
    only = match_batch(orders[:1], couriers[:1], forbidden={("o1", "near")})
    assert only == []
