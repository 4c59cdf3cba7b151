"""Dev tooling the tests share, and ``tradeflow history record`` runs in a source checkout;
the wheel does not ship it (``tests`` is not one of its packages).

- ``tests.support.stack``: ``order_stack`` / ``Stack``, real workers on fresh task queues, a
  real database and the PSP simulator in-process; ``view_of`` and ``wait_for_view``.
- ``tests.support.shop``: the real API in-process over a ``Stack`` (``stack_api``) and the HTTP
  calls a customer, a courier and support make (``Shop``).
- ``tests.support.scenarios``: every path of the saga, driven to its end on a ``Stack``.
- ``tests.support.record``: ``tradeflow history record``, the scenarios' histories for the
  replay tests.
"""

from tests.support.stack import MAIN, Stack, order_stack, view_of, wait_for_view

__all__ = ["MAIN", "Stack", "order_stack", "view_of", "wait_for_view"]
