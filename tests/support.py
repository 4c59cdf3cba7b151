"""Helpers for tests that run the real order saga; they live in ``cli.scenarios`` (dev tooling
that ``tradeflow history record`` uses too) and are re-exported here for the tests."""

from cli.scenarios import MAIN, Stack, order_stack, view_of, wait_for_view

__all__ = ["MAIN", "Stack", "order_stack", "view_of", "wait_for_view"]
