"""Consistent hashing with bounded loads: maps keys (delivery zones) to nodes (dispatch shards).

Each node sits on the ring at ``vnodes`` points. A key goes to the first node clockwise from its
own point, unless that node already holds its capacity ``ceil((1 + epsilon) * keys / nodes)``;
then it overflows to the next distinct node on the ring (Mirrokni, Thorup and Zadimoghaddam,
"Consistent Hashing with Bounded Loads", 2018; HAProxy's ``hash-balance-factor``).

Every process must compute the same map from the same members and keys, so positions come from
BLAKE2b, never from ``hash()`` (salted per process by PYTHONHASHSEED), and keys are placed in a
fixed order (by their ring point, then by name) so the overflow decisions are the same too.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping

DEFAULT_VNODES = 160
DEFAULT_EPSILON = 0.25


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same on every process, machine and Python version."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def capacity(keys: int, nodes: int, epsilon: float) -> int:
    """Most keys one node may hold: ``ceil((1 + epsilon) * keys / nodes)``."""
    if nodes <= 0:
        raise ValueError("a ring needs at least one node")
    return math.ceil((1 + epsilon) * keys / nodes)


class HashRing:
    """An immutable ring of ``nodes``; build a new one when membership changes."""

    def __init__(
        self,
        nodes: Iterable[str],
        *,
        vnodes: int = DEFAULT_VNODES,
        epsilon: float = DEFAULT_EPSILON,
    ) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        if epsilon <= 0:
            raise ValueError("epsilon must be positive (the bound is (1 + epsilon) x average)")
        self.nodes: tuple[str, ...] = tuple(sorted(set(nodes)))
        if not self.nodes:
            raise ValueError("a ring needs at least one node")
        self.vnodes = vnodes
        self.epsilon = epsilon
        points = sorted(
            (stable_hash(f"{node}#{i}"), node) for node in self.nodes for i in range(vnodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def _walk(self, key: str) -> Iterable[str]:
        """Distinct nodes clockwise from the key's point: its preference list."""
        start = bisect.bisect(self._points, stable_hash(key))
        seen: set[str] = set()
        n = len(self._points)
        for i in range(n):
            node = self._owners[(start + i) % n]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self.nodes):
                    return

    def node_for(self, key: str) -> str:
        """Plain consistent hashing (no load bound): the first node clockwise."""
        return next(iter(self._walk(key)))

    def assign(self, keys: Iterable[str]) -> dict[str, str]:
        """Every key to a node, no node above ``capacity(len(keys), len(nodes), epsilon)``."""
        unique = sorted(set(keys), key=lambda k: (stable_hash(k), k))
        cap = capacity(len(unique), len(self.nodes), self.epsilon)
        load: dict[str, int] = dict.fromkeys(self.nodes, 0)
        placed: dict[str, str] = {}
        for key in unique:
            for node in self._walk(key):
                if load[node] < cap:
                    load[node] += 1
                    placed[key] = node
                    break
        return placed


def loads(assignment: Mapping[str, str], nodes: Iterable[str]) -> dict[str, int]:
    """How many keys each node holds (nodes with none included)."""
    out = dict.fromkeys(nodes, 0)
    for node in assignment.values():
        out[node] = out.get(node, 0) + 1
    return out
